// How the emulated NCCL (nccl.cpp) moves bytes between processes. Device memory is host memory
// in the emulated build, so a host communicator can carry NCCL's operations: whoever creates an
// NCCL communicator registers a transport under its unique id before ncclCommInitRank (nuri's
// NCCL communicator registers its bootstrap communicator, csrc/dist/nccl_communicator.cpp).
// Pointers are host pointers of `count` elements, f32 or (bf16 = true) bf16; sums add in f32 and
// round bf16 after each addition. Failures (a timeout, a dead peer) throw.
#pragma once

#include <nccl.h>

#include <cstddef>
#include <memory>

namespace nuri::emu {

class NcclTransport {
 public:
  virtual ~NcclTransport() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// buf becomes the sum over ranks, the same bits on every rank.
  virtual void all_reduce(void* buf, size_t count, bool bf16) = 0;
  /// out [size · count] = every rank's in [count], in rank order.
  virtual void all_gather(const void* in, void* out, size_t count, bool bf16) = 0;
  virtual void broadcast(void* buf, size_t count, bool bf16, int root) = 0;
  virtual void send(const void* buf, size_t count, bool bf16, int peer) = 0;
  virtual void recv(void* buf, size_t count, bool bf16, int peer) = 0;
};

/// The transport ncclCommInitRank(…, id, …) of this process will use (taken by that call).
void nccl_register_transport(const ncclUniqueId& id, std::shared_ptr<NcclTransport> transport);

}  // namespace nuri::emu
