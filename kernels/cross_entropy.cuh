// Softmax cross-entropy over a padded vocabulary: one block per row reads the row once with an
// online log-sum-exp (each thread keeps a running (max, sum) over its strided columns; the block
// merges the pairs), so the logits are never re-read for the max. Columns >= vocab never enter.
// The mean loss is a second, one-block kernel that sums the per-row losses in a fixed order
// (deterministic, no float atomics). A tiny scan of the targets (count of rows that count, first
// bad target) runs first so the host can reject bad targets before anything is written.
//
// Loads are 16 bytes (8 bf16 or 4 f32) when every row starts 16-byte aligned; otherwise scalar.
//
// Vocabulary-parallel (tensor parallelism): the same row kernels run on a shard's columns
// [col_lo, col_lo + Vl) (col_lo = 0 and the whole row for the plain ops); ce_merge combines the
// shards' per-row lse and loss terms, one thread per row, in double like the CPU backend.
#pragma once

#include "common.cuh"

namespace nuri::kernels {

constexpr int kCeThreads = 256;      // per row block; a multiple of 32
constexpr int kCeScanThreads = 256;  // the one-block kernels (a few µs over 1e5 rows)
constexpr int kCeMergeThreads = 256;  // one thread per row
static_assert(kCeThreads % kWarpSize == 0 && kCeScanThreads % kWarpSize == 0,
              "block reductions need whole warps");

/// What the target scan reports (in device memory; copied back by the host).
struct CeScanResult {
  int32_t count;       // rows whose target is not ignore_index
  int32_t bad_row;     // first row with a target outside [0, vocab) that is not ignored; N if none
  int32_t bad_target;  // its target (valid only when bad_row < N)
};

struct CeScanParams {
  const int32_t* g_targets;  // [N]
  CeScanResult* g_result;    // [1]
  int64_t n;
  int64_t vocab;
  int32_t ignore_index;
};

template <class T>
struct CeForwardParams {
  const T* g_logits;         // [N, Vp]: the vocabulary ids [col_lo, col_lo + Vp)
  const int32_t* g_targets;  // [N]: ids of the whole vocabulary [0, vocab_size)
  float* g_losses;           // [N]
  float* g_lse;              // [N]
  int64_t vp;                // padded row length
  int64_t vocab;             // real columns of the row: [0, vocab) (may be 0: lse = -inf)
  int64_t col_lo;            // vocabulary id of column 0 (0 for the whole vocabulary)
  int64_t vocab_size;        // whole vocabulary: a target outside this row's columns gives lse
  int32_t ignore_index;
  bool vec;  // rows 16-byte aligned: vector loads
};

struct CeLossParams {
  const float* g_losses;  // [N]
  float* g_loss;          // [1]
  int64_t n;
  int64_t count;  // rows that count; the loss is 0 if none
};

template <class T>
struct CeBackwardParams {
  const T* g_logits;         // [N, Vp]: the vocabulary ids [col_lo, col_lo + Vp)
  const int32_t* g_targets;  // [N]: ids of the whole vocabulary
  const float* g_lse;        // [N]: the whole row's
  T* g_dlogits;              // [N, Vp]; may alias g_logits (each element read, then written)
  int64_t vp;
  int64_t vocab;   // real columns of the row: [0, vocab)
  int64_t col_lo;  // vocabulary id of column 0: the onehot is at target - col_lo
  int32_t ignore_index;
  float scale;  // dloss / count (0 if no row counts)
  bool vec;
};

struct CeMergeParams {
  const float* g_part_lse;     // [S, N]: each shard's lse (-inf for a shard without real columns)
  const float* g_part_losses;  // [S, N]: each shard's losses
  const int32_t* g_targets;    // [N]
  float* g_losses;             // [N]
  float* g_lse;                // [N]
  int64_t shards;              // S
  int64_t n;                   // N
  int32_t ignore_index;
};

/// 16 bytes of T, for vector loads and stores.
template <class T>
struct alignas(16) Pack16 {
  static constexpr int kN = 16 / int(sizeof(T));
  T v[kN];
};

// ---- (max, sum) pairs: sum = Σ exp(x - max) over the values seen -------------------------------

/// Folds (m2, s2) into (m, s). A side that has seen nothing is (-inf, 0) and contributes 0 (the
/// guard keeps exp(-inf - -inf) = NaN out).
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
  const float mx = fmaxf(m, m2);
  const float a = m == -INFINITY ? 0.f : s * expf(m - mx);
  const float b = m2 == -INFINITY ? 0.f : s2 * expf(m2 - mx);
  m = mx;
  s = a + b;
}

/// Adds values whose maximum is `chunk_max` to (m, s): one rescale per chunk, not per value.
__device__ __forceinline__ void lse_rescale(float& m, float& s, float chunk_max) {
  if (chunk_max > m) {
    s = m == -INFINITY ? 0.f : s * expf(m - chunk_max);
    m = chunk_max;
  }
}

// ---- kernels ------------------------------------------------------------------------------------

/// One block: count of the rows that count and the first bad target (integers: any order gives
/// the same answer).
__global__ void __launch_bounds__(kCeScanThreads) ce_scan_targets(CeScanParams p) {
  int* s_red = dynamic_smem<int>();  // [2 * warps]: counts, then first bad rows
  const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  int count = 0;
  int bad = int(p.n);
  for (int64_t i = tid; i < p.n; i += blockDim.x) {
    const int32_t t = p.g_targets[i];
    if (t == p.ignore_index) continue;
    ++count;
    if ((t < 0 || t >= p.vocab) && i < bad) bad = int(i);
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    count += __shfl_xor_sync(kFullMask, count, offset);
    const int other = __shfl_xor_sync(kFullMask, bad, offset);
    bad = other < bad ? other : bad;
  }
  if (lane == 0) {
    s_red[warp] = count;
    s_red[warps + warp] = bad;
  }
  __syncthreads();
  if (warp == 0) {
    count = lane < warps ? s_red[lane] : 0;
    bad = lane < warps ? s_red[warps + lane] : int(p.n);
    for (int offset = 16; offset > 0; offset >>= 1) {
      count += __shfl_xor_sync(kFullMask, count, offset);
      const int other = __shfl_xor_sync(kFullMask, bad, offset);
      bad = other < bad ? other : bad;
    }
    if (lane == 0) {
      p.g_result->count = count;
      p.g_result->bad_row = bad;
      p.g_result->bad_target = bad < p.n ? p.g_targets[bad] : 0;
    }
  }
}

/// grid = N rows, block = kCeThreads: lse[row] and losses[row] (0 where ignored).
template <class T>
__global__ void __launch_bounds__(kCeThreads) ce_forward(CeForwardParams<T> p) {
  float* s_red = dynamic_smem<float>();  // [2 * warps]: per-warp max, then per-warp sum
  const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  const int64_t row = blockIdx.x;
  const T* g_row = p.g_logits + row * p.vp;

  float m = -INFINITY, s = 0.f;  // over this thread's columns
  int64_t j0 = 0;                // first column of the scalar tail
  if (p.vec) {
    constexpr int kN = Pack16<T>::kN;
    const int64_t packs = p.vocab / kN;  // whole packs of real columns
    const Pack16<T>* g_packs = reinterpret_cast<const Pack16<T>*>(g_row);
    for (int64_t k = tid; k < packs; k += blockDim.x) {
      const Pack16<T> r = g_packs[k];
      float x[kN];
      float cmax = -INFINITY;
#pragma unroll
      for (int e = 0; e < kN; ++e) {
        x[e] = to_float(r.v[e]);
        cmax = fmaxf(cmax, x[e]);
      }
      lse_rescale(m, s, cmax);
#pragma unroll
      for (int e = 0; e < kN; ++e) s += expf(x[e] - m);
    }
    j0 = packs * kN;
  }
  for (int64_t j = j0 + tid; j < p.vocab; j += blockDim.x) {
    const float x = to_float(g_row[j]);
    lse_rescale(m, s, x);
    s += expf(x - m);
  }

  for (int offset = 16; offset > 0; offset >>= 1) {
    const float m2 = __shfl_xor_sync(kFullMask, m, offset);
    const float s2 = __shfl_xor_sync(kFullMask, s, offset);
    lse_merge(m, s, m2, s2);
  }
  if (lane == 0) {
    s_red[warp] = m;
    s_red[warps + warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    m = lane < warps ? s_red[lane] : -INFINITY;
    s = lane < warps ? s_red[warps + lane] : 0.f;
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float m2 = __shfl_xor_sync(kFullMask, m, offset);
      const float s2 = __shfl_xor_sync(kFullMask, s, offset);
      lse_merge(m, s, m2, s2);
    }
    if (lane == 0) {
      const float lse = m + logf(s);
      const int32_t t = p.g_targets[row];
      float loss = 0.f;
      if (t != p.ignore_index) {
        // The host rejected bad targets; NaN marks one that slipped through, never a bad read.
        // A target in another shard's columns leaves lse (its owner subtracts the logit).
        const int64_t j = int64_t(t) - p.col_lo;
        if (j >= 0 && j < p.vocab) {
          loss = lse - to_float(g_row[j]);
        } else {
          loss = t >= 0 && t < p.vocab_size ? lse : NAN;
        }
      }
      p.g_lse[row] = lse;
      p.g_losses[row] = loss;
    }
  }
}

/// One block: loss = Σ losses / count, each thread summing a fixed strided subset in order,
/// then a fixed tree (deterministic).
__global__ void __launch_bounds__(kCeScanThreads) ce_mean_loss(CeLossParams p) {
  float* s_red = dynamic_smem<float>();  // [32]
  float acc = 0.f;
  for (int64_t i = threadIdx.x; i < p.n; i += blockDim.x) acc += p.g_losses[i];
  const float total = block_sum(acc, s_red);
  if (threadIdx.x == 0) p.g_loss[0] = p.count > 0 ? total / float(p.count) : 0.f;
}

/// grid = N rows, block = kCeThreads: dlogits = scale · (softmax - onehot) on real columns of
/// rows that count, 0 elsewhere.
template <class T>
__global__ void __launch_bounds__(kCeThreads) ce_backward(CeBackwardParams<T> p) {
  const int tid = threadIdx.x;
  const int64_t row = blockIdx.x;
  const T* g_row = p.g_logits + row * p.vp;
  T* g_drow = p.g_dlogits + row * p.vp;
  const int32_t t = p.g_targets[row];
  const bool counts = t != p.ignore_index;
  const float lse = p.g_lse[row];
  const float scale = counts ? p.scale : 0.f;
  const int64_t tj = int64_t(t) - p.col_lo;  // the target's column (outside [0, vocab): none)
  // The same float operations as the CPU backend: scale·exp(x - lse), then minus scale at t.
  auto grad = [&](float x, int64_t j) {
    float d = j < p.vocab ? scale * expf(x - lse) : 0.f;
    if (j == tj) d -= scale;
    return d;
  };
  int64_t j0 = 0;
  if (p.vec) {
    constexpr int kN = Pack16<T>::kN;
    const int64_t packs = p.vp / kN;
    const Pack16<T>* g_packs = reinterpret_cast<const Pack16<T>*>(g_row);
    Pack16<T>* g_dpacks = reinterpret_cast<Pack16<T>*>(g_drow);
    for (int64_t k = tid; k < packs; k += blockDim.x) {
      Pack16<T> r;
      if (counts) {
        r = g_packs[k];
#pragma unroll
        for (int e = 0; e < kN; ++e) r.v[e] = from_float<T>(grad(to_float(r.v[e]), k * kN + e));
      } else {  // ignored rows are only written
#pragma unroll
        for (int e = 0; e < kN; ++e) r.v[e] = from_float<T>(0.f);
      }
      g_dpacks[k] = r;
    }
    j0 = packs * kN;
  }
  for (int64_t j = j0 + tid; j < p.vp; j += blockDim.x) {
    g_drow[j] = from_float<T>(counts ? grad(to_float(g_row[j]), j) : 0.f);
  }
}

/// One thread per row: lse = log Σ_s exp(part_lse[s]) and the target logit Σ_s (part_lse[s] -
/// part_losses[s]) (0 except on the target's owner), in double as the CPU backend; losses = lse
/// - target logit, 0 where ignored.
__global__ void __launch_bounds__(kCeMergeThreads) ce_merge(CeMergeParams p) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= p.n) return;
  // A shard without real columns has lse = -inf: it adds nothing and owns no target (its
  // lse - loss would be -inf - -inf = NaN). A NaN lse wins the max and propagates.
  double mx = -INFINITY;
  for (int64_t s = 0; s < p.shards; ++s) {
    const double v = p.g_part_lse[s * p.n + row];
    if (v > mx || v != v) mx = v;
  }
  double sum = 0.0, target_logit = 0.0;
  for (int64_t s = 0; s < p.shards; ++s) {
    const float v = p.g_part_lse[s * p.n + row];
    if (v == -INFINITY) continue;
    sum += exp(double(v) - mx);
    target_logit += double(v) - double(p.g_part_losses[s * p.n + row]);
  }
  const double lse = mx == -INFINITY ? mx : mx + log(sum);
  p.g_lse[row] = float(lse);
  p.g_losses[row] = p.g_targets[row] == p.ignore_index ? 0.f : float(lse - target_logit);
}

}  // namespace nuri::kernels
