// Element types and the bf16/f16 <-> f32 conversions (round to nearest, ties to even; NaN stays
// NaN). The conversions are bit-exact and host-only here; CUDA code uses cuda_bf16.h/cuda_fp16.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace nuri {

enum class DType : uint8_t { f32, bf16, f16, i32, i64, u16, u32 };

/// Size of one element in bytes.
size_t dtype_size(DType t);
/// Lower-case name: "f32", "bf16", ...
const char* dtype_name(DType t);
/// Parses a name produced by dtype_name; throws nuri::Error on anything else.
DType dtype_from_name(const std::string& name);
bool dtype_is_float(DType t);

/// C++ type -> DType, for typed accessors (Tensor::data<T>()).
template <typename T>
struct DTypeOf;

struct bf16_t {
  uint16_t bits;
};
struct f16_t {
  uint16_t bits;
};

template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::f32;
};
template <>
struct DTypeOf<bf16_t> {
  static constexpr DType value = DType::bf16;
};
template <>
struct DTypeOf<f16_t> {
  static constexpr DType value = DType::f16;
};
template <>
struct DTypeOf<int32_t> {
  static constexpr DType value = DType::i32;
};
template <>
struct DTypeOf<int64_t> {
  static constexpr DType value = DType::i64;
};
template <>
struct DTypeOf<uint16_t> {
  static constexpr DType value = DType::u16;
};
template <>
struct DTypeOf<uint32_t> {
  static constexpr DType value = DType::u32;
};

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// f32 -> bf16, round to nearest even. NaN maps to a quiet NaN with the sign kept.
inline bf16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{uint16_t((u >> 16) | 0x0040u)};
  uint32_t lsb = (u >> 16) & 1u;
  u += 0x7fffu + lsb;  // carries into the exponent give the correct overflow to inf
  return bf16_t{uint16_t(u >> 16)};
}
inline float bf16_to_f32(bf16_t h) { return f32_from_bits(uint32_t(h.bits) << 16); }

/// f32 -> IEEE binary16, round to nearest even, with subnormals, overflow to inf, NaN kept.
f16_t f32_to_f16(float f);
float f16_to_f32(f16_t h);

}  // namespace nuri
