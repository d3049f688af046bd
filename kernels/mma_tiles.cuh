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

// Each layout also has shift(at(r, c), dr, dc) = at(r + dr, c + dc) for c 0 or 8, dr a multiple
// of 8 and dc a multiple of 16 (the fragment loads' lanes and fragments). A fragment load then
// takes its lane's offset once, and each unrolled (dr, dc) costs an add of immediates and, in the
// swizzled layouts, one XOR with a constant, where at(r + dr, c + dc) would XOR a lane-dependent
// value with one constant per dc and keep each result in a register across the loop.

/// Row-major with `ld` elements a row (padding included).
struct RowMajor {
  int ld;
  __device__ __forceinline__ int operator()(int r, int c) const { return r * ld + c; }
  __device__ __forceinline__ int shift(int off, int dr, int dc) const { return off + dr * ld + dc; }
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
  /// (r >> 1) % 4 is unchanged by dr; dc's chunk bits flip the XOR's.
  __device__ __forceinline__ int shift(int off, int dr, int dc) const {
    return (off ^ (dc & 24)) + dr * 32 + (dc & ~31);
  }
};

/// Rows of kCols 16-bit elements (a multiple of 64: 128-byte lines) with no padding, 16-byte
/// chunks XOR-swizzled within each line: chunk c of row r sits at chunk c ^ (r % 8) (the low 3
/// bits of c; a 256-byte row has two lines, each permuted alike). Any 8 consecutive rows read at
/// one logical chunk (an ldmatrix matrix, plain or transposed) land in 8 distinct 16-byte bank
/// groups, and so do the 8 chunks of a line that a quarter-warp of 16-byte cp.async writes.
/// Padding each row by 16 bytes is conflict-free too, but takes 1/8 (D 64) or 1/16 (D 128) more
/// shared memory; the attention forwards' tiles where that lets more blocks share an SM (the
/// 128-row forward's 32-key tiles, the 64-row forward at D 128 on 100 KiB GPUs) use this. Row
/// starts stay 16-byte aligned, and so does every chunk.
template <int kCols>
struct Swizzle128B {
  static_assert(kCols % 64 == 0, "whole 128-byte lines of 16-bit elements");
  __device__ __forceinline__ int operator()(int r, int c) const {
    return r * kCols + ((c >> 3 ^ (r & 7)) << 3) + (c & 7);
  }
  /// r % 8 is unchanged by dr; dc's low 3 chunk bits flip the XOR's, its higher ones add.
  __device__ __forceinline__ int shift(int off, int dr, int dc) const {
    return (off ^ xor_bits(dc)) + add(dr, dc);
  }
  __device__ __forceinline__ static int xor_bits(int dc) { return dc & 56; }
  __device__ __forceinline__ int add(int dr, int dc) const { return dr * kCols + (dc & ~63); }
  /// load_x4 may XOR the byte address of a lane's element (a tile starting 128-byte aligned):
  /// the chunk bits are the same bits of the address.
  static constexpr bool kXorAddress = true;
};

/// One ldmatrix.x4 (transposed with kTrans) of the 16 × 16 block of s (layout `at`) at rows r0..,
/// columns c0..: this lane gives the address of the block's row r, column c (0 or 8). The
/// fragment loads below choose (r, c) so that the 4 matrices land in their operand's register
/// order. Each (r0, c0) costs immediates after unrolling (at's shift); under the emulator it is
/// checked against at() itself, so every use the tests reach keeps shift's contract.
template <bool kTrans, class T, class L>
__device__ __forceinline__ void load_x4(uint32_t (&m)[4], const T* s, L at, int r, int c, int r0,
                                        int c0) {
  constexpr bool kXorAddress = requires { L::kXorAddress; };
#if defined(NURI_CUDA_EMULATION)
  const int off = at.shift(at(r, c), r0, c0);
  NURI_CHECK(off == at(r + r0, c + c0), "tile layout: (", r, ", ", c, ") shifted by (", r0, ", ",
             c0, ") is outside shift's contract");
  NURI_CHECK(!kXorAddress || reinterpret_cast<uintptr_t>(s) % 128 == 0,
             "a swizzled tile must start 128-byte aligned (its XOR acts on the address)");
  ldmatrix<4, kTrans>(m, s + off);
#else
  if constexpr (kXorAddress) {
    // The XOR on the lane's address, at each load (xor_in_place), then the adds: with r0 and c0
    // constants after unrolling, one LOP3 (shared by the loads of one XOR constant) and an LDSM
    // with an immediate offset.
    const uint32_t a =
        xor_in_place(smem_address(s + at(r, c)), uint32_t(sizeof(T)) * uint32_t(at.xor_bits(c0)));
    ldmatrix_at<4, kTrans>(m, a + uint32_t(sizeof(T)) * uint32_t(at.add(r0, c0)));
  } else {
    ldmatrix<4, kTrans>(m, s + at.shift(at(r, c), r0, c0));
  }
#endif
}

/// A fragment (16 × 16) of a tile s[m][k] in layout `at`: rows m0.., columns k0...
template <class T, class L>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* s, L at, int m0, int k0) {
  const int l = lane_id();
  load_x4<false>(a, s, at, l % 16, (l / 16) * 8, m0, k0);
}
template <class T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* s, int ld, int m0, int k0) {
  load_a(a, s, RowMajor{ld}, m0, k0);
}

/// A fragment (16 × 16) of A = Mᵀ where M is stored row-major as s[k][m]: rows m0.. of A
/// (columns of s), columns k0.. of A (rows of s).
template <class T, class L>
__device__ __forceinline__ void load_a_trans(uint32_t (&a)[4], const T* s, L at, int m0, int k0) {
  const int l = lane_id(), j = l / 8;
  load_x4<true>(a, s, at, (j / 2) * 8 + l % 8, (j % 2) * 8, k0, m0);
}
template <class T>
__device__ __forceinline__ void load_a_trans(uint32_t (&a)[4], const T* s, int ld, int m0, int k0) {
  load_a_trans(a, s, RowMajor{ld}, m0, k0);
}

/// B fragments of two 8-column blocks (n0 and n0 + 8; k rows k0..k0+15) where B [k][n] is stored
/// transposed as s[n][k] in layout `at` (e.g. K [key][d] for S = Q·Kᵀ). b[0], b[1] are the
/// operand of column block n0; b[2], b[3] of n0 + 8.
template <class T, class L>
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const T* s, L at, int n0, int k0) {
  const int l = lane_id(), j = l / 8;
  load_x4<false>(b, s, at, (j / 2) * 8 + l % 8, (j % 2) * 8, n0, k0);
}
template <class T>
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const T* s, int ld, int n0, int k0) {
  load_b_nk(b, s, RowMajor{ld}, n0, k0);
}

/// As load_b_nk where B [k][n] is stored row-major as s[k][n] (e.g. V [key][d] for O = P·V).
template <class T, class L>
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const T* s, L at, int k0, int n0) {
  const int l = lane_id(), j = l / 8;
  load_x4<true>(b, s, at, (j % 2) * 8 + l % 8, (j / 2) * 8, k0, n0);
}
template <class T>
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const T* s, int ld, int k0, int n0) {
  load_b_kn(b, s, RowMajor{ld}, k0, n0);
}

}  // namespace nuri::kernels::tc
