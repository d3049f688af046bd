// The test `auto` attention (attention.cpp) applies to another implementation's outputs before
// it may choose that implementation over nuri's kernels.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace nuri::cuda {

/// The elements of a [B, T, H, D] view with element strides (sb, st, sh) (rows of D contiguous)
/// in row-major order, from `span`, the view's memory from its first element to past its last:
/// (B-1)·sb + (T-1)·st + (H-1)·sh + D elements (view_span). A fused-QKV view's dq, dk or dv
/// reads its heads out of the rows of the whole buffer.
inline int64_t view_span(int64_t b, int64_t t, int64_t h, int64_t d, int64_t sb, int64_t st,
                         int64_t sh) {
  return (b - 1) * sb + (t - 1) * st + (h - 1) * sh + d;
}
inline std::vector<float> view_values(const std::vector<float>& span, int64_t b, int64_t t,
                                      int64_t h, int64_t d, int64_t sb, int64_t st, int64_t sh) {
  std::vector<float> out;
  out.reserve(size_t(b * t * h * d));
  for (int64_t i = 0; i < b; ++i) {
    for (int64_t j = 0; j < t; ++j) {
      for (int64_t k = 0; k < h; ++k) {
        const auto row = span.begin() + (i * sb + j * st + k * sh);
        out.insert(out.end(), row, row + d);
      }
    }
  }
  return out;
}

/// Whether `theirs` agrees with `mine` (nuri's kernels' values): every finite value of mine
/// within rel_tol · max|finite mine| + abs_tol of theirs, and every value of mine that is not
/// finite matched in theirs (NaN by NaN, an infinity by the same one). A NaN in theirs where
/// mine has a number is a disagreement, however close the rest.
inline bool outputs_agree(const std::vector<float>& mine, const std::vector<float>& theirs,
                          float rel_tol, float abs_tol) {
  if (mine.size() != theirs.size()) return false;
  float scale = 0.f;
  for (float x : mine) {
    if (std::isfinite(x)) scale = std::max(scale, std::abs(x));
  }
  const float bound = rel_tol * scale + abs_tol;
  for (size_t i = 0; i < mine.size(); ++i) {
    const float a = mine[i], b = theirs[i];
    if (std::isfinite(a)) {
      if (!(std::abs(a - b) <= bound)) return false;  // also when b is NaN or infinite
    } else if (std::isnan(a) ? !std::isnan(b) : a != b) {
      return false;
    }
  }
  return true;
}

}  // namespace nuri::cuda
