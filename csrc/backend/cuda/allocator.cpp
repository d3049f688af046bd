// The CUDA backend's caching allocator (see allocator.h for the size classes and the
// one-stream invariant that makes reuse safe).
#include "backend/cuda/allocator.h"

#include "cuda_check.h"
#include "nuri/core/error.h"

namespace nuri {

void use_device(int device) {
  int current = -1;
  if (cudaGetDevice(&current) != cudaSuccess || current != device) {
    NURI_CUDA_CHECK(cudaSetDevice(device));
  }
}

size_t CudaAllocator::round_size(size_t bytes) {
  return size_t(device_block_bytes(int64_t(bytes)));  // nuri/core/allocator.h: the rule
}

CudaAllocator::~CudaAllocator() {
  std::lock_guard<std::mutex> lock(mu_);
  // (The last tensor may go on any thread: its frees belong to this device, and a thread that
  // never used CUDA would otherwise make a context on device 0.)
  if (cudaSetDevice(device_) != cudaSuccess) cudaGetLastError();
  release_cache_locked();
}

void* CudaAllocator::allocate(size_t bytes) {
  NURI_CHECK(bytes > 0, "CudaAllocator: cannot allocate 0 bytes");
  const size_t size = round_size(bytes);
  // The tensor ends where the block ends (both are multiples of 256 bytes), against the
  // emulator's guard page; alignment stays 256.
  const size_t offset = size - (bytes + kAlignment - 1) / kAlignment * kAlignment;
  std::lock_guard<std::mutex> lock(mu_);
  use_device(device_);
  void* base = nullptr;
  auto cached = free_.find(size);
  if (cached != free_.end() && !cached->second.empty()) {
    base = cached->second.back();
    cached->second.pop_back();
#if defined(NURI_CUDA_EMULATION)
    // Poison the reused block as cudaMalloc poisons a fresh one, so a kernel reading memory it
    // never wrote still fails; on the owner's stream, in order with the work that used the block
    // and the work that will.
    NURI_CUDA_CHECK(cudaMemsetAsync(base, 0xff, size, stream_));
#endif
  } else {
    cudaError_t err = cudaMalloc(&base, size);
    if (err != cudaSuccess) {
      cudaGetLastError();  // not sticky: clear it, or the next launch check would report it
      release_cache_locked();
      err = cudaMalloc(&base, size);
    }
    if (err != cudaSuccess) {
      cudaGetLastError();
      NURI_CHECK(false, "CUDA out of memory on cuda:", device_, ": cannot allocate ", bytes,
                 " bytes (", size, " with rounding; ", cudaGetErrorString(err), "); ", current_,
                 " bytes are in use by this backend's tensors (", usage_report(), ") and ",
                 reserved_, " reserved, cache already released. Use less: ZeRO stage 3 "
                 "(parallel.zero_stage=3), activation recomputation (train.recompute=full), a "
                 "smaller micro_batch or seq_len; or free other processes' memory on this GPU");
    }
    reserved_ += int64_t(size);
    ++num_allocs_;
  }
  current_ += int64_t(size);
  if (current_ > peak_) peak_ = current_;
  void* ptr = static_cast<char*>(base) + offset;
  live_.emplace(ptr, Block{base, size});
  return ptr;
}

void CudaAllocator::deallocate(void* ptr, size_t bytes) {
  if (!ptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(ptr);
  NURI_ASSERT(it != live_.end() && it->second.size == round_size(bytes),
              "CudaAllocator::deallocate: ", ptr, " (", bytes,
              " bytes) was not handed out by this allocator");
  const Block block = it->second;
  live_.erase(it);
  current_ -= int64_t(block.size);
  free_[block.size].push_back(block.base);
}

void CudaAllocator::release_cache_locked() {
  for (auto& [size, bases] : free_) {
    for (void* base : bases) {
      cudaFree(base);  // an error here has no caller to go to (destructor, OOM path); it stays
      reserved_ -= int64_t(size);  // in cudaGetLastError for the next checked call
    }
  }
  free_.clear();
}

void CudaAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  use_device(device_);
  release_cache_locked();
}

AllocatorStats CudaAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  AllocatorStats s;
  s.current_bytes = current_;
  s.peak_bytes = peak_;
  s.num_allocs = num_allocs_;
  s.reserved_bytes = reserved_;
  return s;
}

void CudaAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mu_);
  peak_ = current_;
  num_allocs_ = 0;
}

}  // namespace nuri
