// CpuBackend construction and the memory ops (zero, copy).
#include "backend/cpu/cpu_backend.h"

#include <cstring>

#include "backend/cpu/check.h"

namespace nuri {

CpuBackend::CpuBackend() : alloc_(std::make_shared<CpuAllocator>()) {}

void CpuBackend::zero(const Tensor& t) {
  NURI_CHECK(t.defined() && t.device().is_cpu(), "zero: needs a defined CPU tensor, got ", t.str());
  if (t.is_contiguous()) {
    std::memset(t.raw(), 0, t.nbytes());
  } else {
    t.zero_();
  }
}

void CpuBackend::copy(const Tensor& src, const Tensor& dst) { dst.copy_from(src); }

}  // namespace nuri
