// GELU and SwiGLU on the CUDA backend: argument validation (the CPU backend's checks and
// messages; every tensor of a call in one activation dtype, bf16 or f32) and dispatch to
// kernels/activation.cu.
#include "activation.h"

#include "backend/cuda/check.h"
#include "backend/cuda/cuda_backend.h"

namespace nuri {

using cuda::check_dev;

namespace {

template <class T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.raw());
}

// x [M, 2F] -> M and F, validated against y/dy [M, F] of the same dtype.
DType swiglu_dims(const char* op, const Tensor& x, const Tensor& y, int64_t& m, int64_t& f) {
  const DType dt = cuda::activation_dtype(op, "x", x);
  check_dev(op, "x", x, dt);
  NURI_CHECK(x.dim() >= 1 && x.size(-1) % 2 == 0 && x.size(-1) > 0, op,
             ": x must hold [gate | up] in an even, non-empty last dimension, got shape ",
             shape_str(x.shape()));
  f = x.size(-1) / 2;
  m = cuda::rows(x);
  cuda::check_matrix(op, "output", y, dt, m, f);
  return dt;
}

}  // namespace

void CudaBackend::gelu(const Tensor& x, const Tensor& y) {
  const DType dt = cuda::activation_dtype("gelu", "x", x);
  check_dev("gelu", "x", x, dt);
  check_dev("gelu", "y", y, dt);
  cuda::check_shape("gelu", "y", y, x.shape());
  if (x.numel() == 0) return;
  if (dt == DType::bf16) {
    kernels::gelu_forward<__nv_bfloat16>(
        {ptr<const __nv_bfloat16>(x), ptr<__nv_bfloat16>(y), x.numel()}, stream());
  } else {
    kernels::gelu_forward<float>({ptr<const float>(x), ptr<float>(y), x.numel()}, stream());
  }
}

void CudaBackend::gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx) {
  constexpr const char* op = "gelu_backward";
  const DType dt = cuda::activation_dtype(op, "x", x);
  check_dev(op, "x", x, dt);
  check_dev(op, "dy", dy, dt);
  check_dev(op, "dx", dx, dt);
  cuda::check_shape(op, "dy", dy, x.shape());
  cuda::check_shape(op, "dx", dx, x.shape());
  if (x.numel() == 0) return;
  if (dt == DType::bf16) {
    using T = __nv_bfloat16;
    kernels::gelu_backward<T>({ptr<const T>(x), ptr<const T>(dy), ptr<T>(dx), x.numel()}, stream());
  } else {
    kernels::gelu_backward<float>(
        {ptr<const float>(x), ptr<const float>(dy), ptr<float>(dx), x.numel()}, stream());
  }
}

void CudaBackend::swiglu(const Tensor& x, const Tensor& y) {
  int64_t m, f;
  const DType dt = swiglu_dims("swiglu", x, y, m, f);
  if (m == 0) return;
  if (dt == DType::bf16) {
    using T = __nv_bfloat16;
    kernels::swiglu_forward<T>({ptr<const T>(x), ptr<T>(y), m, f}, stream());
  } else {
    kernels::swiglu_forward<float>({ptr<const float>(x), ptr<float>(y), m, f}, stream());
  }
}

void CudaBackend::swiglu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx) {
  constexpr const char* op = "swiglu_backward";
  int64_t m, f;
  const DType dt = swiglu_dims(op, x, dy, m, f);
  check_dev(op, "dx", dx, dt);
  cuda::check_shape(op, "dx", dx, x.shape());
  if (m == 0) return;
  if (dt == DType::bf16) {
    using T = __nv_bfloat16;
    kernels::swiglu_backward<T>({ptr<const T>(x), ptr<const T>(dy), ptr<T>(dx), m, f}, stream());
  } else {
    kernels::swiglu_backward<float>(
        {ptr<const float>(x), ptr<const float>(dy), ptr<float>(dx), m, f}, stream());
  }
}

}  // namespace nuri
