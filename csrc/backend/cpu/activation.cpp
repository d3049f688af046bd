// Elementwise activations: GELU (tanh approximation) and SwiGLU (silu(gate) · up, with the gate
// in the first half of the last dimension), forward and backward.
#include "backend/cpu/check.h"
#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/math.h"

namespace nuri {

using cpu::check_cpu;

void CpuBackend::gelu(const Tensor& x, const Tensor& y) {
  check_cpu("gelu", "x", x);
  check_cpu("gelu", "y", y);
  cpu::check_shape("gelu", "y", y, x.shape());
  const float* in = x.data<float>();
  float* out = y.data<float>();
  const int64_t n = x.numel();
#pragma omp parallel for schedule(static) if (n >= cpu::kParallelWork)
  for (int64_t i = 0; i < n; ++i) out[i] = cpu::gelu(in[i]);
}

void CpuBackend::gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx) {
  constexpr const char* op = "gelu_backward";
  check_cpu(op, "x", x);
  check_cpu(op, "dy", dy);
  check_cpu(op, "dx", dx);
  cpu::check_shape(op, "dy", dy, x.shape());
  cpu::check_shape(op, "dx", dx, x.shape());
  const float* in = x.data<float>();
  const float* g = dy.data<float>();
  float* out = dx.data<float>();
  const int64_t n = x.numel();
#pragma omp parallel for schedule(static) if (n >= cpu::kParallelWork)
  for (int64_t i = 0; i < n; ++i) out[i] = g[i] * cpu::gelu_grad(in[i]);
}

// x [M, 2F] -> F and M, validated against y/dy [M, F].
static void swiglu_dims(const char* op, const Tensor& x, const Tensor& y, int64_t& m,
                        int64_t& f) {
  check_cpu(op, "x", x);
  NURI_CHECK(x.dim() >= 1 && x.size(-1) % 2 == 0 && x.size(-1) > 0, op,
             ": x must hold [gate | up] in an even, non-empty last dimension, got shape ",
             shape_str(x.shape()));
  f = x.size(-1) / 2;
  m = cpu::rows(x);
  cpu::check_matrix(op, "output", y, m, f);
}

void CpuBackend::swiglu(const Tensor& x, const Tensor& y) {
  int64_t m, f;
  swiglu_dims("swiglu", x, y, m, f);
  const float* in = x.data<float>();
  float* out = y.data<float>();
#pragma omp parallel for schedule(static) if (m * f >= cpu::kParallelWork)
  for (int64_t i = 0; i < m; ++i) {
    const float* gate = in + i * 2 * f;
    const float* up = gate + f;
    float* o = out + i * f;
    for (int64_t j = 0; j < f; ++j) o[j] = gate[j] * cpu::sigmoid(gate[j]) * up[j];
  }
}

void CpuBackend::swiglu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx) {
  constexpr const char* op = "swiglu_backward";
  int64_t m, f;
  swiglu_dims(op, x, dy, m, f);
  check_cpu(op, "dx", dx);
  cpu::check_shape(op, "dx", dx, x.shape());
  const float* in = x.data<float>();
  const float* g = dy.data<float>();
  float* out = dx.data<float>();
#pragma omp parallel for schedule(static) if (m * f >= cpu::kParallelWork)
  for (int64_t i = 0; i < m; ++i) {
    const float* gate = in + i * 2 * f;
    const float* up = gate + f;
    const float* gi = g + i * f;
    float* dgate = out + i * 2 * f;
    float* dup = dgate + f;
    for (int64_t j = 0; j < f; ++j) {
      const float s = cpu::sigmoid(gate[j]);
      const float silu = gate[j] * s;
      const float dsilu = s * (1.f + gate[j] * (1.f - s));
      const float u = up[j];  // read before writing: dx may not alias x, but keep the order clear
      dup[j] = gi[j] * silu;
      dgate[j] = gi[j] * u * dsilu;
    }
  }
}

}  // namespace nuri
