// Fused attention backward for sm_90a (H100/H200): the results of attention_bwd.cuh's
// deterministic mode (dq, dk, dv; P recomputed from the forward's lse, Di = rowsum(dO ∘ O) from
// attention_bwd.cuh's preprocess kernel), computed with the Hopper units in the structure of
// attention_fwd_sm90.cuh: a producer warpgroup issuing TMA loads on mbarrier stages, two consumer
// warpgroups of 64 rows each multiplying with wgmma. Two kernels, neither with atomics:
//  - dK/dV, key-major: a block owns 128 keys of one (batch, kv head), K and V loaded once; it
//    walks the 64-row query tiles of every query head of the kv group (Q and dO in two stages).
//    Per tile each consumer computes Sᵀ = K Qᵀ and dPᵀ = V dOᵀ (64 keys x 64 queries, one wgmma
//    group), Pᵀ = exp2(Sᵀ·c − lse₂) and dSᵀ = Pᵀ ∘ (dPᵀ − Di) in registers, then dV += Pᵀ dO and
//    dK += dSᵀ Q (Pᵀ and dSᵀ from registers, dO and Q read MN-major as TMA stored them);
//  - dQ, query-major: a block owns 128 query rows of one (batch, head), Q and dO loaded once; it
//    walks key tiles of 64 (K and V in two stages): S = Q Kᵀ and dP = dO Vᵀ, P and dS, then
//    dQ += dS K with K read MN-major.
// The rounding points are the sm_80-class kernels' (P and dS to the input type before their
// products, each output once), so the same CPU model bounds both.
#pragma once

#include <cmath>

#include "attention_fwd_sm90.cuh"

namespace nuri::kernels {

/// Parameters: the call, Di, and the tensor maps of the operands as in the forward (boxes of
/// 64 columns; rows: kBlock for the block's own tensors, kTile for those it walks).
template <class T>
struct AttnBwdSm90Params {
  CUtensorMap q_map, k_map, v_map, do_map;
  AttentionParams<T> p;
  const float* di = nullptr;  // [B, H, T]
};

namespace attn90 {

/// Shared memory of both backward kernels: two resident tiles of kBlock rows (K and V, or Q and
/// dO), then kStages stages of two kTile-row tiles (Q and dO, or K and V), then per stage the
/// row statistics of the tile (dK/dV only: lse·log2 e, then Di), then the pipeline's barriers
/// (once: the resident tiles; tile `it`: the stage's pair and its statistics).
template <int D>
struct BwdSmem {
  using Cfg = AttnBwdSm90Config<D>;
  static_assert(Cfg::kSmemBytes ==
                    1024 + 2 * Cfg::kBlockBytes + Cfg::kStages * 2 * Cfg::kTileBytes +
                        Cfg::kStages * Cfg::kStatsBytes +
                        Pipeline<Cfg::kStages>::words() * sizeof(uint64_t),
                "AttnBwdSm90Config's shared memory is this layout");
  unsigned char* resident[2];
  unsigned char* staged[2];  // stage s at s · kTileBytes
  float* stats;              // stage s at s · 2 · kTile floats
  Pipeline<Cfg::kStages> pipe;

  __device__ BwdSmem() {
    resident[0] = aligned_smem();
    resident[1] = resident[0] + Cfg::kBlockBytes;
    staged[0] = resident[1] + Cfg::kBlockBytes;
    staged[1] = staged[0] + Cfg::kStages * Cfg::kTileBytes;
    stats = reinterpret_cast<float*>(staged[1] + Cfg::kStages * Cfg::kTileBytes);
    pipe.bars = reinterpret_cast<uint64_t*>(stats + Cfg::kStages * 2 * Cfg::kTile);
  }
  /// Tile i (0 or 1) of tile `it`'s stage.
  __device__ unsigned char* stage(int i, int it) const {
    return staged[i] + (it % Cfg::kStages) * Cfg::kTileBytes;
  }
  /// lse·log2 e of tile `it`'s kTile rows; Di follows them.
  __device__ float* row_stats(int it) const {
    return stats + (it % Cfg::kStages) * 2 * Cfg::kTile;
  }
};

}  // namespace attn90

// ---- dK, dV ---------------------------------------------------------------------------------

template <class T, int D, bool kCausal>
__global__ void __launch_bounds__(AttnBwdSm90Config<D>::kThreads, 1)
    attn_bwd_dkdv_sm90_kernel(const __grid_constant__ AttnBwdSm90Params<T> prm) {
  using Cfg = AttnBwdSm90Config<D>;
  constexpr int kN = Cfg::kBlock, kM = Cfg::kTile, kStages = Cfg::kStages, kAtoms = Cfg::kAtoms;
  constexpr int kPSteps = kM / 16;  // k-steps (queries) of Pᵀ dO and dSᵀ Q
  constexpr int kCBlocks = kM / 8;  // 8-query column blocks of Sᵀ
  constexpr int kOBlocks = D / 8;
  const AttentionParams<T>& p = prm.p;

  // K and V resident (on once()); the Q and dO tiles of iteration `it` as tile it.
  const attn90::BwdSmem<D> sm;
  const sm90::Pipeline<kStages>& pipe = sm.pipe;
  unsigned char *const sK = sm.resident[0], *const sV = sm.resident[1];

  const int n_block = int(gridDim.x) - 1 - int(blockIdx.x);  // the longest causal walks first
  const int kvh = int(blockIdx.y), b = int(blockIdx.z);
  const int group = p.heads / p.kv_heads;
  const int k0 = n_block * kN;
  const int first_tile = kCausal ? k0 / kM : 0;  // earlier queries see none of these keys
  // Packed documents: queries from where the block's last key's document ends see none.
  const int q_end =
      attn::document_bound(p.query_end, b, (k0 + kN < p.seq ? k0 + kN : p.seq) - 1, p.seq, p.seq);
  const int n_qtiles = (q_end + kM - 1) / kM;
  const int per_head = n_qtiles - first_tile;
  const int n_iter = group * per_head;  // (head, query tile) pairs, head-major
  const int wg = int(threadIdx.x) / 128;

  // A stage is full when thread 0's TMA loads have landed and warp 1 has staged the tile's row
  // statistics (32 arrivals).
  pipe.init(1 + 32);

  if (wg == 0) {
    setmaxnreg<false, Cfg::kProducerRegs>();
    if (threadIdx.x == 0) {
      mbarrier_arrive_expect_tx(pipe.once(), unsigned(2 * Cfg::kBlockBytes));
      attn90::load_rows<kN, kAtoms>(sK, &prm.k_map, k0, kvh, b, pipe.once());
      attn90::load_rows<kN, kAtoms>(sV, &prm.v_map, k0, kvh, b, pipe.once());
      for (int it = 0; it < n_iter; ++it) {
        const int h = kvh * group + it / per_head, q0 = (first_tile + it % per_head) * kM;
        pipe.wait_empty(it);
        uint64_t* full = pipe.expect(it, 0, unsigned(2 * Cfg::kTileBytes));
        attn90::load_rows<kM, kAtoms>(sm.stage(0, it), &prm.q_map, q0, h, b, full);
        attn90::load_rows<kM, kAtoms>(sm.stage(1, it), &prm.do_map, q0, h, b, full);
      }
    } else if (attn::warp_id() == 1) {
      // The tile's lse·log2 e and Di (+inf and 0 past the sequence: P = 0 there), so the
      // consumers' softmax gradient reads shared memory, not global loads issued after the
      // products. Plain stores, released to the consumers by the arrival on the full barrier.
      // Within the producer's 24 registers: running row pointers rather than recomputing them.
      const int lane = attn::lane_id();
      const int64_t first_row = (int64_t(b) * p.heads + kvh * group) * p.seq;
      const float* lse = p.lse + first_row;
      const float* di = prm.di + first_row;
      int q0 = first_tile * kM;
      for (int it = 0; it < n_iter; ++it) {
        pipe.wait_empty(it);
        float* stats = sm.row_stats(it);
#pragma unroll
        for (int r = 0; r < kM; r += 32) {
          const int q = q0 + r + lane;
          st_shared(stats + r + lane, q < p.seq ? ld_global(lse + q) * attn::kLog2e : INFINITY);
          st_shared(stats + kM + r + lane, q < p.seq ? ld_global(di + q) : 0.f);
        }
        pipe.arrive_full(it);
        q0 += kM;
        if (q0 >= n_qtiles * kM) {  // the next query head of the group
          q0 = first_tile * kM;
          lse += p.seq;
          di += p.seq;
        }
      }
    }
    return;
  }

  setmaxnreg<true, Cfg::kConsumerRegs>();
  const int c = wg - 1;
  const int warp = attn::warp_id() % 4, lane = attn::lane_id();
  const int rg = lane / 4, tq = lane % 4;
  const int key_lo = k0 + 64 * c + 16 * warp + rg;  // keys of accumulator rows rg, rg + 8
  const float scale_log2 = p.scale * attn::kLog2e;
  // Packed documents: the queries that see the two keys end at their query_end (the walk stops
  // at the block's last key's; earlier tiles are masked here).
  const int query_end[2] = {attn::document_bound(p.query_end, b, key_lo, p.seq, p.seq),
                            attn::document_bound(p.query_end, b, key_lo + 8, p.seq, p.seq)};

  float rdK[kOBlocks][4], rdV[kOBlocks][4];
#pragma unroll
  for (int nb = 0; nb < kOBlocks; ++nb) {
#pragma unroll
    for (int i = 0; i < 4; ++i) rdK[nb][i] = rdV[nb][i] = 0.f;
  }

  mbarrier_wait_parity(pipe.once(), 0);
  for (int it = 0; it < n_iter; ++it) {
    const int q0 = (first_tile + it % per_head) * kM;
    const unsigned char* q_tile = sm.stage(0, it);
    const unsigned char* do_tile = sm.stage(1, it);
    const float* stats = sm.row_stats(it);

    // Sᵀ = K Qᵀ and dPᵀ = V dOᵀ for this warpgroup's 64 keys and the tile's 64 queries.
    float rS[kCBlocks][4], rdP[kCBlocks][4];
    pipe.wait_full(it);
    attn90::two_products<T, D, kM, kN>(rS, rdP, sK, q_tile, sV, do_tile, 64 * c);

    // Pᵀ (masked entries exactly 0) and dSᵀ = Pᵀ ∘ (dPᵀ − Di), in place; the columns' lse·log2 e
    // and Di from the stage (read here, not held across the products, where dK, dV, Sᵀ and dPᵀ
    // already take 192 registers at D 128).
#pragma unroll
    for (int j = 0; j < kCBlocks; ++j) {
      const int col = 8 * j + 2 * tq;
      const float2 lse2s = ld_shared(reinterpret_cast<const float2*>(stats + col));
      const float2 dis = ld_shared(reinterpret_cast<const float2*>(stats + kM + col));
#pragma unroll
      for (int i2 = 0; i2 < 2; ++i2) {
        const int q = q0 + col + i2;
        const float lse2 = i2 ? lse2s.y : lse2s.x;
        const float di = i2 ? dis.y : dis.x;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int i = 2 * half + i2, key = key_lo + 8 * half;
          const bool visible = key < p.seq && (!kCausal || key <= q) && q < query_end[half];
          const float pr = visible ? ex2_approx(fmaf(rS[j][i], scale_log2, -lse2)) : 0.f;
          rS[j][i] = pr;
          rdP[j][i] = pr * (rdP[j][i] - di);
        }
      }
    }
    uint32_t rP[kPSteps][4], rdS[kPSteps][4];
#pragma unroll
    for (int kb = 0; kb < kPSteps; ++kb) {
      attn::acc_to_a<T>(rP[kb], rS, kb);
      attn::acc_to_a<T>(rdS[kb], rdP, kb);
    }

    // dV += Pᵀ dO and dK += dSᵀ Q, dO and Q read MN-major (their rows are the k index).
    wgmma_fence();
#pragma unroll
    for (int kb = 0; kb < kPSteps; ++kb) {
      wgmma_rs<T, D, true>(reinterpret_cast<float(&)[D / 2]>(rdV), rP[kb],
                           sm90::mnmajor_desc<kM>(do_tile, kb), true);
    }
#pragma unroll
    for (int kb = 0; kb < kPSteps; ++kb) {
      wgmma_rs<T, D, true>(reinterpret_cast<float(&)[D / 2]>(rdK), rdS[kb],
                           sm90::mnmajor_desc<kM>(q_tile, kb), true);
    }
    wgmma_commit();
    wgmma_wait<0>();
    pipe.release(it);
  }

  const int row0 = k0 + 64 * c + 16 * warp;
  T* g_dk = p.dk + b * p.dk_s.b + kvh * p.dk_s.h;
  T* g_dv = p.dv + b * p.dv_s.b + kvh * p.dv_s.h;
  attn::store_acc<T>(g_dk, p.dk_s.t, row0, p.seq, rdK, p.scale, p.scale);
  attn::store_acc<T>(g_dv, p.dv_s.t, row0, p.seq, rdV, 1.f, 1.f);
}

// ---- dQ -------------------------------------------------------------------------------------

template <class T, int D, bool kCausal>
__global__ void __launch_bounds__(AttnBwdSm90Config<D>::kThreads, 1)
    attn_bwd_dq_sm90_kernel(const __grid_constant__ AttnBwdSm90Params<T> prm) {
  using Cfg = AttnBwdSm90Config<D>;
  constexpr int kM = Cfg::kBlock, kN = Cfg::kTile, kStages = Cfg::kStages, kAtoms = Cfg::kAtoms;
  constexpr int kPSteps = kN / 16;  // k-steps (keys) of dS K
  constexpr int kSBlocks = kN / 8;
  constexpr int kOBlocks = D / 8;
  const AttentionParams<T>& p = prm.p;

  // Q and dO resident (on once()); K_j and V_j as tile j.
  const attn90::BwdSmem<D> sm;
  const sm90::Pipeline<kStages>& pipe = sm.pipe;
  unsigned char *const sQ = sm.resident[0], *const sdO = sm.resident[1];

  const attn::QueryBlock blk = attn::query_block<kCausal, kM, kN>(p);
  // j counts the tiles walked (pipeline tile j), from the first (packed documents: the one
  // holding the block's first row's document start): key tile j_first + j.
  const int q0 = blk.q0, h = blk.h, b = blk.b, kvh = blk.kvh, j_first = blk.first_tile,
            n_tiles = blk.n_tiles - blk.first_tile;
  const int wg = int(threadIdx.x) / 128;

  pipe.init();

  if (wg == 0) {
    setmaxnreg<false, Cfg::kProducerRegs>();
    if (threadIdx.x == 0) {
      mbarrier_arrive_expect_tx(pipe.once(), unsigned(2 * Cfg::kBlockBytes));
      attn90::load_rows<kM, kAtoms>(sQ, &prm.q_map, q0, h, b, pipe.once());
      attn90::load_rows<kM, kAtoms>(sdO, &prm.do_map, q0, h, b, pipe.once());
      for (int j = 0; j < n_tiles; ++j) {
        pipe.wait_empty(j);
        uint64_t* full = pipe.expect(j, 0, unsigned(2 * Cfg::kTileBytes));
        const int k0 = (j_first + j) * kN;
        attn90::load_rows<kN, kAtoms>(sm.stage(0, j), &prm.k_map, k0, kvh, b, full);
        attn90::load_rows<kN, kAtoms>(sm.stage(1, j), &prm.v_map, k0, kvh, b, full);
      }
    }
    return;
  }

  setmaxnreg<true, Cfg::kConsumerRegs>();
  const int c = wg - 1;
  const int warp = attn::warp_id() % 4, lane = attn::lane_id();
  const int rg = lane / 4, tq = lane % 4;
  const int row_lo = q0 + 64 * c + 16 * warp + rg;  // queries of accumulator rows rg, rg + 8
  const float scale_log2 = p.scale * attn::kLog2e;
  // Packed documents: the first key of each of the two queries.
  const int first_key[2] = {attn::document_bound(p.key_start, b, row_lo, p.seq, 0),
                            attn::document_bound(p.key_start, b, row_lo + 8, p.seq, 0)};
  const int64_t row_base = (int64_t(b) * p.heads + h) * p.seq;
  float lse2[2], di[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int q = row_lo + 8 * half;
    lse2[half] = q < p.seq ? ld_global(p.lse + row_base + q) * attn::kLog2e : INFINITY;
    di[half] = q < p.seq ? ld_global(prm.di + row_base + q) : 0.f;
  }

  float rdQ[kOBlocks][4];
#pragma unroll
  for (int nb = 0; nb < kOBlocks; ++nb) rdQ[nb][0] = rdQ[nb][1] = rdQ[nb][2] = rdQ[nb][3] = 0.f;

  mbarrier_wait_parity(pipe.once(), 0);
  for (int j = 0; j < n_tiles; ++j) {
    const unsigned char* k_tile = sm.stage(0, j);
    const unsigned char* v_tile = sm.stage(1, j);

    // S = Q Kᵀ and dP = dO Vᵀ for this warpgroup's 64 rows and the tile's 64 keys.
    float rS[kSBlocks][4], rdP[kSBlocks][4];
    pipe.wait_full(j);
    attn90::two_products<T, D, kN, kM>(rS, rdP, sQ, k_tile, sdO, v_tile, 64 * c);

    // P (masked entries exactly 0) and dS = P ∘ (dP − Di), in place.
    const int k0 = (j_first + j) * kN;
#pragma unroll
    for (int nb = 0; nb < kSBlocks; ++nb) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int key = k0 + 8 * nb + 2 * tq + (i % 2), q = row_lo + 8 * (i / 2);
        const bool visible = key < p.seq && (!kCausal || key <= q) && key >= first_key[i / 2];
        const float pr =
            visible ? ex2_approx(fmaf(rS[nb][i], scale_log2, -lse2[i / 2])) : 0.f;
        rdP[nb][i] = pr * (rdP[nb][i] - di[i / 2]);
      }
    }
    uint32_t rdS[kPSteps][4];
#pragma unroll
    for (int kb = 0; kb < kPSteps; ++kb) attn::acc_to_a<T>(rdS[kb], rdP, kb);

    // dQ += dS K, K read MN-major (its rows are the k index).
    wgmma_fence();
#pragma unroll
    for (int kb = 0; kb < kPSteps; ++kb) {
      wgmma_rs<T, D, true>(reinterpret_cast<float(&)[D / 2]>(rdQ), rdS[kb],
                           sm90::mnmajor_desc<kN>(k_tile, kb), true);
    }
    wgmma_commit();
    wgmma_wait<0>();
    pipe.release(j);
  }

  T* g_dq = p.dq + b * p.dq_s.b + h * p.dq_s.h;
  attn::store_acc<T>(g_dq, p.dq_s.t, q0 + 64 * c + 16 * warp, p.seq, rdQ, p.scale, p.scale);
}

}  // namespace nuri::kernels
