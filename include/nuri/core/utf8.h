// Well-formed UTF-8 (Unicode's Table 3-7: no overlong forms, surrogates or code points past
// U+10FFFF), scanned one sequence at a time: what settings refuse and generated text replaces.
#pragma once

#include <cstddef>
#include <string>

namespace nuri {

/// The sequence that starts at p (n > 0 bytes left): its length as the lead byte says (0 when no
/// sequence starts with it) and how many of its first bytes are well-formed (length when all).
struct Utf8Sequence {
  int length = 0, valid = 0;
};

inline Utf8Sequence utf8_sequence(const unsigned char* p, size_t n) {
  const unsigned char c = p[0];
  Utf8Sequence s;
  unsigned char lo = 0x80, hi = 0xBF;  // the second byte's range
  if (c < 0x80) s.length = 1;
  else if (c >= 0xC2 && c <= 0xDF) s.length = 2;
  else if (c == 0xE0) s.length = 3, lo = 0xA0;
  else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) s.length = 3;
  else if (c == 0xED) s.length = 3, hi = 0x9F;
  else if (c == 0xF0) s.length = 4, lo = 0x90;
  else if (c >= 0xF1 && c <= 0xF3) s.length = 4;
  else if (c == 0xF4) s.length = 4, hi = 0x8F;
  s.valid = s.length ? 1 : 0;
  while (s.valid > 0 && s.valid < s.length && size_t(s.valid) < n) {
    const unsigned char b = p[s.valid];
    if (s.valid == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) break;
    ++s.valid;
  }
  return s;
}

/// The offset of the first byte of `s` that is not part of well-formed UTF-8, or npos.
inline size_t first_invalid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0; i < s.size();) {
    const Utf8Sequence q = utf8_sequence(p + i, s.size() - i);
    if (q.length == 0 || q.valid < q.length) return i;
    i += size_t(q.length);
  }
  return std::string::npos;
}

}  // namespace nuri
