// Argument validation shared by the CPU ops. Every failure names the op and the values, e.g.
// "layernorm: weight has shape (768,), expected (770,)". Internal to the backends.
#pragma once

#include <string>

#include "nuri/core/tensor.h"

namespace nuri::cpu {

/// Loops over fewer elements than this run on one thread: forking costs microseconds, and on a
/// loaded machine (a shared node, parallel tests) every barrier waits for a thread that may not
/// be scheduled, which made tiny models 70x slower in a measurement here.
constexpr int64_t kParallelWork = int64_t(1) << 15;

/// t is defined, on the CPU, of dtype `dt`, and contiguous.
inline void check_cpu(const char* op, const char* name, const Tensor& t, DType dt = DType::f32,
                      bool contiguous = true) {
  NURI_CHECK(t.defined(), op, ": ", name, " is required but was not given");
  NURI_CHECK(t.device().is_cpu(), op, ": ", name, " is on ", t.device().str(),
             "; the cpu backend needs CPU tensors");
  NURI_CHECK(t.dtype() == dt, op, ": ", name, " has dtype ", dtype_name(t.dtype()), ", expected ",
             dtype_name(dt));
  NURI_CHECK(!contiguous || t.is_contiguous(), op, ": ", name, " must be contiguous (shape ",
             shape_str(t.shape()), ", strides ", shape_str(t.strides()), ")");
}

/// t has exactly `shape`.
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

/// t is contiguous f32 on the CPU with last dim `cols` and `m` rows in total.
inline void check_matrix(const char* op, const char* name, const Tensor& t, int64_t m,
                         int64_t cols) {
  check_cpu(op, name, t);
  NURI_CHECK(t.dim() >= 1 && t.size(-1) == cols && rows(t) == m, op, ": ", name, " has shape ",
             shape_str(t.shape()), ", expected ", m, " rows of ", cols, " columns");
}

/// At least one element (ops that would divide by a count or index an empty range).
inline void check_nonempty(const char* op, const char* name, const Tensor& t) {
  NURI_CHECK(t.numel() > 0, op, ": ", name, " is empty (shape ", shape_str(t.shape()), ")");
}

}  // namespace nuri::cpu
