// The CUDA backend's device allocator: a caching allocator, so a training step makes no
// cudaMalloc after warm-up. Internal to the backend.
//
// Sizes are rounded up to a size class: requests below 1 MiB to a multiple of 512 bytes, requests
// of 1 MiB and more to a multiple of 2 MiB (waste under 512 bytes, or under 2 MiB on blocks of at
// least 1 MiB). Each class has a free list; allocate() takes a cached block of the request's class
// before it calls cudaMalloc, and deallocate() puts the block back on the list (no cudaFree).
// Blocks are never split or merged: a step that asks for the same sizes every time is served from
// the cache from its second run on.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "nuri/core/allocator.h"

namespace nuri {

/// Makes `device` the calling thread's current CUDA device. Each host thread has its own (device
/// 0 until it sets one), so a backend called from a thread other than the one that built it
/// (a Python thread, the progress or checkpoint thread) would allocate and launch on device 0.
void use_device(int device);

/// Device memory through cudaMalloc (emulated: guarded host memory), cached for reuse.
///
/// Invariant, one stream per allocator: every device access to this allocator's memory is
/// queued on the owning backend's one stream, and copies to or from the host synchronize. A
/// block freed on the host while kernels that use it are still queued may then be handed out
/// at once: whatever the new owner queues runs after them, in stream order. Code that uses this
/// memory on another stream must synchronize with the backend's stream before the tensor dies.
///
/// A tensor's bytes end where its block ends (rounded up to 256 bytes), so the emulator's guard
/// page right after each cudaMalloc'ed block still catches writes past the end of a tensor.
/// The emulator poisons fresh cudaMalloc memory (NaN bytes); in the emulated build a reused
/// block is poisoned again when it is handed out, so reads of unwritten memory still show up.
/// On a GPU a reused block holds its previous owner's data.
///
/// Thread-safe: one mutex guards the free lists and the counters (tensors die on any thread).
/// stats(): current_bytes counts rounded block sizes; reserved_bytes = current + cached;
/// num_allocs counts cudaMalloc calls.
class CudaAllocator final : public Allocator {
 public:
  static constexpr size_t kAlignment = 256;  ///< cudaMalloc's

  /// The size class of a request of `bytes` (> 0): the block size that serves it
  /// (device_block_bytes, nuri/core/allocator.h).
  static size_t round_size(size_t bytes);

  /// `stream`: the owning backend's stream (see above), on which the emulated build poisons a
  /// reused block.
  CudaAllocator(int device, cudaStream_t stream) : device_(device), stream_(stream) {}
  /// The owner's stream is going away (tensors may outlive their backend): a reused block is
  /// poisoned on the legacy default stream from now on.
  void detach_stream() {
    std::lock_guard<std::mutex> lock(mu_);
    stream_ = nullptr;
  }
  /// cudaFree's every cached block (live tensors hold the allocator, so none is left).
  ~CudaAllocator() override;
  CudaAllocator(const CudaAllocator&) = delete;
  CudaAllocator& operator=(const CudaAllocator&) = delete;

  /// A cached block of the request's class, else cudaMalloc; when that fails, every cached
  /// block is freed and cudaMalloc tried once more; then nuri::Error with the sizes involved.
  void* allocate(size_t bytes) override;
  void deallocate(void* ptr, size_t bytes) override;
  Device device() const override { return Device::cuda(device_); }
  size_t alignment() const override { return kAlignment; }
  AllocatorStats stats() const override;
  void reset_peak() override;
  /// cudaFree's every cached block: reserved_bytes drops to current_bytes.
  void empty_cache() override;

 private:
  struct Block {
    void* base;   // what cudaMalloc returned
    size_t size;  // its size class
  };
  void release_cache_locked();  // caller holds mu_

  int device_;
  cudaStream_t stream_;
  mutable std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;  // size class → cached block bases
  std::unordered_map<void*, Block> live_;                // pointer handed out → its block
  int64_t current_ = 0, peak_ = 0, reserved_ = 0, num_allocs_ = 0;
};

}  // namespace nuri
