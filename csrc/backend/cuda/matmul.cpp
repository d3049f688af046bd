// Linear layers on the CUDA backend: argument validation (the CPU backend's checks and messages;
// activations and compute weights in one dtype per call, bf16, f16 or f32; parameter gradients
// f32) and dispatch to nuri's kernels (kernels/matmul.cu: tensor cores for bf16/f16, SIMT for
// f32) or to cuBLASLt (cublaslt.cpp, real CUDA builds), by the backend's GemmPath.
#include "matmul.h"

#include "backend/cuda/check.h"
#include "backend/cuda/cuda_backend.h"
#include "nuri/core/log.h"
#if defined(NURI_CUDA_REAL)
#include "backend/cuda/cublaslt.h"
#endif

namespace nuri {

using cuda::check_dev;
using cuda::check_matrix;
using cuda::rows;

namespace {

template <class T>
T* ptr(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.raw()) : nullptr;
}

/// The activation dtype of a product: the tensor cores take bf16 and f16, the SIMT kernel f32.
DType gemm_dtype(const char* op, const char* name, const Tensor& t) {
  NURI_CHECK(t.defined(), op, ": ", name, " is required but was not given");
  NURI_CHECK(t.dtype() == DType::bf16 || t.dtype() == DType::f16 || t.dtype() == DType::f32, op,
             ": ", name, " has dtype ", dtype_name(t.dtype()),
             "; the CUDA backend's products take bf16, f16 or f32");
  return t.dtype();
}

/// Calls f with a value of the C++ type of dt (bf16, f16 or f32).
template <class F>
void with_type(DType dt, F&& f) {
  if (dt == DType::bf16) {
    f(__nv_bfloat16{});
  } else if (dt == DType::f16) {
    f(__half{});
  } else {
    f(float{});
  }
}

// One overload per product: nuri's kernel (true when the sm_90a one ran it), and cuBLASLt's
// version of the same call.
template <class T>
bool run_nuri(const kernels::MatmulParams<T>& p, cudaStream_t s) {
  return kernels::matmul_forward<T>(p, s);
}
template <class T>
bool run_nuri(const kernels::MatmulBackwardInputParams<T>& p, cudaStream_t s) {
  return kernels::matmul_backward_input<T>(p, s);
}
template <class T>
bool run_nuri(const kernels::MatmulBackwardWeightParams<T>& p, cudaStream_t s) {
  return kernels::matmul_backward_weight<T>(p, s);
}
template <class T>
bool run_nuri(const kernels::MatmulBackwardBiasParams<T>& p, cudaStream_t s) {
  kernels::matmul_backward_bias<T>(p, s);
  return false;
}

#if defined(NURI_CUDA_REAL)
template <class T>
bool run_lt(cuda::CublasLt& lt, const kernels::MatmulParams<T>& p, cudaStream_t s) {
  return lt.forward(p, s);
}
template <class T>
bool run_lt(cuda::CublasLt& lt, const kernels::MatmulBackwardInputParams<T>& p, cudaStream_t s) {
  return lt.backward_input(p, s);
}
template <class T>
bool run_lt(cuda::CublasLt& lt, const kernels::MatmulBackwardWeightParams<T>& p, cudaStream_t s) {
  return lt.backward_weight(p, s);
}
template <class T>
bool run_lt(cuda::CublasLt& lt, const kernels::MatmulBackwardBiasParams<T>& p, cudaStream_t s) {
  return lt.backward_bias(p, s);
}
#endif

}  // namespace

// ---- the path of one product ------------------------------------------------------------------

bool CudaBackend::use_cublaslt(DType dt) const {
#if defined(NURI_CUDA_REAL)
  switch (gemm_path_) {
    case GemmPath::nuri:
    case GemmPath::sm90:
      return false;
    case GemmPath::cublaslt:
      return true;
    case GemmPath::automatic:
      // cuBLASLt on every architecture. Measured on an H100 (benchmarks/bench_matmul_gpu,
      // 2026-11-23): nuri's mma.sync kernel ran GPT-2 124M's fifteen products (fwd, dgrad,
      // wgrad; 8192 tokens, bf16) at 0.10–0.20 of cuBLASLt's speed. sm_80–sm_89 are not
      // measured; mma.sync is the tensor-core instruction there for both, and nothing suggests
      // nuri's kernel would win. Calls cuBLASLt declines still run on nuri's kernel.
      (void)dt;
      return true;
  }
  return false;
#else
  (void)dt;
  return false;  // the emulated build has no cuBLASLt (set_gemm_path refuses it)
#endif
}

cuda::CublasLt& CudaBackend::cublaslt() {
#if defined(NURI_CUDA_REAL)
  if (!lt_) {
    use_device(device_);  // its handle and workspace belong to this backend's device
    lt_ = std::make_shared<cuda::CublasLt>();
  }
#endif
  NURI_ASSERT(lt_ != nullptr, "cuBLASLt requested in a build without it");
  return *lt_;
}

/// cuBLASLt when use_cublaslt says so and cuBLASLt takes the call, else nuri's kernel. A call
/// cuBLASLt declines (e.g. a GELU epilogue on rows that are not a multiple of 8 elements) runs
/// on nuri's kernel; with GemmPath::cublaslt the first such call is logged as a warning.
template <class P>
void CudaBackend::run_gemm(const char* op, DType dt, int64_t m, int64_t n, int64_t k, const P& p) {
#if defined(NURI_CUDA_REAL)
  if (use_cublaslt(dt)) {
    if (run_lt(cublaslt(), p, stream())) return;
    if (gemm_path_ == GemmPath::cublaslt && gemm_fallbacks_ == 0) {
      NURI_LOG(warn, op, ": cuBLASLt has no algorithm for ", dtype_name(dt), " M=", m, " N=", n,
               " K=", k,
               "; nuri's kernel runs it (NURI_GEMM=cublaslt; further fallbacks are "
               "counted, not logged)");
    }
    ++gemm_fallbacks_;
  }
#else
  (void)op, (void)dt, (void)m, (void)n, (void)k;
#endif
  if constexpr (requires { p.sm90; }) {  // the products (the bias gradient has no sm_90a kernel)
    P q = p;
    q.sm90 = gemm_path_ == GemmPath::sm90;
    q.sm90_per_tile = gemm_sm90_per_tile_;
    sm90_gemm_calls_ += run_nuri(q, stream()) ? 1 : 0;
  } else {
    run_nuri(p, stream());
  }
}

int64_t CudaBackend::cublaslt_calls() const {
#if defined(NURI_CUDA_REAL)
  return lt_ ? lt_->calls() : 0;
#else
  return 0;
#endif
}

// ---- the ops ----------------------------------------------------------------------------------

void CudaBackend::matmul(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                         Activation act, const Tensor& pre, const Tensor& residual) {
  constexpr const char* op = "matmul";
  const DType dt = gemm_dtype(op, "x", x);
  check_dev(op, "w", w, dt);
  NURI_CHECK(w.dim() == 2, op, ": w must be [N, K], got shape ", shape_str(w.shape()));
  const int64_t n = w.size(0), k = w.size(1);
  NURI_CHECK(k > 0, op, ": w has shape ", shape_str(w.shape()), ": an inner dimension K of 0 "
             "(a layer with no inputs) has nothing to multiply");
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
  if (residual.defined()) check_matrix(op, "residual", residual, dt, m, n);
  if (m == 0 || n == 0) return;
  with_type(dt, [&](auto tag) {
    using T = decltype(tag);
    run_gemm(op, dt, m, n, k,
             kernels::MatmulParams<T>{ptr<const T>(x), ptr<const T>(w), ptr<const T>(bias),
                                      ptr<T>(y), gelu ? ptr<T>(pre) : nullptr,
                                      ptr<const T>(residual), m, n, k, gelu, gemm_tiles_});
  });
}

void CudaBackend::matmul_backward_input(const Tensor& dy, const Tensor& w, const Tensor& dx,
                                        bool accumulate, const Tensor& gelu_pre) {
  constexpr const char* op = "matmul_backward_input";
  const DType dt = gemm_dtype(op, "dy", dy);
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
  with_type(dt, [&](auto tag) {
    using T = decltype(tag);
    run_gemm(op, dt, m, n, k,
             kernels::MatmulBackwardInputParams<T>{ptr<const T>(dy), ptr<const T>(w),
                                                   ptr<const T>(gelu_pre), ptr<T>(dx), m, n, k,
                                                   accumulate, gemm_tiles_});
  });
}

void CudaBackend::matmul_backward_weight(const Tensor& dy, const Tensor& x, const Tensor& dw,
                                         bool accumulate) {
  constexpr const char* op = "matmul_backward_weight";
  check_dev(op, "dw", dw, DType::f32);
  NURI_CHECK(dw.dim() == 2, op, ": dw must be [N, K], got shape ", shape_str(dw.shape()));
  const int64_t n = dw.size(0), k = dw.size(1);
  const DType dt = gemm_dtype(op, "dy", dy);
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
  with_type(dt, [&](auto tag) {
    using T = decltype(tag);
    run_gemm(
        op, dt, m, n, k,
        kernels::MatmulBackwardWeightParams<T>{ptr<const T>(dy), ptr<const T>(x), ptr<float>(dw), m,
                                               n, k, accumulate, gemm_tiles_});
  });
}

void CudaBackend::matmul_backward_bias(const Tensor& dy, const Tensor& dbias, bool accumulate) {
  constexpr const char* op = "matmul_backward_bias";
  check_dev(op, "dbias", dbias, DType::f32);
  NURI_CHECK(dbias.dim() == 1, op, ": dbias must be [N], got shape ", shape_str(dbias.shape()));
  const int64_t n = dbias.size(0);
  const DType dt = gemm_dtype(op, "dy", dy);
  const int64_t m = rows(dy);
  check_matrix(op, "dy", dy, dt, m, n);
  if (n == 0) return;
  if (m == 0) {
    if (!accumulate) zero(dbias);
    return;
  }
  auto* work =
      static_cast<float*>(workspace(size_t(kernels::matmul_bias_partials(m) * n) * sizeof(float)));
  // auto: nuri's two-pass kernel below 2048 columns, where cuBLASLt's dy·ones product (split-K
  // plus a reduction kernel) is latency-bound. Measured on an H100, 8192 rows (bench_matmul_gpu
  // --pass bgrad): nuri 1.14–1.59× cuBLASLt's speed at N = 768 and 1600, 0.79–0.84× at N = 2304
  // to 6400.
  const bool nuri_kernel = gemm_path_ == GemmPath::automatic && n < 2048;
  with_type(dt, [&](auto tag) {
    using T = decltype(tag);
    const kernels::MatmulBackwardBiasParams<T> p{ptr<const T>(dy), ptr<float>(dbias), work, m, n,
                                                 accumulate};
    if (nuri_kernel) {
      run_nuri(p, stream());
    } else {
      run_gemm(op, dt, m, n, 1, p);
    }
  });
}

}  // namespace nuri
