// Philox4x32-10 against the Random123 known-answer vectors, and the properties nuri relies on:
// values depend only on (seed, stream, index), and the derived distributions are right.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "nuri/core/rng.h"

namespace nuri {
namespace {

TEST(Philox, KnownAnswerVectors) {
  // counter[4] key[2] -> output[4], from Random123's kat_vectors.
  EXPECT_EQ(philox4x32_10({0, 0, 0, 0}, {0, 0}),
            (u32x4{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}));
  EXPECT_EQ(philox4x32_10({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
                          {0xffffffffu, 0xffffffffu}),
            (u32x4{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}));
  EXPECT_EQ(philox4x32_10({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
                          {0xa4093822u, 0x299f31d0u}),
            (u32x4{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}));
}

TEST(Philox, SlicesEqualTheWhole) {
  // A rank generating elements [a, b) gets exactly the whole tensor's elements [a, b).
  Philox rng(1234, stream_id("init/h.0.attn.c_attn.weight"));
  std::vector<float> whole(1000), part(333);
  rng.fill_normal(whole.data(), 1000, 0, 0.f, 0.02f);
  rng.fill_normal(part.data(), 333, 501, 0.f, 0.02f);
  for (int i = 0; i < 333; ++i) EXPECT_EQ(part[size_t(i)], whole[size_t(501 + i)]);
}

TEST(Philox, FillNormalIsNormalElementByElement) {
  // fill_normal draws each pair's Box-Muller once for both elements; every element, from any
  // start (odd or even) and of any length, is normal(index) · stddev + mean to the bit.
  const Philox rng(99, stream_id("init/model.layers.0.mlp.up_proj.weight"));
  const int64_t n = 300001;  // beyond the parallel loop's threshold
  std::vector<float> out(size_t(n) + 2);
  for (const uint64_t start : {uint64_t(0), uint64_t(1), uint64_t(1) << 40 | 1, ~uint64_t(0) - 8}) {
    for (const int64_t len : {int64_t(1), int64_t(2), int64_t(7), n}) {
      if (start == ~uint64_t(0) - 8 && len > 9) continue;  // indices up to 2^64 - 1 only
      std::fill(out.begin(), out.end(), -7.f);
      rng.fill_normal(out.data(), len, start, 0.5f, 0.02f);
      int64_t differ = 0;
      for (int64_t i = 0; i < len; ++i) {
        differ += out[size_t(i)] != rng.normal(start + uint64_t(i)) * 0.02f + 0.5f;
      }
      EXPECT_EQ(differ, 0) << "start " << start << ", " << len << " elements";
      EXPECT_EQ(out[size_t(len)], -7.f) << "wrote past the end";
    }
  }
}

TEST(Philox, StreamsAndSeedsDiffer) {
  Philox a(1, stream_id("a")), b(1, stream_id("b")), c(2, stream_id("a"));
  int same_ab = 0, same_ac = 0;
  for (uint64_t i = 0; i < 1000; ++i) {
    same_ab += a.bits(i) == b.bits(i);
    same_ac += a.bits(i) == c.bits(i);
  }
  EXPECT_LT(same_ab, 2);
  EXPECT_LT(same_ac, 2);
  EXPECT_NE(stream_id("h.0.attn"), stream_id("h.1.attn"));
}

TEST(Philox, UniformAndNormalMoments) {
  Philox rng(7, 3);
  const int n = 200000;
  double su = 0, su2 = 0, sn = 0, sn2 = 0, sn4 = 0;
  float umin = 1, umax = 0;
  for (int i = 0; i < n; ++i) {
    const double u = rng.uniform(uint64_t(i));
    umin = std::min(umin, float(u));
    umax = std::max(umax, float(u));
    su += u;
    su2 += u * u;
    const double z = rng.normal(uint64_t(i));
    ASSERT_TRUE(std::isfinite(z));
    sn += z;
    sn2 += z * z;
    sn4 += z * z * z * z;
  }
  EXPECT_GE(umin, 0.f);
  EXPECT_LT(umax, 1.f);
  // Standard errors: mean(u) 0.5 ± 0.0006, var(u) 1/12; normal mean 0 ± 0.0022, var 1 ± 0.003.
  EXPECT_NEAR(su / n, 0.5, 0.003);
  EXPECT_NEAR(su2 / n - (su / n) * (su / n), 1.0 / 12.0, 0.002);
  EXPECT_NEAR(sn / n, 0.0, 0.011);
  EXPECT_NEAR(sn2 / n, 1.0, 0.016);
  EXPECT_NEAR(sn4 / n, 3.0, 0.1);  // kurtosis of a normal
}

}  // namespace
}  // namespace nuri
