// sgemm for the CPU backend. OpenBLAS (OpenMP build) by default; Eigen as the alternative.
#include "backend/cpu/gemm.h"

#if NURI_BLAS_OPENBLAS
#include <cblas.h>
#else
#include <Eigen/Core>
#endif

namespace nuri::cpu {

#if NURI_BLAS_OPENBLAS

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // C = beta C (BLAS refuses a leading dimension of 0)
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.f ? 0.f : beta * c[i * ldc + j];
    }
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              int(m), int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}
const char* gemm_library() { return "openblas"; }

#else

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Map = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;
using MapOut = Eigen::Map<RowMat, 0, Eigen::OuterStride<>>;

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc) {
  if (m == 0 || n == 0) return;
  Map A(a, trans_a ? k : m, trans_a ? m : k, Eigen::OuterStride<>(lda));
  Map B(b, trans_b ? n : k, trans_b ? k : n, Eigen::OuterStride<>(ldb));
  MapOut C(c, m, n, Eigen::OuterStride<>(ldc));
  if (beta == 0.f) C.setZero(); else if (beta != 1.f) C *= beta;
  if (trans_a && trans_b) C.noalias() += alpha * A.transpose() * B.transpose();
  else if (trans_a) C.noalias() += alpha * A.transpose() * B;
  else if (trans_b) C.noalias() += alpha * A * B.transpose();
  else C.noalias() += alpha * A * B;
}
const char* gemm_library() { return "eigen"; }

#endif

}  // namespace nuri::cpu
