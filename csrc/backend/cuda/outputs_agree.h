// The test `auto` attention (attention.cpp) applies to another implementation's outputs before
// it may choose that implementation over nuri's kernels.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace nuri::cuda {

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
