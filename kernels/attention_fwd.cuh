// Fused attention forward, FlashAttention-2 formulation: out = softmax(scale · Q Kᵀ) V and the
// per-row log-sum-exp, never materializing the T×T scores.
//
// A block of 4 warps owns 4 · kWarpRows query rows of one (b, h) (AttnFwdConfig: 64 or 128);
// warp w owns rows kWarpRows·w .. and keeps its 16- or 32-row output accumulator and its running
// row max / row sum in registers for the whole walk over key tiles, with Q's fragments (or, for
// 128-row blocks at D 128, reads them from Q's tile at each key tile). Key and value tiles of 64
// rows (or 32, for 128-row blocks on GPUs with 100 KiB of shared memory a SM) stream through one
// K and one V tile of shared memory (rows padded, or unpadded and swizzled where that lets
// more blocks share an SM: 32-key tiles, and 64-row blocks at D 128 on 100 KiB GPUs),
// each loading while tensor cores work on the other (V_j during S = Q K_jᵀ and the softmax,
// K_{j+1} during O += P V_j). Per
// tile: S = Q Kᵀ on tensor cores (K rows are B's columns: ldmatrix without transpose; each K
// fragment feeds the warp's one or two m16 row tiles), masking at the sequence end and the
// causal diagonal, an online softmax in the exp2 domain (scale·log2 e folded into one FMA per
// score), then O += P V with P taken straight from the S accumulator registers (rounded to the
// input type) and V through ldmatrix.trans. Causal blocks stop at the diagonal, a warp skips the
// tiles whose keys all lie past its rows, and the heaviest (last) query tiles are scheduled
// first.
#pragma once

#include <cmath>

#include "attention_common.cuh"

namespace nuri::kernels {

/// One block of the forward with AttnFwdConfig<D, kWarpRows, kBlockN, kSwizzled>.
template <class T, int D, bool kCausal, int kWarpRows, int kBlockN, bool kSwizzled>
__device__ __forceinline__ void attention_fwd_block(const AttentionParams<T>& p) {
  using Cfg = AttnFwdConfig<D, kWarpRows, kBlockN, kSwizzled>;
  constexpr int kM = Cfg::kBlockM, kN = Cfg::kBlockN, kThreads = Cfg::kThreads;
  constexpr int kMT = Cfg::kMTiles;  // m16 row tiles of a warp
  // The layout of the Q, K and V tiles (padded or swizzled) and its row stride.
  constexpr auto kAt = attn::tile_layout<D, Cfg::kSwizzled>();
  constexpr int kLd = attn_tile_ld(D, Cfg::kSwizzled);
  constexpr int kKSteps = D / 16;   // k blocks of Q·Kᵀ
  constexpr int kSBlocks = kN / 8;  // 8-key column blocks of S
  constexpr int kOBlocks = D / 8;   // 8-wide column blocks of O

  // One K tile and one V tile, FlashAttention-2's pipeline: V_j loads while S = Q K_jᵀ and the
  // softmax run, K_{j+1} while O += P V_j runs (half the shared memory of two full K/V stages,
  // so twice the blocks fit an SM where shared memory is what limits them). A 64-row Q tile
  // passes through the V tile on its way to registers, before the first V tile goes there; a
  // 128-row one has a place of its own.
  T* sK = dynamic_smem<T>();  // [kN][kLd]
  T* sV = sK + kN * kLd;      // [kN][kLd]
  T* sQ = Cfg::kQInV ? sV : sV + kN * kLd;

  const attn::QueryBlock blk = attn::query_block<kCausal, kM, kN>(p);
  const int q0 = blk.q0, h = blk.h, b = blk.b, kvh = blk.kvh, n_tiles = blk.n_tiles;
  const int warp = attn::warp_id(), lane = attn::lane_id();
  const int rg = lane / 4;          // accumulator row group
  const int w0 = warp * kWarpRows;  // the warp's first row in the block
  const int row_lo = q0 + w0 + rg;  // query index of accumulator rows rg, rg + 8 (row tile 0)
  // Q's fragments: swizzled, from the warp's first row of Q's tile (a runtime row offset added
  // after the XOR would cost an add a load); padded, the warp's rows are an offset like others.
  const T* sQw = Cfg::kSwizzled ? sQ + w0 * kLd : sQ;
  const int q_row0 = Cfg::kSwizzled ? 0 : w0;

  const T* gQ = p.q + b * p.q_s.b + int64_t(q0) * p.q_s.t + h * p.q_s.h;
  const T* gK = p.k + b * p.k_s.b + kvh * p.k_s.h;
  const T* gV = p.v + b * p.v_s.b + kvh * p.v_s.h;

  // Tile j of K or V, as one cp.async group (K_0's group also holds Q).
  auto issue = [&](T* dst, const T* g, int64_t stride, int j) {
    const int k0 = j * kN;
    attn::load_tile<T, D, kN, kThreads>(dst, g + int64_t(k0) * stride, stride, p.seq - k0, kAt);
    cp_async_commit();
  };
  // Packed documents: key tiles before the document of the block's first row are masked for
  // every row (its start is the block's smallest), so the walk starts at the tile holding it.
  const int j_first = blk.first_tile;
  attn::load_tile<T, D, kM, kThreads>(sQ, gQ, p.q_s.t, p.seq - q0, kAt);
  issue(sK, gK, p.k_s.t, j_first);

  // The scale is folded into one FMA per score: P = exp2(s·c − m) with c = scale·log2 e and m
  // the row max of s·c, taken as c times the max of the raw scores. That needs c > 0; a negative
  // scale flips Q's sign bits instead (S becomes −S and c becomes −c), once for fragments kept
  // in registers, at each read for fragments read from Q's tile.
  const bool flip = p.scale < 0.f;
  const float scale_log2 = (flip ? -p.scale : p.scale) * attn::kLog2e;
  auto flip_sign = [&](uint32_t (&a)[4]) {
    if (flip) {
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] ^= 0x80008000u;  // the sign of both 16-bit halves
    }
  };
  uint32_t rQ[Cfg::kQInRegs ? kMT : 1][Cfg::kQInRegs ? kKSteps : 1][4];
  float rO[kMT][kOBlocks][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int nb = 0; nb < kOBlocks; ++nb) {
      rO[mt][nb][0] = rO[mt][nb][1] = rO[mt][nb][2] = rO[mt][nb][3] = 0.f;
    }
  }
  // Running max (of scaled scores, log2 domain) and this thread's share of the row sum, for
  // rows rg and rg + 8 of each of the warp's row tiles.
  float rMax[kMT][2], rSum[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    rMax[mt][0] = rMax[mt][1] = -INFINITY;
    rSum[mt][0] = rSum[mt][1] = 0.f;
  }

  // Q (and K_0) landed; Q's fragments into registers, after which a Q tile in V's place is free
  // for V_0.
  cp_async_wait<0>();
  __syncthreads();
  if constexpr (Cfg::kQInRegs) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int ks = 0; ks < kKSteps; ++ks) {
        attn::load_a(rQ[mt][ks], sQw, kAt, q_row0 + 16 * mt, ks * 16);
        flip_sign(rQ[mt][ks]);
      }
    }
    if constexpr (Cfg::kQInV) __syncthreads();
  }

  // The first key of each of this thread's rows (its document's start; 0 without documents),
  // and of the warp's first row, the warp's smallest.
  int first_key[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      first_key[mt][half] =
          attn::document_bound(p.key_start, b, row_lo + 16 * mt + 8 * half, p.seq, 0);
    }
  }
  const int warp_first_key = attn::document_bound(p.key_start, b, q0 + w0, p.seq, 0);

  for (int j = j_first; j < n_tiles; ++j) {
    // K_j has landed (the only group in flight) and, after the barrier, every warp is done with
    // V_{j-1} (and, for the first tile, with a Q tile in V's place): V_j may take its place.
    if (j > j_first) {
      cp_async_wait<0>();
      __syncthreads();
    }
    issue(sV, gV, p.v_s.t, j);

    // Causally, a tile whose keys all lie past the warp's last row adds nothing to its rows, so
    // the warp skips its products (with one row tile a warp, every tile reaches its rows); so
    // does a tile whose keys all lie before the document of the warp's first row.
    const int k0 = j * kN;
    const bool active = (kMT == 1 || !kCausal || k0 <= q0 + w0 + kWarpRows - 1) &&
                        k0 + kN > warp_first_key;

    // P (S rounded to the input type) as the A operands of P V: half the registers of S, which
    // dies with the softmax (the K_{j+1} loads below take their addresses while P and O are
    // live).
    uint32_t rP[kMT][kN / 16][4];
    if (active) {
      // S = Q Kᵀ for this warp's rows and the tile's kN keys.
      float rS[kMT][kSBlocks][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int nb = 0; nb < kSBlocks; ++nb) {
          rS[mt][nb][0] = rS[mt][nb][1] = rS[mt][nb][2] = rS[mt][nb][3] = 0.f;
        }
      }
#pragma unroll
      for (int ks = 0; ks < kKSteps; ++ks) {
        uint32_t rA[kMT][4];  // Q's fragments for this k block (copies of registers are free)
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          if constexpr (Cfg::kQInRegs) {
#pragma unroll
            for (int i = 0; i < 4; ++i) rA[mt][i] = rQ[mt][ks][i];
          } else {
            attn::load_a(rA[mt], sQw, kAt, q_row0 + 16 * mt, ks * 16);
            flip_sign(rA[mt]);
          }
        }
#pragma unroll
        for (int nb = 0; nb < kSBlocks; nb += 2) {
          uint32_t rB[4];
          attn::load_b_nk(rB, sK, kAt, nb * 8, ks * 16);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            attn::mma<T>(rS[mt][nb], rA[mt], rB[0], rB[1]);
            attn::mma<T>(rS[mt][nb + 1], rA[mt], rB[2], rB[3]);
          }
        }
      }

      // Mask keys past the end, causally past the row, and before the row's document (only
      // tiles that reach any); online softmax: new row max, rescale what earlier tiles
      // accumulated, P = exp2(s - max) (the scale is positive here: a negative one flipped Q's
      // signs).
      const bool edge = k0 + kN > p.seq || (kCausal && k0 + kN - 1 > q0 + w0);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        if (edge || k0 < first_key[mt][1]) {  // the thread's later row starts last
          attn::mask_scores<kCausal>(rS[mt], k0, row_lo + 16 * mt, p.seq, first_key[mt],
                                     -INFINITY);
        }
        float alpha[2];
        attn::softmax_tile(rS[mt], rMax[mt], rSum[mt], alpha, scale_log2, /*c_negative=*/false);
        attn::rescale_rows(rO[mt], alpha);
#pragma unroll
        for (int kb = 0; kb < kN / 16; ++kb) attn::acc_to_a<T>(rP[mt][kb], rS[mt], kb);
      }
    }

    // V_j has landed and every warp is done with K_j: K_{j+1} loads while P V_j runs.
    cp_async_wait<0>();
    __syncthreads();
    if (j + 1 < n_tiles) issue(sK, gK, p.k_s.t, j + 1);

    // O += P V.
    if (active) {
#pragma unroll
      for (int kb = 0; kb < kN / 16; ++kb) {
#pragma unroll
        for (int nb = 0; nb < kOBlocks; nb += 2) {
          uint32_t rB[4];
          attn::load_b_kn(rB, sV, kAt, kb * 16, nb * 8);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            attn::mma<T>(rO[mt][nb], rP[mt][kb], rB[0], rB[1]);
            attn::mma<T>(rO[mt][nb + 1], rP[mt][kb], rB[2], rB[3]);
          }
        }
      }
    }
  }

  // out = O / rowsum; lse = ln(rowsum) + max (back from the log2 domain).
  T* gO = p.out + b * p.out_s.b + h * p.out_s.h;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    float inv[2];
    attn::softmax_finish(inv, rMax[mt], rSum[mt], p.lse + (int64_t(b) * p.heads + h) * p.seq,
                         row_lo + 16 * mt, p.seq);
    attn::store_acc<T>(gO, p.out_s.t, q0 + w0 + 16 * mt, p.seq, rO[mt], inv[0], inv[1]);
  }
}

/// 64-row blocks (NURI_ATTENTION=nuri), on padded or swizzled tiles (attn_fwd_swizzled).
template <class T, int D, bool kCausal, bool kSwizzled>
__global__ void __launch_bounds__(AttnFwdConfig<D, 16>::kThreads, AttnFwdConfig<D, 16>::kMinBlocks)
    attention_fwd_kernel(const AttentionParams<T> p) {
  attention_fwd_block<T, D, kCausal, 16, 64, kSwizzled>(p);
}

/// 128-row blocks (NURI_ATTENTION=nuri128) on key tiles of kBlockN (attn_fwd_q128_key_rows),
/// swizzled where they are 32.
template <class T, int D, bool kCausal, int kBlockN>
__global__ void __launch_bounds__(AttnFwdConfig<D, 32, kBlockN>::kThreads,
                                  AttnFwdConfig<D, 32, kBlockN>::kMinBlocks)
    attention_fwd_q128_kernel(const AttentionParams<T> p) {
  attention_fwd_block<T, D, kCausal, 32, kBlockN, kBlockN == 32>(p);
}

}  // namespace nuri::kernels
