// Fused attention forward for sm_90a (H100/H200), FlashAttention-3's structure: the same
// results as attention_fwd.cuh (out and the natural-log lse), computed with the Hopper units.
//
// A block of three warpgroups owns 128 query rows of one (batch, head):
//  - warpgroup 0, the producer, gives its registers back (setmaxnreg) and one of its threads
//    issues every load as a TMA tile copy: Q once, then K_j and V_j into stage j % kStages,
//    each completing on its own "full" mbarrier; before reusing a stage it waits on the stage's
//    "empty" mbarrier, on which every consumer thread arrives when done with the stage;
//  - warpgroups 1 and 2, the consumers, take the registers and own 64 query rows each. Per key
//    tile: S = Q K_jᵀ as one wgmma group (Q and K from shared memory, both K-major), the mask
//    and the online softmax in registers (exp2, the scale folded into one FMA), P rounded to
//    the input type straight into A-operand registers, then O += P V_j as one wgmma group with V
//    read MN-major from shared memory as TMA stored it ([keys][D]: keys are the k index).
// Tiles are stored as TMA writes them with the 128-byte swizzle: each 64-column (128-byte) slice
// of a [rows][D] tile is an atom of [rows][128 B], atoms one after the other. The wgmma
// accumulator layout per warp is mma.sync's, so the softmax and the stores are
// attention_fwd.cuh's. Causal blocks stop at the diagonal; the heaviest query tiles go first.
#pragma once

#include <cmath>

#include "attention_common.cuh"

namespace nuri::kernels {

/// The kernel's parameters: the call, and the tensor maps of q, k and v as rank-4 tensors
/// [B][heads][T][D] (innermost last here; the maps list D first) with boxes of 64 columns by
/// kBlockM (q) or kBlockN (k, v) rows.
template <class T>
struct AttnFwdSm90Params {
  CUtensorMap q_map, k_map, v_map;
  AttentionParams<T> p;
};

namespace attn90 {

/// Descriptor of k-step ks (k = 16ks..16ks+15) of a K-major operand: `rows` rows of a tile of
/// `tile_rows` rows from `row0`, stored as 128-byte swizzle atoms of 64 columns.
template <int kTileRows>
__device__ __forceinline__ uint64_t kmajor_desc(const unsigned char* tile, int row0, int ks) {
  return wgmma_desc(tile + (ks / 4) * kTileRows * 128 + row0 * 128 + (ks % 4) * 32, 0, 1024, 128);
}

/// Descriptor of k-step kb (rows 16kb..16kb+15) of a tile read MN-major (the row index is k):
/// 64-column atoms kTileRows · 128 bytes apart (LBO), 8-row groups 1024 bytes apart (SBO).
template <int kTileRows>
__device__ __forceinline__ uint64_t mnmajor_desc(const unsigned char* tile, int kb) {
  return wgmma_desc(tile + kb * 16 * 128, kTileRows * 128, 1024, 128);
}

}  // namespace attn90

template <class T, int D, bool kCausal>
__global__ void __launch_bounds__(AttnFwdSm90Config<D>::kThreads, 1)
    attention_fwd_sm90_kernel(const __grid_constant__ AttnFwdSm90Params<T> prm) {
  using Cfg = AttnFwdSm90Config<D>;
  constexpr int kM = Cfg::kBlockM, kN = Cfg::kBlockN, kStages = Cfg::kStages;
  constexpr int kAtoms = Cfg::kAtoms;
  constexpr int kKSteps = D / 16;   // k-steps of Q·Kᵀ
  constexpr int kPSteps = kN / 16;  // k-steps of P·V
  constexpr int kSBlocks = kN / 8;  // 8-key column blocks of S
  constexpr int kOBlocks = D / 8;   // 8-wide column blocks of O
  constexpr int kConsumers = 256;   // consumer threads (each arrives on an empty barrier)
  static_assert(D % 64 == 0, "head dims are whole 128-byte swizzle atoms");
  const AttentionParams<T>& p = prm.p;

  // Shared memory, aligned up to the swizzle's 1024-byte repeat: Q, the K and V stages, then
  // the barriers.
  unsigned char* raw = dynamic_smem<unsigned char>();
#if defined(NURI_CUDA_EMULATION)
  const uint32_t raw_addr = uint32_t(::nuri::emu::shared_address(raw));
#else
  const uint32_t raw_addr = smem_address(raw);
#endif
  unsigned char* sQ = raw + ((1024 - raw_addr % 1024) % 1024);
  unsigned char* sK = sQ + Cfg::kQBytes;               // stage s at s · kTileBytes
  unsigned char* sV = sK + kStages * Cfg::kTileBytes;  // likewise
  uint64_t* bars = reinterpret_cast<uint64_t*>(sV + kStages * Cfg::kTileBytes);
  uint64_t* q_full = bars;
  uint64_t* k_full = bars + 1;
  uint64_t* v_full = k_full + kStages;
  uint64_t* kv_empty = v_full + kStages;

  const int m_block = int(gridDim.x) - 1 - int(blockIdx.x);  // heaviest causal tiles first
  const int h = int(blockIdx.y), b = int(blockIdx.z);
  const int kvh = h / (p.heads / p.kv_heads);
  const int q0 = m_block * kM;
  const int key_end = kCausal && q0 + kM < p.seq ? q0 + kM : p.seq;
  const int n_tiles = (key_end + kN - 1) / kN;
  const int wg = int(threadIdx.x) / 128;

  if (threadIdx.x == 0) {
    mbarrier_init(q_full, 1);
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(&k_full[s], 1);
      mbarrier_init(&v_full[s], 1);
      mbarrier_init(&kv_empty[s], kConsumers);
    }
  }
  __syncthreads();

  if (wg == 0) {
    // ---- producer ----
    setmaxnreg<false, Cfg::kProducerRegs>();
    if (threadIdx.x == 0) {
      mbarrier_arrive_expect_tx(q_full, unsigned(Cfg::kQBytes));
#pragma unroll
      for (int a = 0; a < kAtoms; ++a) {
        const int32_t at[4] = {64 * a, q0, h, b};
        tma_load<4>(sQ + a * kM * 128, &prm.q_map, at, q_full);
      }
      for (int j = 0; j < n_tiles; ++j) {
        const int s = j % kStages;
        // Stage s was last filled for tile j - kStages, completing phase (j / kStages - 1) of
        // its empty barrier once every consumer thread released it.
        if (j >= kStages) mbarrier_wait_parity(&kv_empty[s], unsigned((j / kStages - 1) & 1));
        unsigned char* k_dst = sK + s * Cfg::kTileBytes;
        unsigned char* v_dst = sV + s * Cfg::kTileBytes;
        mbarrier_arrive_expect_tx(&k_full[s], unsigned(Cfg::kTileBytes));
#pragma unroll
        for (int a = 0; a < kAtoms; ++a) {
          const int32_t at[4] = {64 * a, j * kN, kvh, b};
          tma_load<4>(k_dst + a * kN * 128, &prm.k_map, at, &k_full[s]);
        }
        mbarrier_arrive_expect_tx(&v_full[s], unsigned(Cfg::kTileBytes));
#pragma unroll
        for (int a = 0; a < kAtoms; ++a) {
          const int32_t at[4] = {64 * a, j * kN, kvh, b};
          tma_load<4>(v_dst + a * kN * 128, &prm.v_map, at, &v_full[s]);
        }
      }
    }
    return;
  }

  // ---- consumers ----
  setmaxnreg<true, Cfg::kConsumerRegs>();
  const int c = wg - 1;                  // this consumer's 64 rows: q0 + 64c ..
  const int warp = attn::warp_id() % 4;  // warp within the warpgroup: 16 of those rows
  const int lane = attn::lane_id();
  const int rg = lane / 4, tq = lane % 4;
  const int row_lo = q0 + 64 * c + warp * 16 + rg;  // query index of accumulator rows rg, rg + 8

  // The scale is folded into one FMA per score: P = exp2(s·c − m) with c = scale·log2 e and m
  // the row max of s·c: c times the max of the raw scores, or of their min when c < 0.
  const bool flip = p.scale < 0.f;
  const float scale_log2 = p.scale * attn::kLog2e;
  float rO[kOBlocks][4];
#pragma unroll
  for (int nb = 0; nb < kOBlocks; ++nb) rO[nb][0] = rO[nb][1] = rO[nb][2] = rO[nb][3] = 0.f;
  float rMax[2] = {-INFINITY, -INFINITY}, rSum[2] = {0.f, 0.f};

  mbarrier_wait_parity(q_full, 0);
  for (int j = 0; j < n_tiles; ++j) {
    const int s = j % kStages;
    const unsigned phase = unsigned((j / kStages) & 1);
    const unsigned char* k_tile = sK + s * Cfg::kTileBytes;
    const unsigned char* v_tile = sV + s * Cfg::kTileBytes;

    // S = Q K_jᵀ for this warpgroup's 64 rows and the tile's kN keys.
    float rS[kSBlocks][4];
    mbarrier_wait_parity(&k_full[s], phase);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
      wgmma_ss<T, kN>(reinterpret_cast<float(&)[kN / 2]>(rS),
                      attn90::kmajor_desc<kM>(sQ, 64 * c, ks),
                      attn90::kmajor_desc<kN>(k_tile, 0, ks), ks > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();

    // Mask keys past the end and, causally, past the row (only tiles that reach either).
    const int k0 = j * kN;
    const bool edge = k0 + kN > p.seq || (kCausal && k0 + kN - 1 > q0 + 64 * c + warp * 16);
    if (edge) {
#pragma unroll
      for (int nb = 0; nb < kSBlocks; ++nb) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int key = k0 + nb * 8 + 2 * tq + (i % 2);
          const int row = row_lo + 8 * (i / 2);
          // Masked scores take the value that loses the row max whatever the scale's sign.
          if (key >= p.seq || (kCausal && key > row)) rS[nb][i] = flip ? INFINITY : -INFINITY;
        }
      }
    }

    // Online softmax: new row max, rescale what earlier tiles accumulated, P = exp2(s·c − max).
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float raw_max;
      if (!flip) {
        raw_max = -INFINITY;
#pragma unroll
        for (int nb = 0; nb < kSBlocks; ++nb) {
          raw_max = fmaxf(raw_max, fmaxf(rS[nb][2 * half], rS[nb][2 * half + 1]));
        }
        raw_max = attn::quad_max(raw_max);
      } else {
        raw_max = INFINITY;
#pragma unroll
        for (int nb = 0; nb < kSBlocks; ++nb) {
          raw_max = fminf(raw_max, fminf(rS[nb][2 * half], rS[nb][2 * half + 1]));
        }
        raw_max = -attn::quad_max(-raw_max);
      }
      const float mx = fmaxf(rMax[half], raw_max * scale_log2);
      // A row that has seen only masked keys keeps max -inf; subtracting 0 then gives P = 0.
      const float base = mx == -INFINITY ? 0.f : mx;
      const float alpha = ex2_approx(rMax[half] - base);  // 0 while rMax is -inf
      rMax[half] = mx;
      float sum = 0.f;
#pragma unroll
      for (int nb = 0; nb < kSBlocks; ++nb) {
        rS[nb][2 * half] = ex2_approx(fmaf(rS[nb][2 * half], scale_log2, -base));
        rS[nb][2 * half + 1] = ex2_approx(fmaf(rS[nb][2 * half + 1], scale_log2, -base));
        sum += rS[nb][2 * half] + rS[nb][2 * half + 1];
      }
      rSum[half] = rSum[half] * alpha + sum;
#pragma unroll
      for (int nb = 0; nb < kOBlocks; ++nb) {
        rO[nb][2 * half] *= alpha;
        rO[nb][2 * half + 1] *= alpha;
      }
    }

    // P rounded to the input type, as the A operands (this warp's 16 rows) of P V.
    uint32_t rP[kPSteps][4];
#pragma unroll
    for (int kb = 0; kb < kPSteps; ++kb) attn::acc_to_a<T>(rP[kb], rS, kb);

    // O += P V_j, V read MN-major (its rows are the k index).
    mbarrier_wait_parity(&v_full[s], phase);
    wgmma_fence();
#pragma unroll
    for (int kb = 0; kb < kPSteps; ++kb) {
      wgmma_rs<T, D, true>(reinterpret_cast<float(&)[D / 2]>(rO), rP[kb],
                           attn90::mnmajor_desc<kN>(v_tile, kb), true);
    }
    wgmma_commit();
    wgmma_wait<0>();
    mbarrier_arrive(&kv_empty[s]);  // this thread is done with stage s
  }

  // out = O / rowsum; lse = ln(rowsum) + max (back from the log2 domain).
  float inv[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const float sum = attn::quad_sum(rSum[half]);
    inv[half] = sum > 0.f ? 1.f / sum : 0.f;
    const int row = row_lo + 8 * half;
    if (tq == 0 && row < p.seq) {
      p.lse[(int64_t(b) * p.heads + h) * p.seq + row] =
          sum > 0.f ? (rMax[half] + log2f(sum)) * attn::kLn2 : -INFINITY;
    }
  }
  T* gO = p.out + b * p.out_s.b + h * p.out_s.h;
  attn::store_acc<T>(gO, p.out_s.t, q0 + 64 * c + warp * 16, p.seq, rO, inv[0], inv[1]);
}

}  // namespace nuri::kernels
