// Rotary position embedding's frequencies: f_i = theta^(-2i/D) for the pair (i, i + D/2) of a
// head of dim D, optionally rescaled for contexts longer than the model was trained on. Shared
// by the model (its config), the CPU backend and the CUDA kernels (host and device code alike),
// so every backend rotates by the same angles.
//
// The scalings are Hugging Face's `rope_scaling` types that leave attention unscaled:
//   linear: f_i / factor (positions interpolated).
//   llama3: Llama 3.1's. With wavelength w_i = 2π / f_i and the original context L:
//           w_i < L / high_freq_factor: f_i (high frequencies kept);
//           w_i > L / low_freq_factor:  f_i / factor;
//           between: (1 − s) f_i / factor + s f_i with s = (L / w_i − low) / (high − low).
#pragma once

#include <cmath>
#include <cstdint>

#include "nuri/core/error.h"

#if defined(__CUDACC__)
#define NURI_HOST_DEVICE __host__ __device__
#else
#define NURI_HOST_DEVICE
#endif

namespace nuri {

enum class RopeScalingKind : int32_t { none = 0, linear = 1, llama3 = 2 };

struct Rope {
  double theta = 10000.0;
  RopeScalingKind scaling = RopeScalingKind::none;
  double factor = 1.0;               ///< linear, llama3: > 0
  double low_freq_factor = 1.0;      ///< llama3
  double high_freq_factor = 4.0;     ///< llama3: > low_freq_factor
  double original_context = 8192.0;  ///< llama3: the context L the model was trained on

  /// f_i of the pair (i, i + d/2), in radians per position.
  NURI_HOST_DEVICE double frequency(int64_t i, int64_t d) const {
    const double f = pow(theta, -2.0 * double(i) / double(d));
    if (scaling == RopeScalingKind::linear) return f / factor;
    if (scaling != RopeScalingKind::llama3) return f;
    const double wavelength = 2.0 * 3.14159265358979323846 / f;
    if (wavelength < original_context / high_freq_factor) return f;
    if (wavelength > original_context / low_freq_factor) return f / factor;
    const double s =
        (original_context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor);
    return (1.0 - s) * f / factor + s * f;
  }
};

/// "none", "linear", "llama3".
inline const char* rope_scaling_name(RopeScalingKind k) {
  return k == RopeScalingKind::linear ? "linear" : k == RopeScalingKind::llama3 ? "llama3" : "none";
}

/// Throws nuri::Error naming `what` for a Rope whose frequencies would not be finite and
/// positive (theta <= 0, factor <= 0, llama3's factors out of order or its context <= 0).
inline void check_rope(const char* what, const Rope& r) {
  NURI_CHECK(r.theta > 0.0 && std::isfinite(r.theta), what, ": rope theta must be positive, got ",
             r.theta);
  if (r.scaling == RopeScalingKind::none) return;
  NURI_CHECK(r.factor > 0.0 && std::isfinite(r.factor), what,
             ": rope scaling factor must be positive, got ", r.factor);
  if (r.scaling != RopeScalingKind::llama3) return;
  NURI_CHECK(r.low_freq_factor > 0.0 && r.high_freq_factor > r.low_freq_factor, what,
             ": llama3 rope scaling needs 0 < low_freq_factor < high_freq_factor, got ",
             r.low_freq_factor, " and ", r.high_freq_factor);
  NURI_CHECK(r.original_context > 0.0, what,
             ": llama3 rope scaling needs original_max_position_embeddings > 0, got ",
             r.original_context);
}

}  // namespace nuri
