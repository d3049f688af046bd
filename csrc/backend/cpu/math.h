// Scalar math shared by CPU ops: GELU (tanh approximation, as GPT-2) and SiLU with derivatives.
// Inline so the loops calling them vectorize.
#pragma once

#include <cmath>

namespace nuri::cpu {

constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluA = 0.044715f;

inline float gelu(float x) {
  const float u = kGeluC * (x + kGeluA * x * x * x);
  return 0.5f * x * (1.f + std::tanh(u));
}

/// d gelu(x) / dx.
inline float gelu_grad(float x) {
  const float u = kGeluC * (x + kGeluA * x * x * x);
  const float th = std::tanh(u);
  const float du = kGeluC * (1.f + 3.f * kGeluA * x * x);
  return 0.5f * (1.f + th) + 0.5f * x * (1.f - th * th) * du;
}

inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

}  // namespace nuri::cpu
