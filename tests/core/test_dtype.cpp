// bf16 and f16 conversions: every 16-bit pattern round-trips, and f32 -> 16-bit rounds to
// nearest even (checked against the compiler's _Float16 and against an exact bf16 reference).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "nuri/core/dtype.h"
#include "nuri/core/error.h"
#include "nuri/core/rng.h"

namespace nuri {
namespace {

TEST(DType, SizesAndNames) {
  EXPECT_EQ(dtype_size(DType::f32), 4u);
  EXPECT_EQ(dtype_size(DType::bf16), 2u);
  EXPECT_EQ(dtype_size(DType::i64), 8u);
  for (DType t : {DType::f32, DType::bf16, DType::f16, DType::i32, DType::i64, DType::u16, DType::u32}) {
    EXPECT_EQ(dtype_from_name(dtype_name(t)), t);
  }
  EXPECT_THROW(dtype_from_name("fp8"), Error);
}

// The bf16 nearest to f with ties to even, computed from the two neighbouring candidates.
uint16_t bf16_reference(float f) {
  const uint32_t u = f32_bits(f);
  const uint16_t lo = uint16_t(u >> 16), hi = uint16_t(lo + 1);
  const double dlo = std::abs(double(f) - double(f32_from_bits(uint32_t(lo) << 16)));
  const double dhi = std::abs(double(f32_from_bits(uint32_t(hi) << 16)) - double(f));
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return (lo & 1) ? hi : lo;
}

TEST(DType, Bf16RoundTripsEveryPatternAndRoundsToNearestEven) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = bf16_to_f32(bf16_t{uint16_t(b)});
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(f))));
      continue;
    }
    ASSERT_EQ(f32_to_bf16(f).bits, b);
  }
  Philox rng(5, 5);
  for (uint64_t i = 0; i < 200000; ++i) {
    const float f = f32_from_bits(rng.bits(i));
    if (!std::isfinite(f) || std::abs(f) > 3.3e38f) continue;
    ASSERT_EQ(f32_to_bf16(f).bits, bf16_reference(f)) << f;
  }
  // Exact ties: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 -> even (1); 1 + 3·2^-8 -> up.
  EXPECT_EQ(f32_to_bf16(1.f + 0.00390625f).bits, 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.f + 3 * 0.00390625f).bits, 0x3f82);
}

TEST(DType, F16MatchesTheCompilersConversion) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = f16_to_f32(f16_t{uint16_t(b)});
    _Float16 h;
    const uint16_t bits = uint16_t(b);
    std::memcpy(&h, &bits, 2);
    if (std::isnan(float(h))) {
      EXPECT_TRUE(std::isnan(f));
      continue;
    }
    ASSERT_EQ(f, float(h)) << std::hex << b;
    ASSERT_EQ(f32_to_f16(f).bits, bits) << std::hex << b;
  }
  Philox rng(6, 6);
  for (uint64_t i = 0; i < 400000; ++i) {
    // Cover the f16 range densely: exponents around [-30, 20].
    const float f = std::ldexp(rng.uniform(2 * i) * 2.f - 1.f, int(rng.bits(2 * i + 1) % 50) - 30);
    const _Float16 h = static_cast<_Float16>(f);
    uint16_t want;
    std::memcpy(&want, &h, 2);
    ASSERT_EQ(f32_to_f16(f).bits, want) << f;
  }
  EXPECT_EQ(f32_to_f16(65520.f).bits, 0x7c00);  // rounds to inf
  EXPECT_EQ(f32_to_f16(65519.f).bits, 0x7bff);  // largest finite
  EXPECT_EQ(f32_to_f16(std::ldexp(1.f, -25)).bits, 0x0000);  // tie at half the smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.5f, -25)).bits, 0x0001);
}

}  // namespace
}  // namespace nuri
