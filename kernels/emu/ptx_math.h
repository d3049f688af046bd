// 16-bit float decoding for the emulated tensor-core instructions. Internal to kernels/emu.
#pragma once

#include <cstdint>
#include <cstring>

namespace nuri::emu {

/// The value of a bf16 (bits << 16 is the f32) or IEEE f16 bit pattern, exactly.
inline float half_to_float(uint16_t bits, bool bf16) {
  uint32_t u;
  if (bf16) {
    u = uint32_t(bits) << 16;
  } else {
    const uint32_t sign = uint32_t(bits & 0x8000u) << 16;
    uint32_t exp = (bits >> 10) & 0x1fu, man = bits & 0x3ffu;
    if (exp == 0x1f) {
      u = sign | 0x7f800000u | (man << 13);  // inf / NaN
    } else if (exp != 0) {
      u = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
      u = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        man <<= 1;
        ++e;
      } while (!(man & 0x400u));
      u = sign | (uint32_t(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace nuri::emu
