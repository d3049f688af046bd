// LayerNorm and RMSNorm fused with the residual add on the CUDA backend: argument validation
// (the CPU backend's checks and messages, with the dtypes of cuda_backend.h: activations and
// weight/bias in the call's activation dtype, mean/rstd and dweight/dbias f32) and dispatch to
// kernels/norm.cu. The backward's parameter-gradient partial sums live in the backend workspace.
#include "norm.h"

#include "backend/cuda/check.h"
#include "backend/cuda/cuda_backend.h"

namespace nuri {

using cuda::check_dev;
using cuda::check_matrix;

namespace {

// x [M, C] (folded) in the call's activation dtype, weight [C] in the same dtype.
struct NormShape {
  DType dt;
  int64_t m, c;
};
NormShape check_norm_input(const char* op, const char* name, const Tensor& x,
                           const Tensor& weight) {
  const DType dt = cuda::activation_dtype(op, name, x);
  check_dev(op, name, x, dt);
  NURI_CHECK(x.dim() >= 1 && x.numel() > 0, op, ": ", name,
             " must be a non-empty [M, C] tensor, got shape ", shape_str(x.shape()));
  const int64_t c = x.size(-1);
  check_dev(op, "weight", weight, dt);
  cuda::check_shape(op, "weight", weight, {c});
  return {dt, cuda::rows(x), c};
}

void check_rows(const char* op, const char* name, const Tensor& t, int64_t m) {
  check_dev(op, name, t, DType::f32);
  cuda::check_shape(op, name, t, {m});
}

template <class T>
T* ptr(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.raw()) : nullptr;
}

template <class T>
void forward(cudaStream_t stream, bool center, const Tensor& x, const Tensor& residual,
             const Tensor& weight, const Tensor& bias, float eps, const Tensor& sum,
             const Tensor& y, const Tensor& mean, const Tensor& rstd, const NormShape& sh) {
  kernels::NormForwardParams<T> p{};
  p.gX = ptr<const T>(x);
  p.gResidual = ptr<const T>(residual);
  p.gWeight = ptr<const T>(weight);
  p.gBias = ptr<const T>(bias);
  p.gSum = residual.defined() ? ptr<T>(sum) : nullptr;
  p.gY = ptr<T>(y);
  p.gMean = ptr<float>(mean);
  p.gRstd = ptr<float>(rstd);
  p.eps = eps;
  p.m = sh.m;
  p.c = sh.c;
  kernels::norm_forward<T>(p, center, stream);
}

template <class T>
void backward(CudaBackend& be, bool center, const Tensor& dy, const Tensor& s, const Tensor& weight,
              const Tensor& mean, const Tensor& rstd, const Tensor& dsum, const Tensor& ds,
              const Tensor& dweight, const Tensor& dbias, bool accumulate, const NormShape& sh) {
  kernels::NormBackwardParams<T> p{};
  p.gDy = ptr<const T>(dy);
  p.gS = ptr<const T>(s);
  p.gWeight = ptr<const T>(weight);
  p.gMean = ptr<const float>(mean);
  p.gRstd = ptr<const float>(rstd);
  p.gDsum = ptr<const T>(dsum);
  p.gDs = ptr<T>(ds);
  p.gDweight = ptr<float>(dweight);
  p.gDbias = ptr<float>(dbias);
  p.accumulate = accumulate;
  p.m = sh.m;
  p.c = sh.c;
  const kernels::NormBackwardPlan plan = kernels::plan_norm_backward(sh.m, sh.c, dbias.defined());
  void* ws = be.workspace(plan.workspace_bytes);
  kernels::norm_backward<T>(p, center, plan, ws, be.stream());
}

}  // namespace

void CudaBackend::layernorm(const Tensor& x, const Tensor& residual, const Tensor& weight,
                            const Tensor& bias, float eps, const Tensor& sum, const Tensor& y,
                            const Tensor& mean, const Tensor& rstd) {
  constexpr const char* op = "layernorm";
  const NormShape sh = check_norm_input(op, "x", x, weight);
  NURI_CHECK(eps > 0.f, op, ": eps must be positive, got ", eps);
  if (bias.defined()) {
    check_dev(op, "bias", bias, sh.dt);
    cuda::check_shape(op, "bias", bias, {sh.c});
  }
  if (residual.defined()) {
    check_matrix(op, "residual", residual, sh.dt, sh.m, sh.c);
    check_matrix(op, "sum", sum, sh.dt, sh.m, sh.c);
  }
  check_matrix(op, "y", y, sh.dt, sh.m, sh.c);
  check_rows(op, "mean", mean, sh.m);
  check_rows(op, "rstd", rstd, sh.m);
  if (sh.dt == DType::bf16) {
    forward<__nv_bfloat16>(stream(), true, x, residual, weight, bias, eps, sum, y, mean, rstd, sh);
  } else {
    forward<float>(stream(), true, x, residual, weight, bias, eps, sum, y, mean, rstd, sh);
  }
}

void CudaBackend::layernorm_backward(const Tensor& dy, const Tensor& s, const Tensor& weight,
                                     const Tensor& mean, const Tensor& rstd, const Tensor& dsum,
                                     const Tensor& ds, const Tensor& dweight, const Tensor& dbias,
                                     bool accumulate) {
  constexpr const char* op = "layernorm_backward";
  const NormShape sh = check_norm_input(op, "s", s, weight);
  check_matrix(op, "dy", dy, sh.dt, sh.m, sh.c);
  check_matrix(op, "ds", ds, sh.dt, sh.m, sh.c);
  if (dsum.defined()) check_matrix(op, "dsum", dsum, sh.dt, sh.m, sh.c);
  check_rows(op, "mean", mean, sh.m);
  check_rows(op, "rstd", rstd, sh.m);
  check_dev(op, "dweight", dweight, DType::f32);
  cuda::check_shape(op, "dweight", dweight, {sh.c});
  if (dbias.defined()) {
    check_dev(op, "dbias", dbias, DType::f32);
    cuda::check_shape(op, "dbias", dbias, {sh.c});
  }
  if (sh.dt == DType::bf16) {
    backward<__nv_bfloat16>(*this, true, dy, s, weight, mean, rstd, dsum, ds, dweight, dbias,
                            accumulate, sh);
  } else {
    backward<float>(*this, true, dy, s, weight, mean, rstd, dsum, ds, dweight, dbias, accumulate,
                    sh);
  }
}

void CudaBackend::rmsnorm(const Tensor& x, const Tensor& residual, const Tensor& weight, float eps,
                          const Tensor& sum, const Tensor& y, const Tensor& rstd) {
  constexpr const char* op = "rmsnorm";
  const NormShape sh = check_norm_input(op, "x", x, weight);
  NURI_CHECK(eps > 0.f, op, ": eps must be positive, got ", eps);
  if (residual.defined()) {
    check_matrix(op, "residual", residual, sh.dt, sh.m, sh.c);
    check_matrix(op, "sum", sum, sh.dt, sh.m, sh.c);
  }
  check_matrix(op, "y", y, sh.dt, sh.m, sh.c);
  check_rows(op, "rstd", rstd, sh.m);
  if (sh.dt == DType::bf16) {
    forward<__nv_bfloat16>(stream(), false, x, residual, weight, Tensor(), eps, sum, y, Tensor(),
                           rstd, sh);
  } else {
    forward<float>(stream(), false, x, residual, weight, Tensor(), eps, sum, y, Tensor(), rstd, sh);
  }
}

void CudaBackend::rmsnorm_backward(const Tensor& dy, const Tensor& s, const Tensor& weight,
                                   const Tensor& rstd, const Tensor& dsum, const Tensor& ds,
                                   const Tensor& dweight, bool accumulate) {
  constexpr const char* op = "rmsnorm_backward";
  const NormShape sh = check_norm_input(op, "s", s, weight);
  check_matrix(op, "dy", dy, sh.dt, sh.m, sh.c);
  check_matrix(op, "ds", ds, sh.dt, sh.m, sh.c);
  if (dsum.defined()) check_matrix(op, "dsum", dsum, sh.dt, sh.m, sh.c);
  check_rows(op, "rstd", rstd, sh.m);
  check_dev(op, "dweight", dweight, DType::f32);
  cuda::check_shape(op, "dweight", dweight, {sh.c});
  if (sh.dt == DType::bf16) {
    backward<__nv_bfloat16>(*this, false, dy, s, weight, Tensor(), rstd, dsum, ds, dweight,
                            Tensor(), accumulate, sh);
  } else {
    backward<float>(*this, false, dy, s, weight, Tensor(), rstd, dsum, ds, dweight, Tensor(),
                    accumulate, sh);
  }
}

}  // namespace nuri
