// Rotary position embedding, rotate-half convention (GPT-NeoX / Llama in Hugging Face): the
// pairs rotated together are (i, i + D/2). The backward is the same rotation by the negative
// angle. Angles are computed in double once per call, then applied in float.
#include <cmath>
#include <vector>

#include "backend/cpu/check.h"
#include "backend/cpu/cpu_backend.h"

namespace nuri {

namespace {

// Applies the rotation by sign · angle to x, writing y (may alias x). x, y: [B, T, H, D].
void rotate(const char* op, const Tensor& x, const Tensor& y, const Rope& rope,
            int64_t pos_offset, float sign) {
  cpu::check_cpu(op, "input", x, DType::f32, /*contiguous=*/false);
  cpu::check_cpu(op, "output", y, DType::f32, /*contiguous=*/false);
  NURI_CHECK(x.dim() == 4, op, ": input must be [B, T, H, D], got shape ", shape_str(x.shape()));
  cpu::check_shape(op, "output", y, x.shape());
  const int64_t b = x.size(0), t = x.size(1), h = x.size(2), d = x.size(3);
  NURI_CHECK(d % 2 == 0 && d > 0, op, ": head dim must be even and positive, got ", d);
  NURI_CHECK(x.stride(3) == 1 && y.stride(3) == 1, op, ": the head dim must have unit stride");
  check_rope(op, rope);
  NURI_CHECK(pos_offset >= 0, op, ": position offset must be >= 0, got ", pos_offset);
  const int64_t half = d / 2;
  // cos/sin table [T, D/2]
  std::vector<float> cs(size_t(t * half)), sn(size_t(t * half));
  for (int64_t ti = 0; ti < t; ++ti) {
    for (int64_t i = 0; i < half; ++i) {
      const double freq = rope.frequency(i, d);
      const double a = double(pos_offset + ti) * freq;
      cs[size_t(ti * half + i)] = float(std::cos(a));
      sn[size_t(ti * half + i)] = sign * float(std::sin(a));
    }
  }
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1), xs2 = x.stride(2);
  const int64_t ys0 = y.stride(0), ys1 = y.stride(1), ys2 = y.stride(2);
#pragma omp parallel for collapse(2) schedule(static) if (b * t * h * d >= cpu::kParallelWork)
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t ti = 0; ti < t; ++ti) {
      const float* c = cs.data() + ti * half;
      const float* s = sn.data() + ti * half;
      for (int64_t hi = 0; hi < h; ++hi) {
        const float* in = xp + bi * xs0 + ti * xs1 + hi * xs2;
        float* out = yp + bi * ys0 + ti * ys1 + hi * ys2;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = in[i], x2 = in[i + half];
          out[i] = x1 * c[i] - x2 * s[i];
          out[i + half] = x2 * c[i] + x1 * s[i];
        }
      }
    }
  }
}

}  // namespace

void CpuBackend::rope(const Tensor& x, const Tensor& y, const Rope& r, int64_t pos_offset) {
  rotate("rope", x, y, r, pos_offset, 1.f);
}

void CpuBackend::rope_backward(const Tensor& dy, const Tensor& dx, const Rope& r,
                               int64_t pos_offset) {
  rotate("rope_backward", dy, dx, r, pos_offset, -1.f);
}

}  // namespace nuri
