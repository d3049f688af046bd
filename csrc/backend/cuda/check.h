// Argument validation shared by the CUDA ops: the same messages as cpu/check.h, for device
// tensors. Internal to the backend.
#pragma once

#include "nuri/core/tensor.h"

namespace nuri::cuda {

/// t is defined, on a CUDA device, contiguous, with dtype `dt`.
inline void check_dev(const char* op, const char* name, const Tensor& t, DType dt,
                      bool contiguous = true) {
  NURI_CHECK(t.defined(), op, ": ", name, " is required but was not given");
  NURI_CHECK(!t.device().is_cpu(), op, ": ", name, " is on ", t.device().str(),
             "; the CUDA backend needs CUDA tensors (copy it with Backend::copy first)");
  NURI_CHECK(t.dtype() == dt, op, ": ", name, " has dtype ", dtype_name(t.dtype()), ", expected ",
             dtype_name(dt));
  NURI_CHECK(!contiguous || t.is_contiguous(), op, ": ", name, " must be contiguous (shape ",
             shape_str(t.shape()), ", strides ", shape_str(t.strides()), ")");
}

/// The activation dtype of a call: f32 or bf16 (the dtypes the kernels are instantiated for).
inline DType activation_dtype(const char* op, const char* name, const Tensor& t) {
  NURI_CHECK(t.defined(), op, ": ", name, " is required but was not given");
  NURI_CHECK(t.dtype() == DType::bf16 || t.dtype() == DType::f32, op, ": ", name, " has dtype ",
             dtype_name(t.dtype()), "; the CUDA backend computes on bf16 or f32 activations");
  return t.dtype();
}

inline void check_shape(const char* op, const char* name, const Tensor& t, const Shape& shape) {
  NURI_CHECK(t.shape() == shape, op, ": ", name, " has shape ", shape_str(t.shape()),
             ", expected ", shape_str(shape));
}

/// Rows of a row-major activation: the product of all dims but the last.
/// (A product, not numel / last dim: a last dim of 0 leaves the rows countable.)
inline int64_t rows(const Tensor& t) {
  int64_t r = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) r *= t.size(d);
  return r;
}

/// Contiguous device tensor of dtype dt with last dim `cols` and `m` rows in total.
inline void check_matrix(const char* op, const char* name, const Tensor& t, DType dt, int64_t m,
                         int64_t cols) {
  check_dev(op, name, t, dt);
  NURI_CHECK(t.dim() >= 1 && t.size(-1) == cols && rows(t) == m, op, ": ", name, " has shape ",
             shape_str(t.shape()), ", expected ", m, " rows of ", cols, " columns");
}

}  // namespace nuri::cuda
