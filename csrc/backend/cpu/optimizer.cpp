// AdamW over many tensors in one call, and the global gradient norm used for clipping.
// The norm sums squares in double over fixed chunks, combined in order: deterministic.
// The optional bf16 copy of each parameter is rounded to nearest even or stochastically, with the
// random bits the CUDA backend uses too (backend.h, AdamWParams), so both give identical copies.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/check.h"
#include "backend/cpu/cpu_backend.h"
#include "nuri/core/rng.h"

namespace nuri {

using cpu::check_cpu;

namespace {

// f32 -> bf16 bits by adding the low 16 bits of `random` and truncating (kernels/optimizer.cuh
// has the device twin). NaN stays a quiet NaN with its sign, as f32_to_bf16.
inline uint16_t bf16_bits_stochastic(float x, uint32_t random) {
  const uint32_t u = f32_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);
  return uint16_t((u + (random & 0xffffu)) >> 16);
}

// out[i] = bf16(p[i]) for i < n; `index` is the tensor's position in the adamw call.
void bf16_copy(const float* p, bf16_t* out, int64_t n, const AdamWParams& hp, size_t index) {
  if (!hp.stochastic_rounding) {
#pragma omp parallel for schedule(static) if (n >= cpu::kParallelWork)
    for (int64_t i = 0; i < n; ++i) out[i] = f32_to_bf16(p[i]);
    return;
  }
  // Philox counter = (i / 4, tensor index, step): stream = step << 32 | tensor index.
  const Philox rng(hp.seed, (uint64_t(uint32_t(hp.step)) << 32) | uint32_t(index));
  const int64_t groups = (n + 3) / 4;
#pragma omp parallel for schedule(static) if (n >= cpu::kParallelWork)
  for (int64_t k = 0; k < groups; ++k) {
    const u32x4 r = rng.block(uint64_t(k));
    for (int64_t e = 0; e < 4 && 4 * k + e < n; ++e) {
      out[4 * k + e] = bf16_t{bf16_bits_stochastic(p[4 * k + e], r[size_t(e)])};
    }
  }
}

}  // namespace

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
    if (t.param_bf16.defined()) {
      check_cpu(op, "param_bf16", t.param_bf16, DType::bf16);
      cpu::check_shape(op, "param_bf16", t.param_bf16, t.param.shape());
    }
  }
  const float bc1 = 1.f - float(std::pow(double(hp.beta1), double(hp.step)));
  const float bc2 = 1.f - float(std::pow(double(hp.beta2), double(hp.step)));
  for (size_t ti = 0; ti < tensors.size(); ++ti) {
    const AdamWTensor& t = tensors[ti];
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
    if (t.param_bf16.defined()) bf16_copy(p, t.param_bf16.data<bf16_t>(), n, hp, ti);
  }
}

}  // namespace nuri
