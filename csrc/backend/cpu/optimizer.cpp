// AdamW over many tensors in one call, and the global gradient norm used for clipping.
// The norm sums squares in double over fixed chunks, combined in order: deterministic.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/check.h"
#include "backend/cpu/cpu_backend.h"

namespace nuri {

using cpu::check_cpu;

void CpuBackend::global_norm(const std::vector<Tensor>& grads, const Tensor& out) {
  constexpr const char* op = "global_norm";
  check_cpu(op, "out", out);
  cpu::check_shape(op, "out", out, {1});
  constexpr int64_t kChunk = 1 << 14;
  double total = 0.0;
  for (size_t t = 0; t < grads.size(); ++t) {
    check_cpu(op, "grad", grads[t]);
    const float* g = grads[t].data<float>();
    const int64_t n = grads[t].numel();
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    std::vector<double> partial(size_t(chunks), 0.0);
#pragma omp parallel for schedule(static) if (n >= cpu::kParallelWork)
    for (int64_t k = 0; k < chunks; ++k) {
      double acc = 0.0;
      for (int64_t i = k * kChunk; i < std::min(n, (k + 1) * kChunk); ++i) {
        acc += double(g[i]) * double(g[i]);
      }
      partial[size_t(k)] = acc;
    }
    for (double p : partial) total += p;
  }
  out.data<float>()[0] = float(std::sqrt(total));
}

void CpuBackend::adamw(const std::vector<AdamWTensor>& tensors, const AdamWParams& hp) {
  constexpr const char* op = "adamw";
  NURI_CHECK(hp.step >= 1, op, ": step is 1-based, got ", hp.step);
  NURI_CHECK(hp.lr >= 0.f, op, ": learning rate must be >= 0, got ", hp.lr);
  NURI_CHECK(hp.beta1 >= 0.f && hp.beta1 < 1.f && hp.beta2 >= 0.f && hp.beta2 < 1.f, op,
             ": betas must be in [0, 1), got (", hp.beta1, ", ", hp.beta2, ")");
  NURI_CHECK(hp.eps > 0.f, op, ": eps must be positive, got ", hp.eps);
  for (const auto& t : tensors) {
    check_cpu(op, "param", t.param);
    check_cpu(op, "grad", t.grad);
    check_cpu(op, "m", t.m);
    check_cpu(op, "v", t.v);
    cpu::check_shape(op, "grad", t.grad, t.param.shape());
    cpu::check_shape(op, "m", t.m, t.param.shape());
    cpu::check_shape(op, "v", t.v, t.param.shape());
  }
  const float bc1 = 1.f - float(std::pow(double(hp.beta1), double(hp.step)));
  const float bc2 = 1.f - float(std::pow(double(hp.beta2), double(hp.step)));
  for (const auto& t : tensors) {
    float* p = t.param.data<float>();
    const float* g = t.grad.data<float>();
    float* m = t.m.data<float>();
    float* v = t.v.data<float>();
    const float wd = t.decay ? hp.weight_decay : 0.f;
    const int64_t n = t.param.numel();
#pragma omp parallel for schedule(static) if (n >= cpu::kParallelWork)
    for (int64_t i = 0; i < n; ++i) {
      const float gi = g[i] * hp.grad_scale;
      const float mi = hp.beta1 * m[i] + (1.f - hp.beta1) * gi;
      const float vi = hp.beta2 * v[i] + (1.f - hp.beta2) * gi * gi;
      m[i] = mi;
      v[i] = vi;
      const float update = (mi / bc1) / (std::sqrt(vi / bc2) + hp.eps);
      p[i] -= hp.lr * (update + wd * p[i]);
    }
  }
}

}  // namespace nuri
