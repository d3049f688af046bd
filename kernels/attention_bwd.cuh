// Backward of the fused attention (FlashAttention-2 formulation): P = exp(scale·Q·Kᵀ − lse) is
// recomputed tile by tile from the forward's lse, nothing of size T×T ever exists. Four kernels:
//   1. preprocess: Di = rowsum(dO ∘ O) per query row (and zeroes the f32 dQ accumulator when dQ
//      is accumulated with atomics);
//   2. key-major dK/dV: a block owns 64 keys of one (batch, kv head) and walks the query tiles of
//      every query head of its group, so dK and dV stay in registers and are written once; when
//      not deterministic it also adds its share of dQ = dS·K into the f32 accumulator with
//      atomics;
//   3. deterministic dQ: a query-major pass (a block owns 64 query rows and walks the key tiles),
//      whose bits do not depend on block order;
//   4. convert: dq = scale · accumulator, rounded to the input type (atomic mode).
// The design choice: S, P, dP and dS live only in 16 × 16 register tiles (one warp's keys or
// queries against a 16-row chunk of the other side), which keeps the two D-wide f32 accumulators
// of the key-major pass in registers without spills. Rounding points: P and dS are rounded to T
// as mma operands, accumulators are f32, outputs are rounded once (scale applied in f32 first).
#pragma once

#include "attention_common.cuh"

namespace nuri::kernels::attn {

template <class T>
struct AttnBwdParams {
  AttentionParams<T> a;       // q, k, v, out, lse, dout, dq, dk, dv with shapes and strides
  float* g_di = nullptr;      // [B, H, T] rowsum(dO ∘ O)
  float* g_dq_acc = nullptr;  // [B, T, H, D] unscaled f32 dQ; null in deterministic mode
  float scale_log2 = 0.f;     // scale · log2(e)
  int group = 1;              // query heads per kv head: H / Hkv
};

/// Di = rowsum(dO ∘ O) into di [B, H, T] (the preprocess kernel alone; attention_bwd.cu), for
/// the sm_90a backward (attention_bwd_sm90.cu).
template <class T>
void backward_di(const AttentionParams<T>& a, float* di, cudaStream_t stream);

constexpr int kBwdThreads = 128;
static_assert(AttnBwdKVConfig<64>::kThreads == kBwdThreads &&
                  AttnBwdQConfig<64>::kThreads == kBwdThreads,
              "the backward kernels are written for 4 warps");

/// P (masked entries exactly 0) and dS = P ∘ (dP − Di) of one 16 × 16 tile, in place: `s` holds
/// the raw scores and becomes P, `dp` holds dP and becomes dS. Accumulator element [nb][i] is
/// (row g + 8·(i / 2), column 8·nb + 2t + i % 2); `row0`/`col0` are their global indices of the
/// tile's first row/column. kRowIsKey: rows are keys and columns queries (the transposed tile of
/// the key-major pass); otherwise rows are queries. lse2 (lse·log2 e) and di are read through
/// the per-query-index functors. `bound`: the packed documents' bound of rows g and g + 8 (of a
/// key, the query_end its document gives; of a query, its first key; seq and 0 without).
template <bool kCausal, bool kRowIsKey, class Lse, class Di>
__device__ __forceinline__ void softmax_grad_tile(float (&s)[2][4], float (&dp)[2][4], int row0,
                                                  int col0, int seq, const int (&bound)[2],
                                                  float scale_log2, Lse lse2, Di di) {
  const int l = lane_id(), g = l / 4, t = l % 4;
#pragma unroll
  for (int nb = 0; nb < 2; ++nb) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = g + 8 * (i / 2), c = 8 * nb + 2 * t + (i % 2);
      const int key = kRowIsKey ? row0 + r : col0 + c;
      const int query = kRowIsKey ? col0 + c : row0 + r;
      const int qi = kRowIsKey ? c : r;  // the query's index inside the tile
      const bool in_document = kRowIsKey ? query < bound[i / 2] : key >= bound[i / 2];
      const bool visible = key < seq && (!kCausal || key <= query) && in_document;
      const float p = visible ? ex2_approx(fmaf(s[nb][i], scale_log2, -lse2(qi))) : 0.f;
      s[nb][i] = p;
      dp[nb][i] = p * (dp[nb][i] - di(qi));
    }
  }
}

// ---- 1. Di = rowsum(dO ∘ O); zero the dQ accumulator --------------------------------------------

/// One warp per (b, t, h) row, grid-stride; then (atomic mode) a grid-stride zero fill.
template <class T, int D>
__global__ void __launch_bounds__(kBwdThreads) attn_bwd_preprocess(AttnBwdParams<T> p) {
  static_assert(D % 2 == 0, "rows are read as pairs");
  const AttentionParams<T>& a = p.a;
  const int lane = lane_id();
  const int64_t rows = int64_t(a.batch) * a.seq * a.heads;
  const int64_t warps = int64_t(gridDim.x) * (kBwdThreads / kWarpSize);
  for (int64_t r = int64_t(blockIdx.x) * (kBwdThreads / kWarpSize) + warp_id(); r < rows;
       r += warps) {
    const int h = int(r % a.heads), t = int(r / a.heads % a.seq);
    const int64_t b = r / a.heads / a.seq;
    const T* g_o = a.out + b * a.out_s.b + t * a.out_s.t + h * a.out_s.h;       // [D]
    const T* g_do = a.dout + b * a.dout_s.b + t * a.dout_s.t + h * a.dout_s.h;  // [D]
    float sum = 0.f;
    for (int c = 2 * lane; c < D; c += 2 * kWarpSize) {
      const Pack<T, 2> o = *reinterpret_cast<const Pack<T, 2>*>(g_o + c);
      const Pack<T, 2> d = *reinterpret_cast<const Pack<T, 2>*>(g_do + c);
      sum += to_float(o.v[0]) * to_float(d.v[0]) + to_float(o.v[1]) * to_float(d.v[1]);
    }
    sum = warp_sum(sum);
    if (lane == 0) p.g_di[(b * a.heads + h) * a.seq + t] = sum;
  }
  if (p.g_dq_acc != nullptr) {
    const int64_t n4 = rows * D / 4;  // D % 16 == 0: whole float4s
    float4* g_acc = reinterpret_cast<float4*>(p.g_dq_acc);
    for (int64_t i = int64_t(blockIdx.x) * kBwdThreads + threadIdx.x; i < n4;
         i += int64_t(gridDim.x) * kBwdThreads) {
      g_acc[i] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }
}

// ---- 2. key-major dK, dV (and atomic dQ) --------------------------------------------------------

/// Block (key tile x, kv head y, batch z); warp w owns keys 16w..16w+15 of the tile. Per query
/// tile of 32 rows and per 16-query chunk c, warp w computes the transposed tiles Sᵀ = K_w·Q_cᵀ
/// and dPᵀ = V_w·dO_cᵀ (16 keys × 16 queries), then dV_w += Pᵀ·dO_c and dK_w += dSᵀ·Q_c.
/// kAtomicDq: dSᵀ of the whole tile goes to shared memory and the 4 warps add dQ = dS·K of the
/// 32 queries (warp w: columns 16w + 64j) into the f32 accumulator with atomics.
template <class T, int D, bool kCausal, bool kAtomicDq>
__global__ void __launch_bounds__(kBwdThreads) attn_bwd_dkdv(AttnBwdParams<T> p) {
  using Cfg = AttnBwdKVConfig<D>;
  constexpr int kN = Cfg::kBlockN, kM = Cfg::kBlockM, kLd = attn_row_stride(D);
  constexpr int kLdS = kM + 8;  // sdS row stride
  constexpr int kNb = D / 8;    // accumulator column blocks of a D-wide row
  static_assert(kN == 4 * 16 && kM == 2 * 16 && Cfg::kStages == 2,
                "4 warps × 16 keys, 2 chunks of 16 queries, 2 stages");
  static_assert(D % 16 == 0, "head_dim is a whole number of mma k-steps");
  const AttentionParams<T>& a = p.a;
  const int seq = a.seq, warp = warp_id(), tid = int(threadIdx.x);
  const int j0 = int(blockIdx.x) * kN, kvh = int(blockIdx.y);
  const int64_t b = blockIdx.z;

  T* sK = dynamic_smem<T>();    // [kN][kLd]
  T* sV = sK + kN * kLd;        // [kN][kLd]
  T* sQ = sV + kN * kLd;        // [2][kM][kLd]
  T* sdO = sQ + 2 * kM * kLd;   // [2][kM][kLd]
  T* sdS = sdO + 2 * kM * kLd;  // [kN][kLdS] dSᵀ of the current query tile (atomic mode)
  float* sLse = reinterpret_cast<float*>(sdS + kN * kLdS);  // [2][kM]; +inf past T
  float* sDi = sLse + 2 * kM;                               // [2][kM]; 0 past T

  load_tile<T, D, kN, kBwdThreads>(sK, a.k + b * a.k_s.b + int64_t(j0) * a.k_s.t + kvh * a.k_s.h,
                                   a.k_s.t, seq - j0);
  load_tile<T, D, kN, kBwdThreads>(sV, a.v + b * a.v_s.b + int64_t(j0) * a.v_s.t + kvh * a.v_s.h,
                                   a.v_s.t, seq - j0);
  cp_async_commit();

  // Query tiles: every head of the group × tiles from i_begin (causal: earlier ones see no key)
  // up to i_end (packed documents: queries from where the tile's last key's document ends see
  // none of its keys).
  const int i_begin = kCausal ? j0 / kM * kM : 0;
  const int i_end = document_bound(a.query_end, int(b), min(j0 + kN, seq) - 1, seq, seq);
  const int n_qtiles = int(ceil_div(i_end - i_begin, kM));
  const int n_iter = p.group * n_qtiles;
  auto head_of = [&](int it) { return kvh * p.group + it / n_qtiles; };
  auto start_of = [&](int it) { return i_begin + it % n_qtiles * kM; };
  auto issue = [&](int it) {
    const int st = it % 2, h = head_of(it), i0 = start_of(it);
    load_tile<T, D, kM, kBwdThreads>(sQ + st * kM * kLd,
                                     a.q + b * a.q_s.b + int64_t(i0) * a.q_s.t + h * a.q_s.h,
                                     a.q_s.t, seq - i0);
    load_tile<T, D, kM, kBwdThreads>(
        sdO + st * kM * kLd, a.dout + b * a.dout_s.b + int64_t(i0) * a.dout_s.t + h * a.dout_s.h,
        a.dout_s.t, seq - i0);
    if (tid < 2 * kM) {  // threads 0..31: lse, 32..63: Di
      const int r = tid % kM;
      const bool is_lse = tid < kM;
      float* dst = (is_lse ? sLse : sDi) + st * kM + r;
      if (i0 + r < seq) {
        const int64_t idx = (b * a.heads + h) * seq + i0 + r;
        cp_async<4>(dst, is_lse ? a.lse + idx : p.g_di + idx);
      } else {
        *dst = is_lse ? INFINITY : 0.f;  // P = exp2(· − inf) = 0 for rows past T
      }
    }
    cp_async_commit();
  };

  float r_dk[kNb][4] = {};           // dK_w: 16 keys × D, unscaled
  float r_dv[kNb][4] = {};           // dV_w: 16 keys × D
  const int key_w = j0 + 16 * warp;  // this warp's first key
  const int l = lane_id(), g = l / 4, t = l % 4;
  // Packed documents: the queries that see this thread's keys (rows g, g + 8) end at
  // query_end, and those of the warp's keys at its last key's (the warp's largest).
  const int query_end[2] = {document_bound(a.query_end, int(b), key_w + g, seq, seq),
                            document_bound(a.query_end, int(b), key_w + g + 8, seq, seq)};
  const int warp_query_end =
      document_bound(a.query_end, int(b), min(key_w + 15, seq - 1), seq, seq);

  issue(0);
  for (int it = 0; it < n_iter; ++it) {
    pipeline_step(it, n_iter, issue);
    const int st = it % 2, h = head_of(it), i0 = start_of(it);
    const T* sQs = sQ + st * kM * kLd;    // [kM][kLd]
    const T* sdOs = sdO + st * kM * kLd;  // [kM][kLd]
    const float* lse_s = sLse + st * kM;
    const float* di_s = sDi + st * kM;

#pragma unroll
    for (int c = 0; c < kM / 16; ++c) {
      const int q_c = i0 + 16 * c;  // the chunk's first query
      // Warp-uniform skips: the chunk is past T, (causal) every key of the warp is later than
      // every query of the chunk, or the chunk starts past the documents of the warp's keys.
      // dSᵀ is then 0.
      const bool skip = q_c >= seq || (kCausal && q_c + 15 < key_w) || q_c >= warp_query_end;
      uint32_t r_ds[4] = {0u, 0u, 0u, 0u};  // dSᵀ as an A operand (16 keys × 16 queries)
      if (!skip) {
        float r_s[2][4] = {}, r_dp[2][4] = {};  // Sᵀ, dPᵀ: 16 keys × 16 queries
#pragma unroll
        for (int k0 = 0; k0 < D; k0 += 16) {
          uint32_t r_a[4], r_b[4];
          load_a<T>(r_a, sK, kLd, 16 * warp, k0);
          load_b_nk<T>(r_b, sQs, kLd, 16 * c, k0);
          mma<T>(r_s[0], r_a, r_b[0], r_b[1]);
          mma<T>(r_s[1], r_a, r_b[2], r_b[3]);
          load_a<T>(r_a, sV, kLd, 16 * warp, k0);
          load_b_nk<T>(r_b, sdOs, kLd, 16 * c, k0);
          mma<T>(r_dp[0], r_a, r_b[0], r_b[1]);
          mma<T>(r_dp[1], r_a, r_b[2], r_b[3]);
        }
        softmax_grad_tile<kCausal, true>(
            r_s, r_dp, key_w, q_c, seq, query_end, p.scale_log2,
            [&](int q) { return lse_s[16 * c + q] * kLog2e; },
            [&](int q) { return di_s[16 * c + q]; });
        uint32_t r_p[4];
        acc_to_a<T>(r_p, r_s, 0);
        acc_to_a<T>(r_ds, r_dp, 0);
#pragma unroll
        for (int n0 = 0; n0 < D; n0 += 16) {
          uint32_t r_b[4];
          load_b_kn<T>(r_b, sdOs, kLd, 16 * c, n0);
          mma<T>(r_dv[n0 / 8], r_p, r_b[0], r_b[1]);
          mma<T>(r_dv[n0 / 8 + 1], r_p, r_b[2], r_b[3]);
          load_b_kn<T>(r_b, sQs, kLd, 16 * c, n0);
          mma<T>(r_dk[n0 / 8], r_ds, r_b[0], r_b[1]);
          mma<T>(r_dk[n0 / 8 + 1], r_ds, r_b[2], r_b[3]);
        }
      }
      if constexpr (kAtomicDq) {
        // The A fragment's registers are (row g | g + 8, columns 2t | 2t + 8) pairs.
        T* row_lo = sdS + (16 * warp + g) * kLdS + 16 * c + 2 * t;
        T* row_hi = row_lo + 8 * kLdS;
        st_shared(reinterpret_cast<uint32_t*>(row_lo), r_ds[0]);
        st_shared(reinterpret_cast<uint32_t*>(row_hi), r_ds[1]);
        st_shared(reinterpret_cast<uint32_t*>(row_lo + 8), r_ds[2]);
        st_shared(reinterpret_cast<uint32_t*>(row_hi + 8), r_ds[3]);
      }
    }

    if constexpr (kAtomicDq) {
      __syncthreads();  // sdS complete
      // dQ (32 queries × D) += dS (32 × 64 keys) · K (64 × D); warp w: columns 16w + 64j.
      constexpr int kJ = (D + 63) / 64;
      float r_dq[kJ][2][2][4] = {};  // [column block][query m-tile][n8 half][4]
#pragma unroll
      for (int k0 = 0; k0 < kN; k0 += 16) {
        uint32_t r_a0[4], r_a1[4];
        load_a_trans<T>(r_a0, sdS, kLdS, 0, k0);
        load_a_trans<T>(r_a1, sdS, kLdS, 16, k0);
#pragma unroll
        for (int j = 0; j < kJ; ++j) {
          const int n0 = 16 * warp + 64 * j;
          if (n0 < D) {
            uint32_t r_b[4];
            load_b_kn<T>(r_b, sK, kLd, k0, n0);
            mma<T>(r_dq[j][0][0], r_a0, r_b[0], r_b[1]);
            mma<T>(r_dq[j][0][1], r_a0, r_b[2], r_b[3]);
            mma<T>(r_dq[j][1][0], r_a1, r_b[0], r_b[1]);
            mma<T>(r_dq[j][1][1], r_a1, r_b[2], r_b[3]);
          }
        }
      }
#pragma unroll
      for (int m = 0; m < 2; ++m) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int q = i0 + 16 * m + g + 8 * half;
          if (q >= seq) continue;
          float* g_row = p.g_dq_acc + ((b * seq + q) * a.heads + h) * D + 2 * t;  // [D]
#pragma unroll
          for (int j = 0; j < kJ; ++j) {
            const int n0 = 16 * warp + 64 * j;
            if (n0 >= D) continue;
#pragma unroll
            for (int nh = 0; nh < 2; ++nh) {
              atomicAdd(g_row + n0 + 8 * nh, r_dq[j][m][nh][2 * half]);
              atomicAdd(g_row + n0 + 8 * nh + 1, r_dq[j][m][nh][2 * half + 1]);
            }
          }
        }
      }
    }
    __syncthreads();  // the stage (and sdS) computed on is overwritten next
  }

  const float scale = a.scale;
  store_acc<T, kNb>(a.dk + b * a.dk_s.b + int64_t(j0) * a.dk_s.t + kvh * a.dk_s.h, a.dk_s.t,
                    16 * warp, seq - j0, r_dk, scale, scale);
  store_acc<T, kNb>(a.dv + b * a.dv_s.b + int64_t(j0) * a.dv_s.t + kvh * a.dv_s.h, a.dv_s.t,
                    16 * warp, seq - j0, r_dv, 1.f, 1.f);
}

// ---- 3. deterministic dQ ------------------------------------------------------------------------

/// Block (query tile, head, batch), heaviest causal tiles first; warp w owns queries
/// 16w..16w+15. Per key tile of 32 and 16-key chunk c: S = Q_w·K_cᵀ, dP = dO_w·V_cᵀ, then
/// dQ_w += dS·K_c. Q_w and dO_w stay in registers as A fragments: their tiles pass through the
/// K/V stages first, and only K and V tiles stream through shared memory after that (half the
/// shared memory of separate Q and dO tiles, for one wait at the start). Every dQ element is
/// summed by one thread in a fixed order.
template <class T, int D, bool kCausal>
__global__ void __launch_bounds__(kBwdThreads) attn_bwd_dq(AttnBwdParams<T> p) {
  using Cfg = AttnBwdQConfig<D>;
  constexpr int kM = Cfg::kBlockM, kN = Cfg::kBlockN, kLd = attn_row_stride(D);
  constexpr int kNb = D / 8;
  static_assert(kM == 4 * 16 && kN == 2 * 16 && Cfg::kStages == 2,
                "4 warps × 16 queries, 2 chunks of 16 keys, 2 stages");
  static_assert(D % 16 == 0, "head_dim is a whole number of mma k-steps");
  const AttentionParams<T>& a = p.a;
  const int seq = a.seq, warp = warp_id(), tid = int(threadIdx.x);
  const int q0 = (int(gridDim.x) - 1 - int(blockIdx.x)) * kM;  // causal: heaviest first
  const int h = int(blockIdx.y), kvh = h / p.group;
  const int64_t b = blockIdx.z;

  T* sK = dynamic_smem<T>();                                  // [2][kN][kLd]
  T* sV = sK + 2 * kN * kLd;                                  // [2][kN][kLd]
  float* sLse = reinterpret_cast<float*>(sV + 2 * kN * kLd);  // [kM] lse·log2 e; +inf past T
  float* sDi = sLse + kM;                                     // [kM]; 0 past T
  T* sQ = sK;              // [kM][kLd], in the K/V stages until its fragments are loaded
  T* sdO = sQ + kM * kLd;  // [kM][kLd], likewise

  load_tile<T, D, kM, kBwdThreads>(sQ, a.q + b * a.q_s.b + int64_t(q0) * a.q_s.t + h * a.q_s.h,
                                   a.q_s.t, seq - q0);
  load_tile<T, D, kM, kBwdThreads>(
      sdO, a.dout + b * a.dout_s.b + int64_t(q0) * a.dout_s.t + h * a.dout_s.h, a.dout_s.t,
      seq - q0);
  cp_async_commit();
  {
    const int r = tid % kM, q = q0 + r;
    const int64_t idx = (b * a.heads + h) * seq + q;
    if (tid < kM) {
      sLse[r] = q < seq ? a.lse[idx] * kLog2e : INFINITY;
    } else {
      sDi[r] = q < seq ? p.g_di[idx] : 0.f;
    }
  }

  const int k_end = kCausal ? min(seq, q0 + kM) : seq;  // causal: later keys are masked
  const int n_iter = int(ceil_div(k_end, kN));
  // Packed documents: key tiles before the document of the block's first row (the block's
  // earliest start) are masked for every row, so the walk starts at the tile holding it.
  const int it_first = max(0, document_bound(a.key_start, int(b), q0, seq, 0)) / kN;
  auto issue = [&](int it) {
    const int st = it % 2, j0 = it * kN;
    load_tile<T, D, kN, kBwdThreads>(sK + st * kN * kLd,
                                     a.k + b * a.k_s.b + int64_t(j0) * a.k_s.t + kvh * a.k_s.h,
                                     a.k_s.t, seq - j0);
    load_tile<T, D, kN, kBwdThreads>(sV + st * kN * kLd,
                                     a.v + b * a.v_s.b + int64_t(j0) * a.v_s.t + kvh * a.v_s.h,
                                     a.v_s.t, seq - j0);
    cp_async_commit();
  };

  float r_dq[kNb][4] = {};                   // dQ_w: 16 queries × D, unscaled
  uint32_t r_q[D / 16][4], r_do[D / 16][4];  // Q_w, dO_w as A fragments, loaded once
  const int query_w = q0 + 16 * warp;
  // The first keys of this thread's queries (rows g, g + 8) and of the warp's first (smallest).
  const int g = lane_id() / 4;
  const int first_key[2] = {document_bound(a.key_start, int(b), query_w + g, seq, 0),
                            document_bound(a.key_start, int(b), query_w + g + 8, seq, 0)};
  const int warp_first_key = document_bound(a.key_start, int(b), query_w, seq, 0);
  cp_async_wait<0>();  // Q and dO have landed (and, after the barrier, lse and Di are seen)
  __syncthreads();
#pragma unroll
  for (int k0 = 0; k0 < D; k0 += 16) {
    load_a<T>(r_q[k0 / 16], sQ, kLd, 16 * warp, k0);
    load_a<T>(r_do[k0 / 16], sdO, kLd, 16 * warp, k0);
  }
  __syncthreads();  // every warp holds its fragments: the first K and V may take their place
  issue(it_first);
  for (int it = it_first; it < n_iter; ++it) {
    pipeline_step(it, n_iter, issue);
    const int st = it % 2, j0 = it * kN;
    const T* sKs = sK + st * kN * kLd;  // [kN][kLd]
    const T* sVs = sV + st * kN * kLd;  // [kN][kLd]
    // Warp-uniform: the warp's rows past T contribute nothing.
    if (query_w < seq) {
#pragma unroll
      for (int c = 0; c < kN / 16; ++c) {
        const int k_c = j0 + 16 * c;
        // All masked: past T, (causal) past the warp's last query, or before its documents.
        if (k_c >= seq || (kCausal && k_c > query_w + 15) || k_c + 15 < warp_first_key) {
          continue;
        }
        float r_s[2][4] = {}, r_dp[2][4] = {};  // S, dP: 16 queries × 16 keys
#pragma unroll
        for (int k0 = 0; k0 < D; k0 += 16) {
          uint32_t r_b[4];
          load_b_nk<T>(r_b, sKs, kLd, 16 * c, k0);
          mma<T>(r_s[0], r_q[k0 / 16], r_b[0], r_b[1]);
          mma<T>(r_s[1], r_q[k0 / 16], r_b[2], r_b[3]);
          load_b_nk<T>(r_b, sVs, kLd, 16 * c, k0);
          mma<T>(r_dp[0], r_do[k0 / 16], r_b[0], r_b[1]);
          mma<T>(r_dp[1], r_do[k0 / 16], r_b[2], r_b[3]);
        }
        softmax_grad_tile<kCausal, false>(
            r_s, r_dp, query_w, k_c, seq, first_key, p.scale_log2,
            [&](int q) { return sLse[16 * warp + q]; }, [&](int q) { return sDi[16 * warp + q]; });
        uint32_t r_ds[4];
        acc_to_a<T>(r_ds, r_dp, 0);
#pragma unroll
        for (int n0 = 0; n0 < D; n0 += 16) {
          uint32_t r_b[4];
          load_b_kn<T>(r_b, sKs, kLd, 16 * c, n0);
          mma<T>(r_dq[n0 / 8], r_ds, r_b[0], r_b[1]);
          mma<T>(r_dq[n0 / 8 + 1], r_ds, r_b[2], r_b[3]);
        }
      }
    }
    __syncthreads();  // the stage computed on is overwritten next
  }

  const float scale = a.scale;
  store_acc<T, kNb>(a.dq + b * a.dq_s.b + int64_t(q0) * a.dq_s.t + h * a.dq_s.h, a.dq_s.t,
                    16 * warp, seq - q0, r_dq, scale, scale);
}

// ---- 4. dq = T(scale · accumulator) -------------------------------------------------------------

template <class T, int D>
__global__ void __launch_bounds__(kBwdThreads) attn_bwd_convert_dq(AttnBwdParams<T> p) {
  constexpr int kVec = 8;  // 16 bytes of T out, two float4 in
  static_assert(D % kVec == 0, "whole packs per row");
  const AttentionParams<T>& a = p.a;
  const int64_t n = int64_t(a.batch) * a.seq * a.heads * (D / kVec);
  for (int64_t i = int64_t(blockIdx.x) * kBwdThreads + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kBwdThreads) {
    const int64_t r = i / (D / kVec);  // (b · T + t) · H + h
    const int c = int(i % (D / kVec)) * kVec;
    const int h = int(r % a.heads), t = int(r / a.heads % a.seq);
    const int64_t b = r / a.heads / a.seq;
    const float4* src = reinterpret_cast<const float4*>(p.g_dq_acc + r * D + c);
    const float4 x = src[0], y = src[1];
    const float v[kVec] = {x.x, x.y, x.z, x.w, y.x, y.y, y.z, y.w};
    Pack<T, kVec> out;
#pragma unroll
    for (int e = 0; e < kVec; ++e) out.v[e] = from_float<T>(v[e] * a.scale);
    *reinterpret_cast<Pack<T, kVec>*>(a.dq + b * a.dq_s.b + t * a.dq_s.t + h * a.dq_s.h + c) = out;
  }
}

}  // namespace nuri::kernels::attn
