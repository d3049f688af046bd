// Building blocks shared by the attention kernels: tile loads with cp.async and the pipeline
// step, quad reductions, the forward's mask and online softmax and the accumulator store; the
// tensor-core fragment helpers (and the fragment layouts) are those of mma_tiles.cuh.
// Shared-memory tiles of D-wide rows are padded (row stride attn_row_stride(D) = D + 8) or
// swizzled (tc::Swizzle128B<D>): attn::tile_layout.
#pragma once

#include <cmath>

#include "attention.h"
#include "common.cuh"
#include "mma_tiles.cuh"
#include "ptx.cuh"

namespace nuri::kernels::attn {

// The generic fragment helpers (lane_id, mma, pack2, load_a, ...) of mma_tiles.cuh.
using namespace ::nuri::kernels::tc;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

/// The layout of a kernel's Q, K, V and dO tiles (attention.h says which kernels swizzle).
template <int D, bool kSwizzled>
__device__ __forceinline__ constexpr auto tile_layout() {
  if constexpr (kSwizzled) {
    return Swizzle128B<D>{};
  } else {
    return RowMajor{attn_row_stride(D)};
  }
}

/// Issues cp.async copies of a kRows × D tile from global rows g + r·g_stride (r < valid_rows)
/// into s (layout `at`, tile_layout); rows at or past valid_rows are zero-filled without reading
/// global memory (cp.async's ignore-src: their addresses, past the tensor, are formed, never
/// read). Every thread of a kThreads block calls it; the caller commits. Each thread
/// copies the same column chunk of rows kRowStep apart (a multiple of 8, so a swizzled chunk
/// keeps its place in each), and the loop unrolls into one address add and one cp.async per
/// chunk.
template <class T, int D, int kRows, int kThreads, class L = RowMajor>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t g_stride, int valid_rows,
                                          L at = RowMajor{attn_row_stride(D)}) {
  constexpr int kChunks = D * int(sizeof(T)) / 16;  // 16-byte chunks per row
  constexpr int kElems = 16 / int(sizeof(T));
  constexpr int kRowStep = kThreads / kChunks;
  constexpr int kIters = kRows * kChunks / kThreads;
  static_assert(kThreads % kChunks == 0 && kRows % kRowStep == 0,
                "every thread copies the same chunk of kIters rows");
  static_assert(kRowStep % 8 == 0, "rows kRowStep apart share their swizzle");
  const int r0 = int(threadIdx.x) / kChunks, c = int(threadIdx.x) % kChunks * kElems;
  T* dst = s + at(r0, c);
  const int row_step = at(kRowStep, 0) - at(0, 0);  // elements between rows kRowStep apart
  const T* src = g + r0 * g_stride + c;
  const int64_t src_step = kRowStep * g_stride;
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    cp_async_16_or_zero(dst + it * row_step, src + it * src_step, r0 + it * kRowStep >= valid_rows);
  }
}

/// The top of step `it` of a 2-stage cp.async pipeline over n_iter tiles: issue(it + 1) loads
/// the next tile into the other stage and commits its group (when there is a next tile), then
/// this tile's group is waited for and a barrier makes it visible to every thread. The caller
/// issues tile 0 before the loop and ends each step with a barrier before the stage is reused.
template <class Issue>
__device__ __forceinline__ void pipeline_step(int it, int n_iter, Issue&& issue) {
  if (it + 1 < n_iter) {
    issue(it + 1);
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
}

/// Max and sum over the 4 lanes of a quad (the lanes holding one accumulator row).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(kFullMask, v, 1));
  return fmaxf(v, __shfl_xor_sync(kFullMask, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(kFullMask, v, 1);
  return v + __shfl_xor_sync(kFullMask, v, 2);
}

/// The query block a query-major block owns (grid: query blocks of kM rows, heads, batch; the
/// heaviest causal blocks scheduled first) and the key tiles of kN it walks: [first_tile,
/// n_tiles) (causal blocks stop at the diagonal; with packed documents they start at the tile
/// holding the document start of the block's first row, the block's earliest).
struct QueryBlock {
  int q0, h, b, kvh, first_tile, n_tiles;
};
template <bool kCausal, int kM, int kN, class Params>
__device__ __forceinline__ QueryBlock query_tile(const Params& p, int q_block, int h, int b) {
  QueryBlock r;
  r.q0 = q_block * kM;
  r.h = h, r.b = b;
  r.kvh = r.h / (p.heads / p.kv_heads);
  const int key_end = kCausal && r.q0 + kM < p.seq ? r.q0 + kM : p.seq;
  r.n_tiles = (key_end + kN - 1) / kN;
  r.first_tile =
      p.key_start != nullptr ? max(0, ld_global(p.key_start + int64_t(b) * p.seq + r.q0)) / kN : 0;
  return r;
}
template <bool kCausal, int kM, int kN, class Params>
__device__ __forceinline__ QueryBlock query_block(const Params& p) {
  return query_tile<kCausal, kM, kN>(p, int(gridDim.x) - 1 - int(blockIdx.x), int(blockIdx.y),
                                     int(blockIdx.z));
}
/// A persistent block's work tile w of n_q_blocks · heads · batch, the heaviest causal query
/// blocks (the last) first across the whole grid.
template <bool kCausal, int kM, int kN, class Params>
__device__ __forceinline__ QueryBlock work_tile(const Params& p, int w, int n_q_blocks) {
  const int per_qb = p.heads * p.batch;
  const int rest = w % per_qb;
  return query_tile<kCausal, kM, kN>(p, n_q_blocks - 1 - w / per_qb, rest % p.heads,
                                     rest / p.heads);
}

/// Sets to `masked` the scores of keys at or past `seq`, causally past their row, and before
/// their row's first key (`first`: its document's start, 0 without documents): `s` holds a
/// warp's rows row_lo and row_lo + 8 (accumulator rows g, g + 8, first[0] and first[1]) against
/// keys k0 + 8·nb + 2t + i.
template <bool kCausal, int NS>
__device__ __forceinline__ void mask_scores(float (&s)[NS][4], int k0, int row_lo, int seq,
                                            const int (&first)[2], float masked) {
  const int t = lane_id() % 4;
#pragma unroll
  for (int nb = 0; nb < NS; ++nb) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int key = k0 + nb * 8 + 2 * t + (i % 2);
      const int row = row_lo + 8 * (i / 2);
      if (key >= seq || (kCausal && key > row) || key < first[i / 2]) s[nb][i] = masked;
    }
  }
}

/// Element t of row b of a [B, T] document bound (AttentionParams::key_start or query_end), that
/// of the last position for t past the sequence (so a tile's bounds stay nondecreasing to its
/// last row), or `none` without documents.
__device__ __forceinline__ int document_bound(const int* bound, int b, int t, int seq, int none) {
  return bound != nullptr ? ld_global(bound + int64_t(b) * seq + min(t, seq - 1)) : none;
}

/// One key tile of the online softmax for a warp's 16 rows: `s` holds the raw scores of the
/// accumulator rows g and g + 8 (lane_id() / 4) and becomes P = exp2(s·c − m), with c =
/// scale_log2 and m the running row max of s·c; this thread's share of the row sums is updated,
/// and `alpha` is what the output accumulated from earlier tiles must be scaled by
/// (rescale_rows). The max of s·c is c times the max of the raw scores, or times their min when
/// c < 0 (`c_negative`); masked scores must lose that comparison (−inf, or +inf when c_negative).
/// A row that has seen only masked keys keeps max −inf and gets P = 0.
template <int NS>
__device__ __forceinline__ void softmax_tile(float (&s)[NS][4], float (&row_max)[2],
                                             float (&row_sum)[2], float (&alpha)[2],
                                             float scale_log2, bool c_negative) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float raw;
    if (!c_negative) {
      raw = -INFINITY;
#pragma unroll
      for (int nb = 0; nb < NS; ++nb) {
        raw = fmaxf(raw, fmaxf(s[nb][2 * half], s[nb][2 * half + 1]));
      }
      raw = quad_max(raw);
    } else {
      raw = INFINITY;
#pragma unroll
      for (int nb = 0; nb < NS; ++nb) {
        raw = fminf(raw, fminf(s[nb][2 * half], s[nb][2 * half + 1]));
      }
      raw = -quad_max(-raw);
    }
    const float mx = fmaxf(row_max[half], raw * scale_log2);
    const float base = mx == -INFINITY ? 0.f : mx;
    // Exactly 1 where the max held, so that rescale_rows may skip the row (the exponential is
    // taken either way: one per row, a select instead of a branch); 0 while row_max was -inf
    // below a finite max.
    const float a = ex2_approx(row_max[half] - base);
    alpha[half] = mx == row_max[half] ? 1.f : a;
    row_max[half] = mx;
    float sum = 0.f;
#pragma unroll
    for (int nb = 0; nb < NS; ++nb) {
      s[nb][2 * half] = ex2_approx(fmaf(s[nb][2 * half], scale_log2, -base));
      s[nb][2 * half + 1] = ex2_approx(fmaf(s[nb][2 * half + 1], scale_log2, -base));
      sum += s[nb][2 * half] + s[nb][2 * half + 1];
    }
    row_sum[half] = row_sum[half] * alpha[half] + sum;
  }
}

/// Scales accumulator rows g and g + 8 of `o` by alpha[0] and alpha[1]; skipped by the whole
/// warp (one vote) where every row's max held, alpha 1 (exactly: softmax_tile), so the skip
/// changes no bit. Call it with the whole warp.
template <int NO>
__device__ __forceinline__ void rescale_rows(float (&o)[NO][4], const float (&alpha)[2]) {
  if (!__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) return;
#pragma unroll
  for (int nb = 0; nb < NO; ++nb) {
    o[nb][0] *= alpha[0];
    o[nb][1] *= alpha[0];
    o[nb][2] *= alpha[1];
    o[nb][3] *= alpha[1];
  }
}

/// The end of the online softmax: lse (natural log, of the rows g and g + 8 from row_lo, written
/// by lane t = 0 for rows < seq at lse_row[row]) and the 1 / rowsum each output row is scaled by
/// (0 for a row with no visible key, whose lse is −inf).
__device__ __forceinline__ void softmax_finish(float (&inv)[2], const float (&row_max)[2],
                                               const float (&row_sum)[2], float* lse_row,
                                               int row_lo, int seq) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const float sum = quad_sum(row_sum[half]);
    inv[half] = sum > 0.f ? 1.f / sum : 0.f;
    const int row = row_lo + 8 * half;
    if (lane_id() % 4 == 0 && row < seq) {
      lse_row[row] = sum > 0.f ? (row_max[half] + log2f(sum)) * kLn2 : -INFINITY;
    }
  }
}

/// Stores a warp's m16 × (8·NB) f32 accumulator, times `mul`, as T into rows row0.. of a
/// [rows][D] view with row stride `stride` (elements, rows 16-byte aligned); rows at or past
/// `valid_rows` are skipped. Four adjacent elements a lane (acc_quad): 32 bytes of a row per
/// warp-wide store.
template <class T, int NB>
__device__ __forceinline__ void store_acc(T* g, int64_t stride, int row0, int valid_rows,
                                          const float (&acc)[NB][4], float mul0, float mul1) {
  static_assert(NB % 2 == 0, "column blocks are stored in pairs");
  const int rg = lane_id() / 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row0 + rg + 8 * half;
    const float mul = half ? mul1 : mul0;
    T* dst = g + int64_t(row) * stride;
#pragma unroll
    for (int nb = 0; nb < NB; nb += 2) {
      float v[4];
      const int col = 8 * nb + acc_quad(v, acc, nb, half);  // every lane shuffles
      if (row >= valid_rows) continue;
      Pack<T, 4> out;
#pragma unroll
      for (int e = 0; e < 4; ++e) out.v[e] = from_float<T>(v[e] * mul);
      st_global(reinterpret_cast<Pack<T, 4>*>(dst + col), out);
    }
  }
}

}  // namespace nuri::kernels::attn
