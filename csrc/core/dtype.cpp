// DType names and sizes, and IEEE binary16 conversion (bf16 is inline in the header).
#include "nuri/core/dtype.h"

#include "nuri/core/error.h"

namespace nuri {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::bf16: return 2;
    case DType::f16: return 2;
    case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::u16: return 2;
    case DType::u32: return 4;
  }
  NURI_ASSERT(false, "unknown dtype ", int(t));
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::u16: return "u16";
    case DType::u32: return "u32";
  }
  NURI_ASSERT(false, "unknown dtype ", int(t));
}

DType dtype_from_name(const std::string& name) {
  for (DType t : {DType::f32, DType::bf16, DType::f16, DType::i32, DType::i64, DType::u16,
                  DType::u32}) {
    if (name == dtype_name(t)) return t;
  }
  NURI_CHECK(false, "unknown dtype '", name, "'; expected one of f32, bf16, f16, i32, i64, u16, u32");
}

bool dtype_is_float(DType t) { return t == DType::f32 || t == DType::bf16 || t == DType::f16; }

f16_t f32_to_f16(float f) {
  const uint32_t u = f32_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return f16_t{uint16_t(sign | 0x7e00u | ((abs >> 13) & 0x3ffu))};  // NaN
  if (abs >= 0x477ff000u) return f16_t{uint16_t(sign | 0x7c00u)};  // rounds to >= 65520: inf
  const int32_t exp = int32_t(abs >> 23) - 127;
  if (exp >= -14) {
    // Normal half: keep 10 mantissa bits, round the 13 dropped bits to nearest even. A carry
    // out of the mantissa correctly bumps the exponent.
    uint32_t h = ((uint32_t(exp + 15)) << 10) | ((abs >> 13) & 0x3ffu);
    const uint32_t rest = abs & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
    return f16_t{uint16_t(sign | h)};
  }
  if (exp < -25) return f16_t{sign};  // below half the smallest subnormal: zero
  // Subnormal half: value = m * 2^-24 with m = round(abs_value * 2^24).
  const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;  // 24-bit significand, value = mant*2^(exp-23)
  const int shift = -exp - 1;                           // mant >> (shift) gives units of 2^-24
  const uint32_t m = mant >> shift;
  const uint32_t rest = mant & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  uint32_t h = m;
  if (rest > half || (rest == half && (h & 1u))) ++h;
  return f16_t{uint16_t(sign | h)};
}

float f16_to_f32(f16_t h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  const uint32_t exp = (h.bits >> 10) & 0x1fu;
  const uint32_t mant = h.bits & 0x3ffu;
  if (exp == 0x1f) return f32_from_bits(sign | 0x7f800000u | (mant << 13));
  if (exp != 0) return f32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
  // zero or subnormal: mant * 2^-24, exact in f32
  const float v = float(mant) * 5.9604644775390625e-08f;
  return sign ? -v : v;
}

}  // namespace nuri
