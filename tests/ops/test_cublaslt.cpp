// The cuBLASLt path of the CUDA backend's products (test_ops_gpu only: real CUDA builds, label
// gpu, skipped without a device). The matmul suite itself also runs with NURI_GEMM=cublaslt
// (tests/CMakeLists.txt); this test shows that the path is taken — aligned products are counted
// by cuBLASLt, none falls back — and that both paths agree on every output and epilogue.
#include "backend/cuda/cuda_backend.h"
#include "ops/harness.h"

namespace nuri::test {
namespace {

struct Outputs {
  Vec y, pre, dx, dw, db;
};

// Forward with bias and GELU, the input gradient through the fused GELU backward, the weight
// and bias gradients: 4 products (the three matmuls and the bias reduction).
Outputs run_all(CudaBackend& be, DType dt, int64_t m, int64_t n, int64_t k) {
  const Vec x = rounded(random_vec(m * k, 11), dt), w = rounded(random_vec(n * k, 12, 0.3), dt),
            b = rounded(random_vec(n, 13), dt), dy = rounded(random_vec(m * n, 14), dt),
            gpre = rounded(random_vec(m * k, 15), dt);
  Tensor tx = on_dtype(be, {m, k}, x, dt), tw = on_dtype(be, {n, k}, w, dt),
         tb = on_dtype(be, {n}, b, dt), tdy = on_dtype(be, {m, n}, dy, dt),
         tgpre = on_dtype(be, {m, k}, gpre, dt);
  Tensor ty = be.empty({m, n}, dt), tpre = be.empty({m, n}, dt), tdx = be.empty({m, k}, dt);
  Tensor tdw = zeros_f32(be, {n, k}), tdb = zeros_f32(be, {n});
  be.matmul(tx, tw, tb, ty, Activation::gelu, tpre, Tensor());
  be.matmul_backward_input(tdy, tw, tdx, false, tgpre);
  be.matmul_backward_weight(tdy, tx, tdw, true);
  be.matmul_backward_bias(tdy, tdb, true);
  return {values(be, ty), values(be, tpre), values(be, tdx), values(be, tdw), values(be, tdb)};
}

TEST(CublasLtPath, AlignedProductsRunOnCublasLtAndAgreeWithNuri) {
  auto owned = make_backend("cuda");
  auto& be = static_cast<CudaBackend&>(*owned);
  const int64_t m = 192, n = 136, k = 200;  // multiples of 8, not of the tiles
  for (DType dt : {DType::bf16, DType::f16, DType::f32}) {
    SCOPED_TRACE(dtype_name(dt));
    be.set_gemm_path(GemmPath::nuri);
    const Outputs ref = run_all(be, dt, m, n, k);
    be.set_gemm_path(GemmPath::cublaslt);
    const int64_t calls0 = be.cublaslt_calls(), fallbacks0 = be.gemm_fallbacks();
    const Outputs lt = run_all(be, dt, m, n, k);
    const int64_t calls = be.cublaslt_calls() - calls0,
                  fallbacks = be.gemm_fallbacks() - fallbacks0;
    EXPECT_EQ(calls + fallbacks, 4);
    // bf16 and f16 with 16-byte rows are cuBLASLt's main case: nothing may fall back.
    if (dt != DType::f32) {
      EXPECT_EQ(fallbacks, 0);
    }
    std::printf("%s: cuBLASLt ran %lld of 4 products\n", dtype_name(dt), (long long)calls);
    // Both paths sum in f32 in different orders; a T output is rounded once on each side (2
    // roundings between them). In f32 a GELU that is not the tanh form (nuri's) shows up here.
    const double sum_tol = 4e-6 * std::sqrt(double(k)) + 1e-6;
    NURI_EXPECT_CLOSE(lt.y, ref.y, tolerance_for(dt, sum_tol, 2), "y = gelu(x·wᵀ + b)");
    NURI_EXPECT_CLOSE(lt.pre, ref.pre, tolerance_for(dt, sum_tol, 2), "pre");
    NURI_EXPECT_CLOSE(lt.dx, ref.dx, tolerance_for(dt, 4e-6 * std::sqrt(double(n)) + 1e-6, 2),
                      "dx through the fused GELU backward");
    const double f32_sum_tol = 4e-6 * std::sqrt(double(m)) + 1e-6;
    NURI_EXPECT_CLOSE(lt.dw, ref.dw, f32_sum_tol, "dw (f32)");
    NURI_EXPECT_CLOSE(lt.db, ref.db, f32_sum_tol, "dbias (f32)");
  }
}

}  // namespace
}  // namespace nuri::test
