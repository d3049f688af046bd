// Allocator interface and the CPU allocator. Every byte a tensor owns comes from an Allocator,
// which counts current and peak bytes: the numbers nuri reports as its memory use.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "nuri/core/device.h"

namespace nuri {

/// What an allocator holds. A caching allocator (the CUDA backend's) keeps freed blocks for
/// reuse, so reserved_bytes can exceed current_bytes; for the CPU allocator they are equal.
struct AllocatorStats {
  /// Bytes held by live allocations: the sizes asked for on the CPU; the rounded block sizes
  /// on CUDA (csrc/backend/cuda/allocator.h says how sizes are rounded).
  int64_t current_bytes = 0;
  int64_t peak_bytes = 0;  ///< the maximum of current_bytes since construction (or reset_peak)
  /// Allocations from the system (malloc / cudaMalloc) since construction (or reset_peak); a
  /// request served from a cache does not count, so after warm-up a training step adds none.
  int64_t num_allocs = 0;
  int64_t reserved_bytes = 0;  ///< memory held from the system: in use + cached
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  /// [in] bytes > 0. Returns memory aligned to at least alignment(); never null (throws).
  virtual void* allocate(size_t bytes) = 0;
  /// [in] ptr, bytes: exactly what allocate() gave and was asked for.
  virtual void deallocate(void* ptr, size_t bytes) = 0;
  virtual Device device() const = 0;
  virtual size_t alignment() const = 0;
  virtual AllocatorStats stats() const = 0;
  /// Sets peak to current and zeroes the allocation count.
  virtual void reset_peak() = 0;
  /// Returns cached, unused memory to the system (reserved_bytes drops to current_bytes).
  /// A no-op for allocators without a cache; a virtual here so callers need no casts.
  virtual void empty_cache() {}
};

/// Host memory aligned to 64 bytes (a cache line, and enough for any SIMD width).
class CpuAllocator final : public Allocator {
 public:
  static constexpr size_t kAlignment = 64;
  void* allocate(size_t bytes) override;
  void deallocate(void* ptr, size_t bytes) override;
  Device device() const override { return Device::cpu(); }
  size_t alignment() const override { return kAlignment; }
  AllocatorStats stats() const override;
  void reset_peak() override;

 private:
  std::atomic<int64_t> current_{0};
  std::atomic<int64_t> peak_{0};
  std::atomic<int64_t> num_allocs_{0};
};

/// The process-wide CPU allocator used when no other is given. It is the one exception to
/// "no singletons": host memory is one pool per process, as malloc's is. Backends own their
/// allocators, so a model's memory is counted apart from anything else in the process.
std::shared_ptr<Allocator> default_cpu_allocator();

}  // namespace nuri
