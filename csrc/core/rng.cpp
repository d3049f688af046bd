// Philox4x32-10 and the derived uniform/normal streams. Constants from Salmon et al. (2011).
#include "nuri/core/rng.h"

#include <cmath>

namespace nuri {

u32x4 philox4x32_10(u32x4 c, std::array<uint32_t, 2> k) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(kM0) * c[0];
    const uint64_t p1 = uint64_t(kM1) * c[2];
    c = {uint32_t(p1 >> 32) ^ c[1] ^ k[0], uint32_t(p1), uint32_t(p0 >> 32) ^ c[3] ^ k[1],
         uint32_t(p0)};
    k[0] += kW0;
    k[1] += kW1;
  }
  return c;
}

uint64_t stream_id(const std::string& purpose) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : purpose) {
    h ^= ch;
    h *= 0x100000001b3ull;
  }
  return h;
}

u32x4 Philox::block(uint64_t b) const {
  return philox4x32_10({uint32_t(b), uint32_t(b >> 32), uint32_t(stream_), uint32_t(stream_ >> 32)},
                       {uint32_t(seed_), uint32_t(seed_ >> 32)});
}

uint32_t Philox::bits(uint64_t index) const { return block(index >> 2)[index & 3]; }

static inline float to_unit(uint32_t u) { return float(u >> 8) * (1.0f / 16777216.0f); }

float Philox::uniform(uint64_t index) const { return to_unit(bits(index)); }

namespace {
// Box-Muller on block `pair`'s first two words: elements 2·pair (the cosine) and 2·pair + 1 (the
// sine) share the radius and the angle.
struct Polar {
  float radius, angle;
};
inline Polar polar(const u32x4& r) {
  // u1 in (0, 1] so the log is finite.
  const float u1 = float((r[0] >> 8) + 1) * (1.0f / 16777216.0f);
  const float u2 = to_unit(r[1]);
  return {std::sqrt(-2.0f * std::log(u1)), 6.2831853071795864769f * u2};
}
}  // namespace

float Philox::normal(uint64_t index) const {
  const Polar p = polar(block(index >> 1));
  return (index & 1) ? p.radius * std::sin(p.angle) : p.radius * std::cos(p.angle);
}

void Philox::fill_uniform(float* out, int64_t n, uint64_t start, float lo, float hi) const {
  const float span = hi - lo;
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) out[i] = uniform(start + uint64_t(i)) * span + lo;
}

void Philox::fill_normal(float* out, int64_t n, uint64_t start, float mean, float stddev) const {
  // A pair's block, logarithm and square root once for both its elements (normal() makes them
  // for each): the same bits, in half the time.
  if (n <= 0) return;
  // Pair k is block (start >> 1) + k; its even element lands at out[2k - odd] (counted from the
  // start, so no index wraps near 2^64).
  const int64_t odd = int64_t(start & 1), pairs = (odd + n + 1) / 2;
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t k = 0; k < pairs; ++k) {
    const Polar p = polar(block((start >> 1) + uint64_t(k)));
    const int64_t even = 2 * k - odd;
    if (even >= 0) out[even] = p.radius * std::cos(p.angle) * stddev + mean;
    if (even + 1 < n) out[even + 1] = p.radius * std::sin(p.angle) * stddev + mean;
  }
}

}  // namespace nuri
