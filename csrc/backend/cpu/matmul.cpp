// Linear layers on the CPU: y = act(x·Wᵀ + b) and its three gradients. The products go to BLAS
// (gemm.h); bias, GELU and the fused GELU backward are one extra pass over the output rows.
#include <algorithm>

#include "backend/cpu/check.h"
#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/gemm.h"
#include "backend/cpu/math.h"

namespace nuri {

using cpu::check_cpu;
using cpu::check_matrix;
using cpu::rows;

void CpuBackend::matmul(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                        Activation act, const Tensor& pre, const Tensor& residual) {
  constexpr const char* op = "matmul";
  check_cpu(op, "w", w);
  NURI_CHECK(w.dim() == 2, op, ": w must be [N, K], got shape ", shape_str(w.shape()));
  const int64_t n = w.size(0), k = w.size(1);
  NURI_CHECK(k > 0, op, ": w has shape ", shape_str(w.shape()), ": an inner dimension K of 0 "
             "(a layer with no inputs) has nothing to multiply");
  check_cpu(op, "x", x);
  NURI_CHECK(x.dim() >= 1 && x.size(-1) == k, op, ": x has shape ", shape_str(x.shape()), " but w ",
             shape_str(w.shape()), " needs a last dimension of ", k);
  const int64_t m = rows(x);
  check_matrix(op, "y", y, m, n);
  if (bias.defined()) {
    check_cpu(op, "bias", bias);
    cpu::check_shape(op, "bias", bias, {n});
  }
  const bool gelu = act == Activation::gelu;
  if (gelu) check_matrix(op, "pre (GELU pre-activation)", pre, m, n);
  if (residual.defined()) check_matrix(op, "residual", residual, m, n);
  const float* r = residual.defined() ? residual.data<float>() : nullptr;
  float* yp = y.data<float>();

  // Without GELU the residual is the GEMM's C (beta = 1): copied into y first unless it is y.
  float* out = gelu ? pre.data<float>() : yp;
  const bool res_in_gemm = r && !gelu;
  if (res_in_gemm && r != yp) std::copy(r, r + m * n, yp);
  cpu::sgemm(false, true, m, n, k, 1.f, x.data<float>(), k, w.data<float>(), k,
             res_in_gemm ? 1.f : 0.f, out, n);
  const float* b = bias.defined() ? bias.data<float>() : nullptr;
  if (!b && !gelu) return;
#pragma omp parallel for schedule(static) if (m * n >= cpu::kParallelWork)
  for (int64_t i = 0; i < m; ++i) {
    float* row = out + i * n;
    float* yrow = yp + i * n;
    if (b) {
      for (int64_t j = 0; j < n; ++j) row[j] += b[j];
    }
    if (gelu) {
      const float* rrow = r ? r + i * n : nullptr;  // read before y is written: may alias y
      for (int64_t j = 0; j < n; ++j) yrow[j] = cpu::gelu(row[j]) + (rrow ? rrow[j] : 0.f);
    }
  }
}

void CpuBackend::matmul_backward_input(const Tensor& dy, const Tensor& w, const Tensor& dx,
                                       bool accumulate, const Tensor& gelu_pre) {
  constexpr const char* op = "matmul_backward_input";
  check_cpu(op, "w", w);
  NURI_CHECK(w.dim() == 2, op, ": w must be [N, K], got shape ", shape_str(w.shape()));
  const int64_t n = w.size(0), k = w.size(1);
  check_cpu(op, "dy", dy);
  NURI_CHECK(dy.dim() >= 1 && dy.size(-1) == n, op, ": dy has shape ", shape_str(dy.shape()),
             " but w ", shape_str(w.shape()), " needs a last dimension of ", n);
  const int64_t m = rows(dy);
  check_matrix(op, "dx", dx, m, k);
  if (gelu_pre.defined()) {
    NURI_CHECK(!accumulate, op, ": the fused GELU backward cannot accumulate into dx");
    check_matrix(op, "gelu_pre", gelu_pre, m, k);
  }
  float* d = dx.data<float>();
  cpu::sgemm(false, false, m, k, n, 1.f, dy.data<float>(), n, w.data<float>(), k,
             accumulate ? 1.f : 0.f, d, k);
  if (!gelu_pre.defined()) return;
  const float* p = gelu_pre.data<float>();
  const int64_t total = m * k;
#pragma omp parallel for schedule(static) if (total >= cpu::kParallelWork)
  for (int64_t i = 0; i < total; ++i) d[i] *= cpu::gelu_grad(p[i]);
}

void CpuBackend::matmul_backward_weight(const Tensor& dy, const Tensor& x, const Tensor& dw,
                                        bool accumulate) {
  constexpr const char* op = "matmul_backward_weight";
  check_cpu(op, "dw", dw);
  NURI_CHECK(dw.dim() == 2, op, ": dw must be [N, K], got shape ", shape_str(dw.shape()));
  const int64_t n = dw.size(0), k = dw.size(1);
  check_cpu(op, "dy", dy);
  check_cpu(op, "x", x);
  const int64_t m = rows(dy);
  check_matrix(op, "dy", dy, m, n);
  check_matrix(op, "x", x, m, k);
  cpu::sgemm(true, false, n, k, m, 1.f, dy.data<float>(), n, x.data<float>(), k,
             accumulate ? 1.f : 0.f, dw.data<float>(), k);
}

void CpuBackend::matmul_backward_bias(const Tensor& dy, const Tensor& dbias, bool accumulate) {
  constexpr const char* op = "matmul_backward_bias";
  check_cpu(op, "dbias", dbias);
  NURI_CHECK(dbias.dim() == 1, op, ": dbias must be [N], got shape ", shape_str(dbias.shape()));
  const int64_t n = dbias.size(0);
  check_cpu(op, "dy", dy);
  const int64_t m = rows(dy);
  check_matrix(op, "dy", dy, m, n);
  const float* g = dy.data<float>();
  float* db = dbias.data<float>();
  // Each thread owns a block of columns and walks all rows in order: deterministic, and the
  // rows are read with unit stride inside the block.
  constexpr int64_t kCols = 256;
  const int64_t blocks = (n + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (m * n >= cpu::kParallelWork)
  for (int64_t bi = 0; bi < blocks; ++bi) {
    const int64_t j0 = bi * kCols, j1 = std::min(n, j0 + kCols);
    float acc[kCols] = {};
    for (int64_t i = 0; i < m; ++i) {
      const float* row = g + i * n;
      for (int64_t j = j0; j < j1; ++j) acc[j - j0] += row[j];
    }
    for (int64_t j = j0; j < j1; ++j) db[j] = (accumulate ? db[j] : 0.f) + acc[j - j0];
  }
}

}  // namespace nuri
