// The subset of NCCL nuri's NCCL communicator calls, defined for the emulated build (which links
// this instead of libnccl; the declarations come from the real nccl.h). Device memory is host
// memory here and streams run their work at the call, so each operation runs when it is called (or
// at ncclGroupEnd inside a group), in its stream's context for the race detector (as that stream
// orders it: runtime.cpp), where it reads its send buffer and writes its receive buffer
// (device_touch; the transport itself is hidden from the detector), moving bytes through the
// NcclTransport that the caller registered under the communicator's unique id (nuri's NCCL
// communicator registers its bootstrap host communicator: MPI under mpirun, TCP under a
// torchrun-style start). Every rank runs the same sequence of operations, so a group's
// operations run one after another in their order.
//
// Supported: f32 and bf16 with sum and avg (what nuri reduces); other types and operations
// return ncclInvalidArgument with a message from ncclGetLastError.
#include <nccl.h>

#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "emu/internal.h"
#include "emu/nccl_transport.h"

struct ncclComm {
  int nranks = 0, rank = 0;
  std::shared_ptr<nuri::emu::NcclTransport> transport;
  std::string last_error;
};

namespace nuri::emu {
namespace {

struct Registry {
  std::mutex mu;
  std::map<std::string, std::shared_ptr<NcclTransport>> by_id;
};
Registry& registry() {
  static Registry* r = new Registry;
  return *r;
}

std::string key(const ncclUniqueId& id) { return std::string(id.internal, NCCL_UNIQUE_ID_BYTES); }

thread_local int group_depth = 0;
thread_local std::vector<std::function<ncclResult_t()>>* group_ops = nullptr;
thread_local std::string thread_error;

ncclResult_t fail(ncclComm_t comm, const std::string& msg) {
  thread_error = msg;
  if (comm) comm->last_error = msg;
  return ncclInvalidArgument;
}

/// Runs op now, or at ncclGroupEnd inside a group. Transport errors (timeouts, a dead peer)
/// become ncclRemoteError with the transport's message.
ncclResult_t run(ncclComm_t comm, cudaStream_t stream, std::function<void()> op) {
  // On the stream's context (internal.h: on_stream), as the stream orders it on a GPU.
  auto guarded = [comm, stream, op = std::move(op)]() -> ncclResult_t {
    try {
      on_stream(stream, op);
      return ncclSuccess;
    } catch (const std::exception& e) {
      thread_error = e.what();
      comm->last_error = e.what();
      return ncclRemoteError;
    }
  };
  if (group_depth > 0) {
    group_ops->push_back(std::move(guarded));
    return ncclSuccess;
  }
  return guarded();
}

size_t elem_size(ncclDataType_t t) { return t == ncclFloat32 ? 4 : 2; }

ncclResult_t check(ncclComm_t comm, ncclDataType_t t, const char* what) {
  if (!comm || !comm->transport) return fail(comm, std::string(what) + ": invalid communicator");
  if (t != ncclFloat32 && t != ncclBfloat16) {
    return fail(comm, std::string(what) + ": the emulated NCCL moves f32 and bf16 only");
  }
  return ncclSuccess;
}

ncclResult_t check_op(ncclComm_t comm, ncclRedOp_t op, const char* what) {
  if (op != ncclSum && op != ncclAvg) {
    return fail(comm, std::string(what) + ": the emulated NCCL reduces with sum and avg only");
  }
  return ncclSuccess;
}

void divide(void* buf, size_t count, ncclDataType_t t, int n) {
  if (t == ncclFloat32) {
    auto* p = static_cast<float*>(buf);
    for (size_t i = 0; i < count; ++i) p[i] = float(double(p[i]) / n);
  } else {
    auto* p = static_cast<uint16_t*>(buf);
    for (size_t i = 0; i < count; ++i) {
      uint32_t bits = uint32_t(p[i]) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      f = float(double(f) / n);
      std::memcpy(&bits, &f, 4);
      bits += 0x7fff + ((bits >> 16) & 1);  // round to nearest even (finite values)
      p[i] = uint16_t(bits >> 16);
    }
  }
}

}  // namespace

void nccl_register_transport(const ncclUniqueId& id, std::shared_ptr<NcclTransport> transport) {
  std::lock_guard<std::mutex> lock(registry().mu);
  registry().by_id[key(id)] = std::move(transport);
}

}  // namespace nuri::emu

using nuri::emu::check;
using nuri::emu::check_op;
using nuri::emu::elem_size;
using nuri::emu::fail;
using nuri::emu::run;

ncclResult_t ncclGetVersion(int* version) {
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::random_device rd;
  for (int i = 0; i < NCCL_UNIQUE_ID_BYTES; ++i) id->internal[i] = char(rd() & 0xff);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  std::shared_ptr<nuri::emu::NcclTransport> t;
  {
    auto& reg = nuri::emu::registry();
    std::lock_guard<std::mutex> lock(reg.mu);
    auto it = reg.by_id.find(nuri::emu::key(id));
    if (it != reg.by_id.end()) {
      t = it->second;
      reg.by_id.erase(it);
    }
  }
  if (!t) {
    return fail(nullptr, "ncclCommInitRank (emulated): no transport was registered for this "
                         "unique id (nuri::emu::nccl_register_transport)");
  }
  if (nranks != t->size() || rank != t->rank()) {
    return fail(nullptr, "ncclCommInitRank (emulated): rank " + std::to_string(rank) + " of " +
                             std::to_string(nranks) + " does not match the transport's rank " +
                             std::to_string(t->rank()) + " of " + std::to_string(t->size()));
  }
  auto* c = new ncclComm;
  c->nranks = nranks;
  c->rank = rank;
  c->transport = std::move(t);
  *comm = c;
  return ncclSuccess;
}

ncclResult_t ncclCommFinalize(ncclComm_t) { return ncclSuccess; }
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}
ncclResult_t ncclCommGetAsyncError(ncclComm_t, ncclResult_t* err) {
  *err = ncclSuccess;  // operations complete (or fail) when they are called
  return ncclSuccess;
}
ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  *count = comm->nranks;
  return ncclSuccess;
}
ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  *rank = comm->rank;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "no error";
    case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInvalidUsage: return "invalid usage";
    default: return "NCCL error (emulated)";
  }
}
const char* ncclGetLastError(ncclComm_t comm) {
  return comm ? comm->last_error.c_str() : nuri::emu::thread_error.c_str();
}

ncclResult_t ncclGroupStart() {
  if (nuri::emu::group_depth++ == 0) {
    nuri::emu::group_ops = new std::vector<std::function<ncclResult_t()>>;
  }
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (nuri::emu::group_depth == 0) return fail(nullptr, "ncclGroupEnd without ncclGroupStart");
  if (--nuri::emu::group_depth > 0) return ncclSuccess;
  std::unique_ptr<std::vector<std::function<ncclResult_t()>>> ops(nuri::emu::group_ops);
  nuri::emu::group_ops = nullptr;
  for (auto& op : *ops) {
    const ncclResult_t r = op();
    if (r != ncclSuccess) return r;
  }
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t t,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  if (auto r = check(comm, t, "ncclAllReduce"); r != ncclSuccess) return r;
  if (auto r = check_op(comm, op, "ncclAllReduce"); r != ncclSuccess) return r;
  return run(comm, stream, [=] {
    nuri::emu::device_touch(send, count * elem_size(t), false);
    nuri::emu::device_touch(recv, count * elem_size(t), true);
    if (send != recv) std::memmove(recv, send, count * elem_size(t));
    comm->transport->all_reduce(recv, count, t == ncclBfloat16);
    if (op == ncclAvg) nuri::emu::divide(recv, count, t, comm->nranks);
  });
}

ncclResult_t ncclReduce(const void* send, void* recv, size_t count, ncclDataType_t t,
                        ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t stream) {
  if (auto r = check(comm, t, "ncclReduce"); r != ncclSuccess) return r;
  if (auto r = check_op(comm, op, "ncclReduce"); r != ncclSuccess) return r;
  return run(comm, stream, [=] {
    nuri::emu::device_touch(send, count * elem_size(t), false);
    if (comm->rank == root) nuri::emu::device_touch(recv, count * elem_size(t), true);
    std::vector<char> tmp(count * elem_size(t));
    std::memcpy(tmp.data(), send, tmp.size());
    comm->transport->all_reduce(tmp.data(), count, t == ncclBfloat16);
    if (op == ncclAvg) nuri::emu::divide(tmp.data(), count, t, comm->nranks);
    if (comm->rank == root) std::memcpy(recv, tmp.data(), tmp.size());
  });
}

ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t recvcount, ncclDataType_t t,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  if (auto r = check(comm, t, "ncclReduceScatter"); r != ncclSuccess) return r;
  if (auto r = check_op(comm, op, "ncclReduceScatter"); r != ncclSuccess) return r;
  return run(comm, stream, [=] {
    const size_t es = elem_size(t);
    nuri::emu::device_touch(send, recvcount * size_t(comm->nranks) * es, false);
    nuri::emu::device_touch(recv, recvcount * es, true);
    std::vector<char> tmp(recvcount * size_t(comm->nranks) * es);
    std::memcpy(tmp.data(), send, tmp.size());
    comm->transport->all_reduce(tmp.data(), recvcount * size_t(comm->nranks), t == ncclBfloat16);
    std::memcpy(recv, tmp.data() + size_t(comm->rank) * recvcount * es, recvcount * es);
    if (op == ncclAvg) nuri::emu::divide(recv, recvcount, t, comm->nranks);
  });
}

ncclResult_t ncclAllGather(const void* send, void* recv, size_t sendcount, ncclDataType_t t,
                           ncclComm_t comm, cudaStream_t stream) {
  if (auto r = check(comm, t, "ncclAllGather"); r != ncclSuccess) return r;
  return run(comm, stream, [=] {
    nuri::emu::device_touch(send, sendcount * elem_size(t), false);
    nuri::emu::device_touch(recv, sendcount * elem_size(t) * size_t(comm->nranks), true);
    comm->transport->all_gather(send, recv, sendcount, t == ncclBfloat16);
  });
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t t, int root,
                           ncclComm_t comm, cudaStream_t stream) {
  if (auto r = check(comm, t, "ncclBroadcast"); r != ncclSuccess) return r;
  if (root < 0 || root >= comm->nranks) return fail(comm, "ncclBroadcast: root out of range");
  return run(comm, stream, [=] {
    if (comm->rank == root) nuri::emu::device_touch(send, count * elem_size(t), false);
    nuri::emu::device_touch(recv, count * elem_size(t), true);
    if (comm->rank == root && send != recv) std::memmove(recv, send, count * elem_size(t));
    comm->transport->broadcast(recv, count, t == ncclBfloat16, root);
  });
}

ncclResult_t ncclSend(const void* send, size_t count, ncclDataType_t t, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  if (auto r = check(comm, t, "ncclSend"); r != ncclSuccess) return r;
  return run(comm, stream, [=] {
    nuri::emu::device_touch(send, count * elem_size(t), false);
    comm->transport->send(send, count, t == ncclBfloat16, peer);
  });
}

ncclResult_t ncclRecv(void* recv, size_t count, ncclDataType_t t, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  if (auto r = check(comm, t, "ncclRecv"); r != ncclSuccess) return r;
  return run(comm, stream, [=] {
    nuri::emu::device_touch(recv, count * elem_size(t), true);
    comm->transport->recv(recv, count, t == ncclBfloat16, peer);
  });
}
