// The 64-byte-aligned CPU allocator with current/peak accounting.
#include "nuri/core/allocator.h"

#include <cstdlib>
#include <new>

#include "nuri/core/error.h"

namespace nuri {

void* CpuAllocator::allocate(size_t bytes) {
  NURI_CHECK(bytes > 0, "CpuAllocator: cannot allocate 0 bytes");
  const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  void* p = std::aligned_alloc(kAlignment, rounded);
  NURI_CHECK(p != nullptr, "CpuAllocator: out of host memory allocating ", bytes, " bytes (",
             current_.load(), " bytes in use)");
  const int64_t now = current_.fetch_add(int64_t(bytes)) + int64_t(bytes);
  int64_t peak = peak_.load();
  while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
  }
  num_allocs_.fetch_add(1);
  return p;
}

void CpuAllocator::deallocate(void* ptr, size_t bytes) {
  if (!ptr) return;
  std::free(ptr);
  current_.fetch_sub(int64_t(bytes));
}

AllocatorStats CpuAllocator::stats() const {
  AllocatorStats s;
  s.current_bytes = current_.load();
  s.peak_bytes = peak_.load();
  s.num_allocs = num_allocs_.load();
  s.reserved_bytes = s.current_bytes;  // no cache: what is held is what is in use
  return s;
}

void CpuAllocator::reset_peak() {
  peak_.store(current_.load());
  num_allocs_.store(0);
}

std::shared_ptr<Allocator> default_cpu_allocator() {
  static std::shared_ptr<Allocator> instance = std::make_shared<CpuAllocator>();
  return instance;
}

}  // namespace nuri
