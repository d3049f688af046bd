// Fused attention forward, FlashAttention-2 formulation: out = softmax(scale · Q Kᵀ) V and the
// per-row log-sum-exp, never materializing the T×T scores.
//
// A block of 4 warps owns 64 query rows of one (batch, head); warp w owns rows 16w..16w+15 and
// keeps its Q fragments, its 16 × D output accumulator and its running row max / row sum in
// registers for the whole walk over key tiles. Key and value tiles of 64 rows stream through one
// K and one V tile of shared memory, each loading while tensor cores work on the other (V_j
// during S = Q K_jᵀ and the softmax, K_{j+1} during O += P V_j). Per tile:
// S = Q Kᵀ on tensor cores (K rows are B's columns: ldmatrix without transpose), masking at the
// sequence end and the causal diagonal, an online softmax in the exp2 domain (scale·log2 e
// folded into one FMA per score), then O += P V with P taken straight from the S accumulator
// registers (rounded to the input type) and V through ldmatrix.trans. Causal blocks stop at the diagonal
// and the heaviest (last) query tiles are scheduled first.
#pragma once

#include <cmath>

#include "attention_common.cuh"

namespace nuri::kernels {

template <class T, int D, bool kCausal>
__global__ void __launch_bounds__(AttnFwdConfig<D>::kThreads, AttnFwdConfig<D>::kMinBlocks)
    attention_fwd_kernel(const AttentionParams<T> p) {
  using Cfg = AttnFwdConfig<D>;
  constexpr int kM = Cfg::kBlockM, kN = Cfg::kBlockN, kThreads = Cfg::kThreads;
  constexpr int kLd = attn_row_stride(D);
  constexpr int kKSteps = D / 16;   // k blocks of Q·Kᵀ
  constexpr int kSBlocks = kN / 8;  // 8-key column blocks of S
  constexpr int kOBlocks = D / 8;   // 8-wide column blocks of O

  // One K tile and one V tile, FlashAttention-2's pipeline: V_j loads while S = Q K_jᵀ and the
  // softmax run, K_{j+1} while O += P V_j runs (half the shared memory of two full K/V stages,
  // so twice the blocks fit an SM where shared memory is what limits them). Q passes through
  // the V tile on its way to registers, before the first V tile goes there.
  static_assert(kM <= kN, "the Q tile borrows the V tile's place");
  T* sK = dynamic_smem<T>();  // [kN][kLd]
  T* sV = sK + kN * kLd;      // [kN][kLd]
  T* sQ = sV;

  const attn::QueryBlock blk = attn::query_block<kCausal, kM, kN>(p);
  const int q0 = blk.q0, h = blk.h, b = blk.b, kvh = blk.kvh, n_tiles = blk.n_tiles;
  const int warp = attn::warp_id(), lane = attn::lane_id();
  const int rg = lane / 4;  // accumulator row group

  const T* gQ = p.q + b * p.q_s.b + int64_t(q0) * p.q_s.t + h * p.q_s.h;
  const T* gK = p.k + b * p.k_s.b + kvh * p.k_s.h;
  const T* gV = p.v + b * p.v_s.b + kvh * p.v_s.h;

  // Tile j of K or V, as one cp.async group (K_0's group also holds Q).
  auto issue = [&](T* dst, const T* g, int64_t stride, int j) {
    const int k0 = j * kN;
    attn::load_tile<T, D, kN, kThreads>(dst, g + int64_t(k0) * stride, stride, p.seq - k0);
    cp_async_commit();
  };
  attn::load_tile<T, D, kM, kThreads>(sQ, gQ, p.q_s.t, p.seq - q0);
  issue(sK, gK, p.k_s.t, 0);

  // The scale is folded into one FMA per score: P = exp2(s·c − m) with c = scale·log2 e and m
  // the row max of s·c, taken as c times the max of the raw scores. That needs c > 0; a negative
  // scale flips Q's sign bits once instead (S becomes −S and c becomes −c).
  const bool flip = p.scale < 0.f;
  const float scale_log2 = (flip ? -p.scale : p.scale) * attn::kLog2e;
  uint32_t rQ[kKSteps][4];
  float rO[kOBlocks][4];
#pragma unroll
  for (int nb = 0; nb < kOBlocks; ++nb) rO[nb][0] = rO[nb][1] = rO[nb][2] = rO[nb][3] = 0.f;
  // Running max (of scaled scores, log2 domain) and this thread's share of the row sum, for
  // rows rg and rg + 8 of the warp.
  float rMax[2] = {-INFINITY, -INFINITY}, rSum[2] = {0.f, 0.f};
  const int row_lo = q0 + warp * 16 + rg;  // query index of accumulator rows rg, rg + 8

  // Q (and K_0) landed; Q into registers, then its place is free for V_0.
  cp_async_wait<0>();
  __syncthreads();
#pragma unroll
  for (int ks = 0; ks < kKSteps; ++ks) attn::load_a(rQ[ks], sQ, kLd, warp * 16, ks * 16);
  if (flip) {
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
#pragma unroll
      for (int i = 0; i < 4; ++i) rQ[ks][i] ^= 0x80008000u;  // the sign of both 16-bit halves
    }
  }
  __syncthreads();

  for (int j = 0; j < n_tiles; ++j) {
    // K_j has landed (the only group in flight) and, after the barrier, every warp is done with
    // V_{j-1} (and, for j = 0, with Q): V_j may take its place.
    if (j > 0) {
      cp_async_wait<0>();
      __syncthreads();
    }
    issue(sV, gV, p.v_s.t, j);

    // S = Q Kᵀ for this warp's 16 rows and the tile's kN keys.
    float rS[kSBlocks][4];
#pragma unroll
    for (int nb = 0; nb < kSBlocks; ++nb) rS[nb][0] = rS[nb][1] = rS[nb][2] = rS[nb][3] = 0.f;
    const T* k_tile = sK;
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
#pragma unroll
      for (int nb = 0; nb < kSBlocks; nb += 2) {
        uint32_t rB[4];
        attn::load_b_nk(rB, k_tile, kLd, nb * 8, ks * 16);
        attn::mma<T>(rS[nb], rQ[ks], rB[0], rB[1]);
        attn::mma<T>(rS[nb + 1], rQ[ks], rB[2], rB[3]);
      }
    }

    // Mask keys past the end and, causally, past the row (only tiles that reach either).
    const int k0 = j * kN;
    const bool edge = k0 + kN > p.seq || (kCausal && k0 + kN - 1 > q0 + warp * 16);
    if (edge) attn::mask_scores<kCausal>(rS, k0, row_lo, p.seq, -INFINITY);

    // Online softmax: new row max, rescale what earlier tiles accumulated, P = exp2(s - max)
    // (the scale is positive here: a negative one flipped Q's signs).
    float alpha[2];
    attn::softmax_tile(rS, rMax, rSum, alpha, scale_log2, /*c_negative=*/false);
    attn::rescale_rows(rO, alpha);

    // P rounded to the input type, as the A operands of P V (half the registers of S, which
    // dies here: the K_{j+1} loads below take their addresses while P and O are live).
    uint32_t rP[kN / 16][4];
#pragma unroll
    for (int kb = 0; kb < kN / 16; ++kb) attn::acc_to_a<T>(rP[kb], rS, kb);

    // V_j has landed and every warp is done with K_j: K_{j+1} loads while P V_j runs.
    cp_async_wait<0>();
    __syncthreads();
    if (j + 1 < n_tiles) issue(sK, gK, p.k_s.t, j + 1);

    // O += P V.
    const T* v_tile = sV;
#pragma unroll
    for (int kb = 0; kb < kN / 16; ++kb) {
#pragma unroll
      for (int nb = 0; nb < kOBlocks; nb += 2) {
        uint32_t rB[4];
        attn::load_b_kn(rB, v_tile, kLd, kb * 16, nb * 8);
        attn::mma<T>(rO[nb], rP[kb], rB[0], rB[1]);
        attn::mma<T>(rO[nb + 1], rP[kb], rB[2], rB[3]);
      }
    }
  }

  // out = O / rowsum; lse = ln(rowsum) + max (back from the log2 domain).
  float inv[2];
  attn::softmax_finish(inv, rMax, rSum, p.lse + (int64_t(b) * p.heads + h) * p.seq, row_lo,
                       p.seq);
  T* gO = p.out + b * p.out_s.b + h * p.out_s.h;
  attn::store_acc<T>(gO, p.out_s.t, q0 + warp * 16, p.seq, rO, inv[0], inv[1]);
}

}  // namespace nuri::kernels
