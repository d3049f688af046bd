// Row-major single-precision GEMM through the BLAS chosen at build time (NURI_BLAS):
//   C[M, N] = alpha · op(A) · op(B) + beta · C,  op(X) = X or Xᵀ.
// lda/ldb/ldc are row strides in elements of the matrices as stored. Multi-threaded by the BLAS.
#pragma once

#include <cstdint>

namespace nuri::cpu {

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc);

/// "openblas" or "eigen".
const char* gemm_library();

}  // namespace nuri::cpu
