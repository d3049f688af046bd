// LayerNorm and RMSNorm, each fused with the residual add that precedes it in a pre-norm block:
// s = x + residual; y = norm(s) · weight (+ bias). One templated row kernel serves both (kCenter
// selects layernorm). Parameter gradients are reduced over fixed chunks of rows and then summed
// in chunk order, so they do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/check.h"
#include "backend/cpu/cpu_backend.h"

namespace nuri {

using cpu::check_cpu;
using cpu::check_matrix;

namespace {

constexpr int64_t kRowChunk = 32;  // rows per partial sum of the parameter gradients

struct NormArgs {
  const float* x;
  const float* residual;  // may be null
  const float* weight;    // [C]
  const float* bias;      // [C] or null
  float* sum;             // [M, C] or null (written when residual is given)
  float* y;               // [M, C]
  float* mean;            // [M] or null (rmsnorm)
  float* rstd;            // [M]
  float eps;
  int64_t m, c;
};

template <bool kCenter>
void norm_forward(const NormArgs& a) {
#pragma omp parallel for schedule(static) if (a.m * a.c >= cpu::kParallelWork)
  for (int64_t i = 0; i < a.m; ++i) {
    const float* xr = a.x + i * a.c;
    const float* s = xr;
    if (a.residual) {
      const float* rr = a.residual + i * a.c;
      float* sr = a.sum + i * a.c;
      for (int64_t j = 0; j < a.c; ++j) sr[j] = xr[j] + rr[j];
      s = sr;
    }
    // omp simd lets the row sums use vector lanes (a fixed order: the same bits at any thread
    // count); a plain float sum is a serial chain the compiler may not reorder.
    float mu = 0.f;
    if (kCenter) {
#pragma omp simd reduction(+ : mu)
      for (int64_t j = 0; j < a.c; ++j) mu += s[j];
      mu /= float(a.c);
    }
    float var = 0.f;
#pragma omp simd reduction(+ : var)
    for (int64_t j = 0; j < a.c; ++j) {
      const float d = s[j] - mu;
      var += d * d;
    }
    var /= float(a.c);
    const float r = 1.f / std::sqrt(var + a.eps);
    float* yr = a.y + i * a.c;
    for (int64_t j = 0; j < a.c; ++j) {
      float v = (s[j] - mu) * r * a.weight[j];
      if (a.bias) v += a.bias[j];
      yr[j] = v;
    }
    if (kCenter) a.mean[i] = mu;
    a.rstd[i] = r;
  }
}

struct NormGradArgs {
  const float* dy;      // [M, C]
  const float* s;       // [M, C] normalized input
  const float* weight;  // [C]
  const float* mean;    // [M] or null
  const float* rstd;    // [M]
  const float* dsum;    // [M, C] or null
  float* ds;            // [M, C]
  float* dweight;       // [C]
  float* dbias;         // [C] or null
  bool accumulate;
  int64_t m, c;
};

template <bool kCenter>
void norm_backward(const NormGradArgs& a) {
  const int64_t chunks = (a.m + kRowChunk - 1) / kRowChunk;
  // partial[k] = [dweight partial (C) | dbias partial (C)] of row chunk k
  std::vector<float> partial(size_t(chunks * 2 * a.c), 0.f);
#pragma omp parallel for schedule(static) if (a.m * a.c >= cpu::kParallelWork)
  for (int64_t k = 0; k < chunks; ++k) {
    float* pw = partial.data() + k * 2 * a.c;
    float* pb = pw + a.c;
    for (int64_t i = k * kRowChunk; i < std::min(a.m, (k + 1) * kRowChunk); ++i) {
      const float* g = a.dy + i * a.c;
      const float* s = a.s + i * a.c;
      const float mu = kCenter ? a.mean[i] : 0.f;
      const float r = a.rstd[i];
      // dxhat = dy · w; ds = r · (dxhat − mean(dxhat) − xhat · mean(dxhat · xhat))
      float mean_dxhat = 0.f, mean_dxhat_xhat = 0.f;
#pragma omp simd reduction(+ : mean_dxhat, mean_dxhat_xhat)
      for (int64_t j = 0; j < a.c; ++j) {
        const float xhat = (s[j] - mu) * r;
        const float dxhat = g[j] * a.weight[j];
        mean_dxhat += dxhat;
        mean_dxhat_xhat += dxhat * xhat;
        pw[j] += g[j] * xhat;
        pb[j] += g[j];
      }
      mean_dxhat = kCenter ? mean_dxhat / float(a.c) : 0.f;
      mean_dxhat_xhat /= float(a.c);
      float* d = a.ds + i * a.c;
      const float* dres = a.dsum ? a.dsum + i * a.c : nullptr;
      for (int64_t j = 0; j < a.c; ++j) {
        const float xhat = (s[j] - mu) * r;
        const float dxhat = g[j] * a.weight[j];
        const float v = r * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
        d[j] = dres ? dres[j] + v : v;
      }
    }
  }
#pragma omp parallel for schedule(static) if (chunks * a.c >= cpu::kParallelWork)
  for (int64_t j = 0; j < a.c; ++j) {
    float w = 0.f, b = 0.f;
    for (int64_t k = 0; k < chunks; ++k) {
      w += partial[size_t(k * 2 * a.c + j)];
      b += partial[size_t(k * 2 * a.c + a.c + j)];
    }
    a.dweight[j] = (a.accumulate ? a.dweight[j] : 0.f) + w;
    if (a.dbias) a.dbias[j] = (a.accumulate ? a.dbias[j] : 0.f) + b;
  }
}

// Shared validation: x [M, C] (folded), weight [C], and the [M, C] / [M] companions.
int64_t check_norm_input(const char* op, const Tensor& x, const Tensor& weight) {
  check_cpu(op, "x", x);
  NURI_CHECK(x.dim() >= 1 && x.numel() > 0, op, ": x must be a non-empty [M, C] tensor, got shape ",
             shape_str(x.shape()));
  const int64_t c = x.size(-1);
  check_cpu(op, "weight", weight);
  cpu::check_shape(op, "weight", weight, {c});
  return c;
}

void check_rows(const char* op, const char* name, const Tensor& t, int64_t m) {
  check_cpu(op, name, t);
  cpu::check_shape(op, name, t, {m});
}

}  // namespace

void CpuBackend::layernorm(const Tensor& x, const Tensor& residual, const Tensor& weight,
                           const Tensor& bias, float eps, const Tensor& sum, const Tensor& y,
                           const Tensor& mean, const Tensor& rstd) {
  constexpr const char* op = "layernorm";
  const int64_t c = check_norm_input(op, x, weight);
  const int64_t m = cpu::rows(x);
  NURI_CHECK(eps > 0.f, op, ": eps must be positive, got ", eps);
  if (bias.defined()) check_cpu(op, "bias", bias), cpu::check_shape(op, "bias", bias, {c});
  if (residual.defined()) {
    check_matrix(op, "residual", residual, m, c);
    check_matrix(op, "sum", sum, m, c);
  }
  check_matrix(op, "y", y, m, c);
  check_rows(op, "mean", mean, m);
  check_rows(op, "rstd", rstd, m);
  norm_forward<true>({x.data<float>(), residual.defined() ? residual.data<float>() : nullptr,
                      weight.data<float>(), bias.defined() ? bias.data<float>() : nullptr,
                      residual.defined() ? sum.data<float>() : nullptr, y.data<float>(),
                      mean.data<float>(), rstd.data<float>(), eps, m, c});
}

void CpuBackend::layernorm_backward(const Tensor& dy, const Tensor& s, const Tensor& weight,
                                    const Tensor& mean, const Tensor& rstd, const Tensor& dsum,
                                    const Tensor& ds, const Tensor& dweight, const Tensor& dbias,
                                    bool accumulate) {
  constexpr const char* op = "layernorm_backward";
  const int64_t c = check_norm_input(op, s, weight);
  const int64_t m = cpu::rows(s);
  check_matrix(op, "dy", dy, m, c);
  check_matrix(op, "ds", ds, m, c);
  if (dsum.defined()) check_matrix(op, "dsum", dsum, m, c);
  check_rows(op, "mean", mean, m);
  check_rows(op, "rstd", rstd, m);
  check_cpu(op, "dweight", dweight);
  cpu::check_shape(op, "dweight", dweight, {c});
  if (dbias.defined()) check_cpu(op, "dbias", dbias), cpu::check_shape(op, "dbias", dbias, {c});
  norm_backward<true>({dy.data<float>(), s.data<float>(), weight.data<float>(),
                       mean.data<float>(), rstd.data<float>(),
                       dsum.defined() ? dsum.data<float>() : nullptr, ds.data<float>(),
                       dweight.data<float>(), dbias.defined() ? dbias.data<float>() : nullptr,
                       accumulate, m, c});
}

void CpuBackend::rmsnorm(const Tensor& x, const Tensor& residual, const Tensor& weight, float eps,
                         const Tensor& sum, const Tensor& y, const Tensor& rstd) {
  constexpr const char* op = "rmsnorm";
  const int64_t c = check_norm_input(op, x, weight);
  const int64_t m = cpu::rows(x);
  NURI_CHECK(eps > 0.f, op, ": eps must be positive, got ", eps);
  if (residual.defined()) {
    check_matrix(op, "residual", residual, m, c);
    check_matrix(op, "sum", sum, m, c);
  }
  check_matrix(op, "y", y, m, c);
  check_rows(op, "rstd", rstd, m);
  norm_forward<false>({x.data<float>(), residual.defined() ? residual.data<float>() : nullptr,
                       weight.data<float>(), nullptr,
                       residual.defined() ? sum.data<float>() : nullptr, y.data<float>(), nullptr,
                       rstd.data<float>(), eps, m, c});
}

void CpuBackend::rmsnorm_backward(const Tensor& dy, const Tensor& s, const Tensor& weight,
                                  const Tensor& rstd, const Tensor& dsum, const Tensor& ds,
                                  const Tensor& dweight, bool accumulate) {
  constexpr const char* op = "rmsnorm_backward";
  const int64_t c = check_norm_input(op, s, weight);
  const int64_t m = cpu::rows(s);
  check_matrix(op, "dy", dy, m, c);
  check_matrix(op, "ds", ds, m, c);
  if (dsum.defined()) check_matrix(op, "dsum", dsum, m, c);
  check_rows(op, "rstd", rstd, m);
  check_cpu(op, "dweight", dweight);
  cpu::check_shape(op, "dweight", dweight, {c});
  norm_backward<false>({dy.data<float>(), s.data<float>(), weight.data<float>(), nullptr,
                        rstd.data<float>(), dsum.defined() ? dsum.data<float>() : nullptr,
                        ds.data<float>(), dweight.data<float>(), nullptr, accumulate, m, c});
}

}  // namespace nuri
