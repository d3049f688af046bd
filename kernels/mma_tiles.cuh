// Tensor-core fragment helpers shared by the mma kernels (attention, matmul): lane coordinates,
// the mma dispatch on the input type, operand packing, and the ldmatrix fragment loads from
// row-major shared-memory tiles. Fragment layouts are those of mma.sync m16n8k16
// (../shared/EMULATION.md): a warp's lane l has g = l / 4 and t = l % 4, and accumulator
// acc[nb][i] of an m16 × (8·NB) tile holds row g + 8·(i / 2), column 8·nb + 2t + (i % 2).
#pragma once

#include <cstring>
#include <type_traits>

#include "common.cuh"
#include "ptx.cuh"

namespace nuri::kernels::tc {

/// Lane coordinates inside the mma fragments.
__device__ __forceinline__ int lane_id() { return int(threadIdx.x) % kWarpSize; }
__device__ __forceinline__ int warp_id() { return int(threadIdx.x) / kWarpSize; }

/// d = a·b + d on tensor cores for the input type T (bf16 or f16), f32 accumulate.
template <class T>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  const uint32_t b[2] = {b0, b1};
  if constexpr (std::is_same_v<T, __half>) {
    mma_f16_m16n8k16(d, a, b, d);
  } else {
    mma_bf16_m16n8k16(d, a, b, d);
  }
}

/// Two floats rounded to T and packed as one 32-bit operand register (lo in the low half).
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  const T l = from_float<T>(lo), h = from_float<T>(hi);
  uint16_t bl, bh;
  memcpy(&bl, &l, 2);
  memcpy(&bh, &h, 2);
  return uint32_t(bl) | (uint32_t(bh) << 16);
}

/// The A operand (16 × 16, k block kb) for the next product from an m16 × n accumulator tile:
/// the accumulator's column blocks 2·kb and 2·kb + 1 are exactly the A fragment's two halves.
template <class T, int NB>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&acc)[NB][4], int kb) {
  a[0] = pack2<T>(acc[2 * kb][0], acc[2 * kb][1]);
  a[1] = pack2<T>(acc[2 * kb][2], acc[2 * kb][3]);
  a[2] = pack2<T>(acc[2 * kb + 1][0], acc[2 * kb + 1][1]);
  a[3] = pack2<T>(acc[2 * kb + 1][2], acc[2 * kb + 1][3]);
}

/// Four adjacent columns of row g + 8·half of the 16 that accumulator column blocks nb and
/// nb + 1 cover, for a store of 4 elements a lane: lanes t and t ^ 1 trade one pair (a shuffle
/// of 2 floats) so that t = 0, 2 hold columns 0-3, 4-7 (block nb) and t = 1, 3 hold 8-11, 12-15
/// (block nb + 1). A warp's store then writes 32 contiguous bytes of each of its 8 rows (whole
/// sectors for 16-bit outputs) where one store a column block writes 16. Returns the first
/// column's offset within the 16. Every lane of the warp must call it (it shuffles).
template <int NB>
__device__ __forceinline__ int acc_quad(float (&v)[4], const float (&acc)[NB][4], int nb,
                                        int half) {
  const int t = lane_id() % 4;
  const bool odd = t & 1;
  const int e = 2 * half;
  const float r0 = __shfl_xor_sync(kFullMask, odd ? acc[nb][e] : acc[nb + 1][e], 1);
  const float r1 = __shfl_xor_sync(kFullMask, odd ? acc[nb][e + 1] : acc[nb + 1][e + 1], 1);
  v[0] = odd ? r0 : acc[nb][e];
  v[1] = odd ? r1 : acc[nb][e + 1];
  v[2] = odd ? acc[nb + 1][e] : r0;
  v[3] = odd ? acc[nb + 1][e + 1] : r1;
  return (t & 1) * 8 + (t & 2) * 2;
}

// ---- shared-memory tile layouts: element offset of (row, col) -----------------------------------

/// Row-major with `ld` elements a row (padding included).
struct RowMajor {
  int ld;
  __device__ __forceinline__ int operator()(int r, int c) const { return r * ld + c; }
};

/// Rows of 32 16-bit elements (64 bytes) with no padding, 16-byte chunks XOR-swizzled: chunk c
/// of row r sits at chunk c ^ ((r / 2) % 4). Two rows fill a 128-byte bank line, and the 8 rows
/// one ldmatrix matrix reads (or the 2 rows × 4 chunks a quarter-warp of 16-byte cp.async
/// writes) land in 8 distinct 16-byte bank groups. Padding cannot do both for 64-byte rows: a
/// stride that keeps 8 rows apart (80 bytes) puts two consecutive rows' chunks in one bank group.
struct Swizzle64B {
  __device__ __forceinline__ int operator()(int r, int c) const {
    return r * 32 + ((((c >> 3) ^ (r >> 1)) & 3) << 3) + (c & 7);
  }
};

/// A fragment (16 × 16) of a tile s[m][k] in layout `at`: rows m0.., columns k0...
template <class T, class L>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* s, L at, int m0, int k0) {
  const int l = lane_id();
  ldmatrix<4, false>(a, s + at(m0 + l % 16, k0 + (l / 16) * 8));
}
template <class T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* s, int ld, int m0, int k0) {
  load_a(a, s, RowMajor{ld}, m0, k0);
}

/// A fragment (16 × 16) of A = Mᵀ where M is stored row-major as s[k][m]: rows m0.. of A
/// (columns of s), columns k0.. of A (rows of s).
template <class T>
__device__ __forceinline__ void load_a_trans(uint32_t (&a)[4], const T* s, int ld, int m0,
                                             int k0) {
  const int l = lane_id(), j = l / 8, r = l % 8;
  ldmatrix<4, true>(a, s + (k0 + (j / 2) * 8 + r) * ld + m0 + (j % 2) * 8);
}

/// B fragments of two 8-column blocks (n0 and n0 + 8; k rows k0..k0+15) where B [k][n] is stored
/// transposed as s[n][k] in layout `at` (e.g. K [key][d] for S = Q·Kᵀ). b[0], b[1] are the
/// operand of column block n0; b[2], b[3] of n0 + 8.
template <class T, class L>
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const T* s, L at, int n0, int k0) {
  const int l = lane_id(), j = l / 8, r = l % 8;
  ldmatrix<4, false>(b, s + at(n0 + (j / 2) * 8 + r, k0 + (j % 2) * 8));
}
template <class T>
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const T* s, int ld, int n0, int k0) {
  load_b_nk(b, s, RowMajor{ld}, n0, k0);
}

/// As load_b_nk where B [k][n] is stored row-major as s[k][n] (e.g. V [key][d] for O = P·V).
template <class T>
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const T* s, int ld, int k0, int n0) {
  const int l = lane_id(), j = l / 8, r = l % 8;
  ldmatrix<4, true>(b, s + (k0 + (j % 2) * 8 + r) * ld + n0 + (j / 2) * 8);
}

}  // namespace nuri::kernels::tc
