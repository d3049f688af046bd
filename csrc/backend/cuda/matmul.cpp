// Linear layers on the CUDA backend: argument validation (the CPU backend's checks and messages;
// activations and compute weights in one activation dtype per call, bf16 or f32; parameter
// gradients f32) and dispatch to kernels/matmul.cu (tensor cores for bf16, SIMT for f32).
#include "matmul.h"

#include "backend/cuda/check.h"
#include "backend/cuda/cuda_backend.h"

namespace nuri {

using cuda::check_dev;
using cuda::check_matrix;
using cuda::rows;

namespace {

template <class T>
T* ptr(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.raw()) : nullptr;
}

}  // namespace

void CudaBackend::matmul(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                         Activation act, const Tensor& pre) {
  constexpr const char* op = "matmul";
  const DType dt = cuda::activation_dtype(op, "x", x);
  check_dev(op, "w", w, dt);
  NURI_CHECK(w.dim() == 2, op, ": w must be [N, K], got shape ", shape_str(w.shape()));
  const int64_t n = w.size(0), k = w.size(1);
  check_dev(op, "x", x, dt);
  NURI_CHECK(x.dim() >= 1 && x.size(-1) == k, op, ": x has shape ", shape_str(x.shape()), " but w ",
             shape_str(w.shape()), " needs a last dimension of ", k);
  const int64_t m = rows(x);
  check_matrix(op, "y", y, dt, m, n);
  if (bias.defined()) {
    check_dev(op, "bias", bias, dt);
    cuda::check_shape(op, "bias", bias, {n});
  }
  const bool gelu = act == Activation::gelu;
  if (gelu) check_matrix(op, "pre (GELU pre-activation)", pre, dt, m, n);
  if (m == 0 || n == 0) return;
  if (dt == DType::bf16) {
    using T = __nv_bfloat16;
    kernels::matmul_forward<T>({ptr<const T>(x), ptr<const T>(w), ptr<const T>(bias), ptr<T>(y),
                                gelu ? ptr<T>(pre) : nullptr, m, n, k, gelu},
                               stream());
  } else {
    kernels::matmul_forward<float>(
        {ptr<const float>(x), ptr<const float>(w), ptr<const float>(bias), ptr<float>(y),
         gelu ? ptr<float>(pre) : nullptr, m, n, k, gelu},
        stream());
  }
}

void CudaBackend::matmul_backward_input(const Tensor& dy, const Tensor& w, const Tensor& dx,
                                        bool accumulate, const Tensor& gelu_pre) {
  constexpr const char* op = "matmul_backward_input";
  const DType dt = cuda::activation_dtype(op, "dy", dy);
  check_dev(op, "w", w, dt);
  NURI_CHECK(w.dim() == 2, op, ": w must be [N, K], got shape ", shape_str(w.shape()));
  const int64_t n = w.size(0), k = w.size(1);
  check_dev(op, "dy", dy, dt);
  NURI_CHECK(dy.dim() >= 1 && dy.size(-1) == n, op, ": dy has shape ", shape_str(dy.shape()),
             " but w ", shape_str(w.shape()), " needs a last dimension of ", n);
  const int64_t m = rows(dy);
  check_matrix(op, "dx", dx, dt, m, k);
  if (gelu_pre.defined()) {
    NURI_CHECK(!accumulate, op, ": the fused GELU backward cannot accumulate into dx");
    check_matrix(op, "gelu_pre", gelu_pre, dt, m, k);
  }
  if (m == 0 || k == 0) return;
  if (dt == DType::bf16) {
    using T = __nv_bfloat16;
    kernels::matmul_backward_input<T>({ptr<const T>(dy), ptr<const T>(w), ptr<const T>(gelu_pre),
                                       ptr<T>(dx), m, n, k, accumulate},
                                      stream());
  } else {
    kernels::matmul_backward_input<float>(
        {ptr<const float>(dy), ptr<const float>(w), ptr<const float>(gelu_pre), ptr<float>(dx), m,
         n, k, accumulate},
        stream());
  }
}

void CudaBackend::matmul_backward_weight(const Tensor& dy, const Tensor& x, const Tensor& dw,
                                         bool accumulate) {
  constexpr const char* op = "matmul_backward_weight";
  check_dev(op, "dw", dw, DType::f32);
  NURI_CHECK(dw.dim() == 2, op, ": dw must be [N, K], got shape ", shape_str(dw.shape()));
  const int64_t n = dw.size(0), k = dw.size(1);
  const DType dt = cuda::activation_dtype(op, "dy", dy);
  check_dev(op, "dy", dy, dt);
  check_dev(op, "x", x, dt);
  const int64_t m = rows(dy);
  check_matrix(op, "dy", dy, dt, m, n);
  check_matrix(op, "x", x, dt, m, k);
  if (n == 0 || k == 0) return;
  if (m == 0) {  // an empty sum
    if (!accumulate) zero(dw);
    return;
  }
  if (dt == DType::bf16) {
    using T = __nv_bfloat16;
    kernels::matmul_backward_weight<T>(
        {ptr<const T>(dy), ptr<const T>(x), ptr<float>(dw), m, n, k, accumulate}, stream());
  } else {
    kernels::matmul_backward_weight<float>(
        {ptr<const float>(dy), ptr<const float>(x), ptr<float>(dw), m, n, k, accumulate}, stream());
  }
}

void CudaBackend::matmul_backward_bias(const Tensor& dy, const Tensor& dbias, bool accumulate) {
  constexpr const char* op = "matmul_backward_bias";
  check_dev(op, "dbias", dbias, DType::f32);
  NURI_CHECK(dbias.dim() == 1, op, ": dbias must be [N], got shape ", shape_str(dbias.shape()));
  const int64_t n = dbias.size(0);
  const DType dt = cuda::activation_dtype(op, "dy", dy);
  const int64_t m = rows(dy);
  check_matrix(op, "dy", dy, dt, m, n);
  if (n == 0) return;
  if (m == 0) {
    if (!accumulate) zero(dbias);
    return;
  }
  auto* work =
      static_cast<float*>(workspace(size_t(kernels::matmul_bias_partials(m) * n) * sizeof(float)));
  if (dt == DType::bf16) {
    using T = __nv_bfloat16;
    kernels::matmul_backward_bias<T>({ptr<const T>(dy), ptr<float>(dbias), work, m, n, accumulate},
                                     stream());
  } else {
    kernels::matmul_backward_bias<float>(
        {ptr<const float>(dy), ptr<float>(dbias), work, m, n, accumulate}, stream());
  }
}

}  // namespace nuri
