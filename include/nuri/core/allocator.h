// Allocator interface and the CPU allocator. Every byte a tensor owns comes from an Allocator,
// which counts current and peak bytes: the numbers nuri reports as its memory use.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

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

/// What a tensor's memory is for: each allocation is counted under the category of the
/// MemoryScope around it (buffers when there is none), so a memory report and the error of a
/// full device say where the bytes went.
enum class MemoryCategory : uint8_t { parameters, gradients, optimizer, activations, buffers };
constexpr int kMemoryCategories = 5;
const char* memory_category_name(MemoryCategory c);

/// Sets the category of the allocations this thread makes while it lives (nestable).
class MemoryScope {
 public:
  explicit MemoryScope(MemoryCategory c);
  ~MemoryScope();
  MemoryScope(const MemoryScope&) = delete;
  MemoryScope& operator=(const MemoryScope&) = delete;

 private:
  MemoryCategory previous_;
};
MemoryCategory current_memory_category();

class Allocator {
 public:
  virtual ~Allocator() = default;

  /// A tensor's allocation (what Storage calls): counted under `category`, and refused with a
  /// nuri::Error that lists the bytes in use by category and says what to change when it would
  /// take the bytes of live tensors beyond limit(). Then allocate().
  void* allocate_tensor(size_t bytes, MemoryCategory category);
  void deallocate_tensor(void* ptr, size_t bytes, MemoryCategory category);
  /// Bytes of live tensors in `category` (what they asked for, before any rounding).
  int64_t category_bytes(MemoryCategory c) const;
  /// "parameters 1.5 MiB, gradients 1.5 MiB, optimizer 3.0 MiB, activations 0.2 MiB, buffers 0 B"
  std::string usage_report() const;
  /// The most bytes of live tensors this allocator hands out (0: no limit).
  void set_limit(int64_t bytes) { limit_.store(bytes); }
  int64_t limit() const { return limit_.load(); }

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

 private:
  std::atomic<int64_t> by_category_[kMemoryCategories] = {};
  std::atomic<int64_t> limit_{0};
};

/// Bytes from "123", "64K", "512M", "4G" (powers of 1024); throws naming `what` otherwise.
int64_t parse_bytes(const std::string& text, const std::string& what);

/// The CUDA backend's caching allocator's size class of a request of `bytes` (> 0): requests
/// below 1 MiB rounded up to a multiple of 512 bytes, larger ones to a multiple of 2 MiB. Its
/// stats count these blocks; here (below the backend) so a memory plan can count them too.
int64_t device_block_bytes(int64_t bytes);

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

/// Hands out another allocator's memory (its limit and categories apply) and counts its own
/// current and peak bytes: the part of a backend's memory one component uses (ZeRO's gradient
/// shard and buckets), measurable apart.
class CountingAllocator final : public Allocator {
 public:
  explicit CountingAllocator(std::shared_ptr<Allocator> parent);
  void* allocate(size_t bytes) override;
  void deallocate(void* ptr, size_t bytes) override;
  Device device() const override { return parent_->device(); }
  size_t alignment() const override { return parent_->alignment(); }
  AllocatorStats stats() const override;
  void reset_peak() override;

 private:
  std::shared_ptr<Allocator> parent_;
  std::mutex mu_;
  std::unordered_map<void*, MemoryCategory> category_;  // live allocations
  int64_t current_ = 0, peak_ = 0, num_allocs_ = 0;
};

/// The process-wide CPU allocator used when no other is given. It is the one exception to
/// "no singletons": host memory is one pool per process, as malloc's is. Backends own their
/// allocators, so a model's memory is counted apart from anything else in the process.
std::shared_ptr<Allocator> default_cpu_allocator();

}  // namespace nuri
