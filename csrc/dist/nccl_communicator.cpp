// The NCCL communicator: CUDA tensors, built with the CUDA backend (real: libnccl; emulated: the
// NCCL subset of kernels/emu/nccl.cpp, which carries the operations over the bootstrap host
// communicator). Bootstrap: rank 0's ncclUniqueId is broadcast over the host communicator (MPI
// under mpirun/srun, TCP under a torchrun-style start), then ncclCommInitRank on the device the
// backend uses.
//
// Every operation runs on the communicator's own stream, after the work already queued on the
// backend's compute stream (an event), and the call returns when it has completed: the calling
// thread polls the stream and ncclCommGetAsyncError against the timeout, and on expiry aborts the
// NCCL communicator (ncclCommAbort) and throws naming the operation. Stream-ordered
// (set_stream_ordered: tensor parallelism) all_reduce, reduce_scatter and all_gather return once
// enqueued instead, the compute stream waiting on an event recorded after them; wait_pending()
// and every waiting call poll for them as above. all_gather_v and
// reduce_scatter_v are groups of broadcasts and reduces (NCCL has no v-forms).
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "dist/comm_check.h"
#include "dist/nccl_bootstrap.h"
#include "nuri/core/error.h"
#include "nuri/dist/communicator.h"
#if NURI_CUDA_EMULATION
#include "emu/nccl_transport.h"
#endif

namespace nuri {

namespace {

#if NURI_CUDA_EMULATION
/// The emulated NCCL's transport: the bootstrap host communicator on host pointers.
class HostTransport final : public emu::NcclTransport {
 public:
  explicit HostTransport(std::shared_ptr<Communicator> host) : host_(std::move(host)) {}
  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  void all_reduce(void* buf, size_t count, bool bf16) override {
    host_->all_reduce(wrap(buf, count, bf16), ReduceOp::sum);
  }
  void all_gather(const void* in, void* out, size_t count, bool bf16) override {
    host_->all_gather(wrap(in, count, bf16), wrap(out, count * size_t(size()), bf16));
  }
  void broadcast(void* buf, size_t count, bool bf16, int root) override {
    host_->broadcast(wrap(buf, count, bf16), root);
  }
  void send(const void* buf, size_t count, bool bf16, int peer) override {
    host_->send(wrap(buf, count, bf16), peer);
  }
  void recv(void* buf, size_t count, bool bf16, int peer) override {
    host_->recv(wrap(buf, count, bf16), peer);
  }

 private:
  static Tensor wrap(const void* p, size_t count, bool bf16) {
    return Tensor::from_blob(const_cast<void*>(p), {int64_t(count)},
                             bf16 ? DType::bf16 : DType::f32, Device::cpu());
  }
  std::shared_ptr<Communicator> host_;
};
#endif

ncclDataType_t nccl_type(const Tensor& t) {
  return t.dtype() == DType::f32 ? ncclFloat32 : ncclBfloat16;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::shared_ptr<Communicator> host, cudaStream_t compute, int device)
      : host_(std::move(host)), compute_(compute), device_(device) {
    timeout_s_ = host_->timeout_s();
    rank_ = host_->rank();
    size_ = host_->size();
    cuda_check(cudaSetDevice(device_), "cudaSetDevice");
    what_ = "ncclCommInitRank";
    nccl_check(nccl_init_over(host_, &comm_), "ncclCommInitRank");
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    cuda_check(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming), "cudaEventCreate");
    cuda_check(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), "cudaEventCreate");
  }

  ~NcclCommunicator() override {
    if (comm_) {
      if (broken_) {
        ncclCommAbort(comm_);
      } else {
        ncclCommDestroy(comm_);
      }
    }
    if (ready_) cudaEventDestroy(ready_);
    if (done_) cudaEventDestroy(done_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend_name() const override { return "nccl"; }
  // NCCL: operations on independent communicators of one device must not be issued from two
  // threads at once (its thread-safety rules), so data parallelism's progress thread waits.
  bool concurrent_with_other_communicators() const override { return false; }
  Communicator* host_communicator() override { return host_.get(); }

  void all_reduce(const Tensor& t, ReduceOp op) override {
    check_device("all_reduce", "t", t);
    begin("all_reduce", t, op);
    nccl_check(ncclAllReduce(t.raw(), t.raw(), size_t(t.numel()), nccl_type(t), red(op), comm_,
                             stream_),
               "ncclAllReduce");
    finish();
  }

  void reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op) override {
    dist::check_pair("reduce_scatter", in, out, size_, 1);
    check_device("reduce_scatter", "in", in);
    check_device("reduce_scatter", "out", out);
    begin("reduce_scatter", in, op);
    nccl_check(ncclReduceScatter(in.raw(), out.raw(), size_t(out.numel()), nccl_type(in), red(op),
                                 comm_, stream_),
               "ncclReduceScatter");
    finish();
  }

  void reduce_scatter_v(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts,
                        ReduceOp op) override {
    const int64_t offset = dist::check_scatter_v(in, out, counts, rank_, size_);
    check_device("reduce_scatter_v", "in", in);
    check_device("reduce_scatter_v", "out", out);
    NURI_CHECK(in.raw() != out.raw() || offset == 0, "reduce_scatter_v: in place on rank ", rank_,
               " (whose chunk starts at element ", offset, ") would overwrite chunks other "
               "reduces still read; the NCCL communicator needs a separate out there");
    begin("reduce_scatter_v", in, op);
    const size_t es = dtype_size(in.dtype());
    nccl_check(ncclGroupStart(), "ncclGroupStart");
    int64_t at = 0;
    for (int r = 0; r < size_; ++r) {
      nccl_check(ncclReduce(static_cast<char*>(in.raw()) + size_t(at) * es, out.raw(),
                            size_t(counts[size_t(r)]), nccl_type(in), red(op), r, comm_, stream_),
                 "ncclReduce");
      at += counts[size_t(r)];
    }
    nccl_check(ncclGroupEnd(), "ncclGroupEnd");
    wait();
  }

  void all_gather(const Tensor& in, const Tensor& out) override {
    dist::check_pair("all_gather", in, out, 1, size_);
    check_device("all_gather", "in", in);
    check_device("all_gather", "out", out);
    begin("all_gather", in);
    nccl_check(ncclAllGather(in.raw(), out.raw(), size_t(in.numel()), nccl_type(in), comm_,
                             stream_),
               "ncclAllGather");
    finish();
  }

  void all_gather_v(const Tensor& in, const Tensor& out,
                    const std::vector<int64_t>& counts) override {
    dist::check_gather_v(in, out, counts, rank_, size_);
    check_device("all_gather_v", "in", in);
    check_device("all_gather_v", "out", out);
    begin("all_gather_v", out);
    const size_t es = dtype_size(out.dtype());
    nccl_check(ncclGroupStart(), "ncclGroupStart");
    int64_t at = 0;
    for (int r = 0; r < size_; ++r) {  // each rank broadcasts its chunk into place
      char* dst = static_cast<char*>(out.raw()) + size_t(at) * es;
      nccl_check(ncclBroadcast(r == rank_ ? in.raw() : dst, dst, size_t(counts[size_t(r)]),
                               nccl_type(out), r, comm_, stream_),
                 "ncclBroadcast");
      at += counts[size_t(r)];
    }
    nccl_check(ncclGroupEnd(), "ncclGroupEnd");
    wait();
  }

  void broadcast(const Tensor& t, int root) override {
    check_device("broadcast", "t", t);
    NURI_CHECK(root >= 0 && root < size_, "broadcast: root ", root, " is not a rank of this ",
               size_, "-rank communicator");
    begin("broadcast", t);
    nccl_check(ncclBroadcast(t.raw(), t.raw(), size_t(t.numel()), nccl_type(t), root, comm_,
                             stream_),
               "ncclBroadcast");
    wait();
  }

  void send(const Tensor& t, int peer) override {
    check_device("send", "t", t);
    dist::check_peer("send", peer, rank_, size_);
    begin("send", t, std::nullopt, peer);
    nccl_check(ncclSend(t.raw(), size_t(t.numel()), nccl_type(t), peer, comm_, stream_),
               "ncclSend");
    wait();
  }

  void recv(const Tensor& t, int peer) override {
    check_device("recv", "t", t);
    dist::check_peer("recv", peer, rank_, size_);
    begin("recv", t, std::nullopt, peer);
    nccl_check(ncclRecv(t.raw(), size_t(t.numel()), nccl_type(t), peer, comm_, stream_),
               "ncclRecv");
    wait();
  }

  void barrier() override {
    check_usable("barrier");
    wait_pending();
    host_->barrier();
  }

  void set_stream_ordered(bool on) override {
    if (!on) wait_pending();
    stream_ordered_ = on;
  }

  void wait_pending() override {
    if (!pending_) return;
    check_usable("wait_pending");
    what_ = "the enqueued collectives (" + what_ + " last)";
    wait();
  }

  std::unique_ptr<Communicator> split(const std::vector<int>& ranks) override {
    check_usable("split");
    std::shared_ptr<Communicator> sub = host_->split(ranks);
    return std::make_unique<NcclCommunicator>(std::move(sub), compute_, device_);
  }

 private:
  static ncclRedOp_t red(ReduceOp op) { return op == ReduceOp::sum ? ncclSum : ncclAvg; }

  void check_device(const char* op, const char* what, const Tensor& t) const {
    dist::check_tensor(op, what, t);
    NURI_CHECK(!t.device().is_cpu(), op, ": ", what, " is a host tensor; the NCCL communicator "
               "moves CUDA tensors (host_communicator() moves host ones)");
  }

  void check_usable(const char* op) const {
    NURI_CHECK(!broken_, op, " on rank ", rank_, ": this NCCL communicator failed earlier (",
               broken_what_, ") and cannot be used again; end the process");
  }

  /// Records the operation (for messages) and orders the stream after the compute stream.
  void begin(const char* op, const Tensor& t, std::optional<ReduceOp> rop = std::nullopt,
             int peer = -1) {
    check_usable(op);
    on_device();
    what_ = dist::describe(op, t, rop, peer);
    cuda_check(cudaEventRecord(ready_, compute_), "cudaEventRecord");
    cuda_check(cudaStreamWaitEvent(stream_, ready_, 0), "cudaStreamWaitEvent");
  }

  [[noreturn]] void give_up(const std::string& why) {
    broken_ = true;
    broken_what_ = what_;
    NURI_CHECK(false, what_, " on rank ", rank_, " of ", size_, " (nccl) ", why);
  }

  void nccl_check(ncclResult_t r, const char* call) {
    if (r == ncclSuccess) return;
    const char* last = comm_ ? ncclGetLastError(comm_) : ncclGetLastError(nullptr);
    give_up(std::string("failed: ") + call + ": " + ncclGetErrorString(r) +
            (last && *last ? std::string(" (") + last + ")" : std::string()));
  }

  void cuda_check(cudaError_t e, const char* call) {
    if (e == cudaSuccess) return;
    give_up(std::string("failed: ") + call + ": " + cudaGetErrorString(e));
  }

  /// After an operation is enqueued: waits for it, or, stream-ordered, makes the compute stream
  /// wait for it on the device and returns.
  void finish() {
    if (!stream_ordered_) {
      wait();
      return;
    }
    cuda_check(cudaEventRecord(done_, stream_), "cudaEventRecord");
    cuda_check(cudaStreamWaitEvent(compute_, done_, 0), "cudaStreamWaitEvent");
    pending_ = true;
  }

  /// This rank's device current on the calling thread (the data-parallel progress thread
  /// calls too): a thread's first CUDA call elsewhere would make a context on device 0, half a
  /// GiB of it on every rank's behalf, and fail where GPUs are in exclusive-process mode.
  void on_device() { cuda_check(cudaSetDevice(device_), "cudaSetDevice"); }

  /// Polls until the stream has finished the operation, NCCL reports an error, or the timeout.
  void wait() {
    on_device();
    pending_ = false;  // the stream is in order: this waits for every earlier operation too
    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    const auto deadline = t0 + std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double>(timeout_s_));
    for (;;) {
      const cudaError_t q = cudaStreamQuery(stream_);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) cuda_check(q, "cudaStreamQuery");
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess) nccl_check(async, "ncclCommGetAsyncError");
      if (Clock::now() > deadline) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        std::ostringstream t;
        t << timeout_s_;
        give_up("did not complete within " + t.str() + " s: a peer died, hung, or is in a "
                "different collective. The NCCL communicator was aborted; every rank should "
                "exit (NURI_COMM_TIMEOUT_S sets the limit)");
      }
      if (Clock::now() - t0 > std::chrono::milliseconds(20)) {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      } else {
        std::this_thread::yield();
      }
    }
  }

  std::shared_ptr<Communicator> host_;
  cudaStream_t compute_ = nullptr;
  int device_ = 0;
  int rank_ = 0, size_ = 1;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
  bool stream_ordered_ = false, pending_ = false;
  std::string what_;
  bool broken_ = false;
  std::string broken_what_;
};

}  // namespace

ncclResult_t nccl_init_over(const std::shared_ptr<Communicator>& host, ncclComm_t* comm) {
  ncclUniqueId id{};
  Tensor id_host = Tensor::empty({NCCL_UNIQUE_ID_BYTES / 2}, DType::bf16);  // moved as bytes
  ncclResult_t r = ncclSuccess;
  if (host->rank() == 0) {
    r = ncclGetUniqueId(&id);
    std::memcpy(id_host.raw(), &id, sizeof id);
  }
  // Every rank takes part in the broadcast, even when rank 0's ncclGetUniqueId failed: rank 0
  // then reports its error, and the others fail in ncclCommInitRank on a bad id or the timeout.
  host->broadcast(id_host, 0);
  if (r != ncclSuccess) return r;
  std::memcpy(&id, id_host.raw(), sizeof id);
#if NURI_CUDA_EMULATION
  emu::nccl_register_transport(id, std::make_shared<HostTransport>(host));
#endif
  return ncclCommInitRank(comm, host->size(), id, host->rank());
}

std::shared_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Communicator> host,
                                                     Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  NURI_CHECK(cuda != nullptr, "the NCCL communicator serves the CUDA backend, not ",
             backend.name());
  return std::make_shared<NcclCommunicator>(std::move(host), cuda->stream(),
                                            backend.device().index);
}

}  // namespace nuri
