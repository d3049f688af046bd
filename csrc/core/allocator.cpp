// The 64-byte-aligned CPU allocator with current/peak accounting.
#include "nuri/core/allocator.h"

#include <algorithm>
#include <cstdio>
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

// ---- categories and the limit ---------------------------------------------------------------

namespace {
thread_local MemoryCategory t_category = MemoryCategory::buffers;

std::string mib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", double(bytes) / 1048576.0);
  return buf;
}
}  // namespace

const char* memory_category_name(MemoryCategory c) {
  switch (c) {
    case MemoryCategory::parameters: return "parameters";
    case MemoryCategory::gradients: return "gradients";
    case MemoryCategory::optimizer: return "optimizer";
    case MemoryCategory::activations: return "activations";
    case MemoryCategory::buffers: return "buffers";
  }
  return "?";
}

MemoryScope::MemoryScope(MemoryCategory c) : previous_(t_category) { t_category = c; }
MemoryScope::~MemoryScope() { t_category = previous_; }
int64_t device_block_bytes(int64_t bytes) {
  const int64_t unit = bytes < (int64_t(1) << 20) ? 512 : int64_t(2) << 20;
  return (bytes + unit - 1) / unit * unit;
}

MemoryCategory current_memory_category() { return t_category; }

int64_t Allocator::category_bytes(MemoryCategory c) const {
  return by_category_[int(c)].load();
}

std::string Allocator::usage_report() const {
  std::string out;
  for (int c = 0; c < kMemoryCategories; ++c) {
    out += (c ? ", " : "") + std::string(memory_category_name(MemoryCategory(c))) + " " +
           mib(by_category_[c].load());
  }
  return out;
}

void* Allocator::allocate_tensor(size_t bytes, MemoryCategory category) {
  const int64_t limit = limit_.load();
  if (limit > 0) {
    int64_t in_use = 0;
    for (const auto& b : by_category_) in_use += b.load();
    NURI_CHECK(in_use + int64_t(bytes) <= limit, device().str(), ": allocating ", mib(int64_t(bytes)),
               " of ", memory_category_name(category), " would pass the memory limit of ",
               mib(limit), " (NURI_MAX_DEVICE_BYTES); in use: ", usage_report(), ". Use less: "
               "ZeRO stage 3 (parallel.zero_stage=3) shards the weights, gradients and optimizer "
               "state over the ranks, activation recomputation (train.recompute=full) keeps one "
               "tensor per block, and a smaller micro-batch (train.micro_batch) fewer activations");
  }
  void* p = allocate(bytes);
  by_category_[int(category)].fetch_add(int64_t(bytes));
  return p;
}

void Allocator::deallocate_tensor(void* ptr, size_t bytes, MemoryCategory category) {
  deallocate(ptr, bytes);
  by_category_[int(category)].fetch_sub(int64_t(bytes));
}

int64_t parse_bytes(const std::string& text, const std::string& what) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  double scale = 1;
  const std::string unit = end ? std::string(end) : "";
  if (unit == "K" || unit == "k") scale = 1024.0;
  else if (unit == "M" || unit == "m") scale = 1048576.0;
  else if (unit == "G" || unit == "g") scale = 1073741824.0;
  else if (!unit.empty()) scale = 0;
  NURI_CHECK(!text.empty() && end != text.c_str() && scale > 0 && v > 0, what, "='", text,
             "' is not a number of bytes (e.g. 4000000, 512M, 4G)");
  return int64_t(v * scale);
}

CountingAllocator::CountingAllocator(std::shared_ptr<Allocator> parent)
    : parent_(std::move(parent)) {}

void* CountingAllocator::allocate(size_t bytes) {
  const MemoryCategory c = current_memory_category();  // the Storage's, on the same thread
  void* p = parent_->allocate_tensor(bytes, c);
  std::lock_guard<std::mutex> lock(mu_);
  category_[p] = c;
  current_ += int64_t(bytes);
  peak_ = std::max(peak_, current_);
  ++num_allocs_;
  return p;
}

void CountingAllocator::deallocate(void* ptr, size_t bytes) {
  if (!ptr) return;
  MemoryCategory c;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = category_.find(ptr);
    NURI_ASSERT(it != category_.end(), "CountingAllocator: ", ptr, " is not one of its own");
    c = it->second;
    category_.erase(it);
    current_ -= int64_t(bytes);
  }
  parent_->deallocate_tensor(ptr, bytes, c);
}

AllocatorStats CountingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(const_cast<std::mutex&>(mu_));
  AllocatorStats s;
  s.current_bytes = current_;
  s.peak_bytes = peak_;
  s.num_allocs = num_allocs_;
  s.reserved_bytes = current_;
  return s;
}

void CountingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mu_);
  peak_ = current_;
  num_allocs_ = 0;
}

std::shared_ptr<Allocator> default_cpu_allocator() {
  static std::shared_ptr<Allocator> instance = std::make_shared<CpuAllocator>();
  return instance;
}

}  // namespace nuri
