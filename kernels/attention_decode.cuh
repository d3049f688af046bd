// Attention for decoding with a key/value cache: a few new query rows against every cached key.
//
// The design choice: decoding reads each cached key and value once per query row and does two
// multiply-adds per element read, so it is bound by memory, not by tensor cores, and the tiled
// kernels (attention_fwd.cuh) would spend a 64-row tile on one row. Here a block owns one
// (batch, query head, query row) and a share of the keys that row sees; its warps take every
// kWarps-th key of that share, each lane holding D/32 (rounded up) columns of the row: a key's
// score is one warp-wide sum, the softmax is online per warp (running max, sum and output), and
// the warps' partial results are merged through shared memory at the end. A warp's lanes read
// consecutive columns of a key row, so each row is read in whole sectors.
//
// One row of a few heads is few blocks for a GPU (GPT-2 small: 12 blocks on 132 SMs), so the
// keys are split over several blocks when the rows alone would leave SMs idle (split-K, as
// FlashDecoding does): each block then writes its maximum, sum and unnormalized output row to a
// workspace, and attention_decode_merge_kernel weighs the splits' rows by exp(max - overall
// max) into the output.
#pragma once

#include "attention_decode.h"
#include "common.cuh"

namespace nuri::kernels {

constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * 32;
constexpr int kDecodePerLane = kDecodeMaxHeadDim / 32;

/// Dynamic shared memory: per warp its running max, sum and output row.
constexpr size_t attention_decode_smem(int head_dim) {
  return size_t(kDecodeWarps) * size_t(2 + head_dim) * sizeof(float);
}

/// A split's partial result in the workspace, for block (x = row · H + head, b, split): its
/// output row (not yet divided by its sum) among the rows [B, Tq · H, splits, D], then its
/// maximum and sum among the pairs [B, Tq · H, splits, 2] after them (rows apart from the pairs
/// keep the rows' loads in whole sectors).
struct DecodePartial {
  float* row;
  float* max_sum;
};
template <class T>
__device__ inline DecodePartial decode_partial(const AttentionDecodeParams<T>& p, int x, int b,
                                               int split) {
  const int64_t rows_heads = int64_t(p.q_rows) * p.heads;
  const int64_t index = (b * rows_heads + x) * p.splits + split;
  const int64_t all = p.batch * rows_heads * p.splits;
  return {p.partial + index * p.head_dim, p.partial + all * p.head_dim + 2 * index};
}

/// Grid (Tq · H, B, splits); block kDecodeThreads.
template <class T>
__global__ void __launch_bounds__(kDecodeThreads)
    attention_decode_kernel(const AttentionDecodeParams<T> p) {
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int i = int(blockIdx.x) / p.heads, h = int(blockIdx.x) % p.heads, b = int(blockIdx.y);
  const int split = int(blockIdx.z);
  const int g = h / (p.heads / p.kv_heads), d = p.head_dim;
  const int row = p.keys - p.q_rows + i;  // the query's row of the sequence
  const int k_end = p.causal ? row + 1 : p.keys;
  // (Clamped as the tiled kernels clamp it: bounds that break the rules give wrong values, not
  // out-of-bounds reads, and every query sees at least itself.)
  const int k_first =
      p.key_start ? min(max(p.key_start[int64_t(b) * p.keys + row], 0), k_end - 1) : 0;
  // This block's share of the visible keys [k_first, k_end): a contiguous chunk, empty for the
  // last splits when the row sees fewer keys than there are splits.
  const int chunk = (k_end - k_first + p.splits - 1) / p.splits;
  const int k_begin = int(min(int64_t(k_first) + int64_t(split) * chunk, int64_t(k_end)));
  const int k_stop = int(min(int64_t(k_begin) + chunk, int64_t(k_end)));

  float rQ[kDecodePerLane], rAcc[kDecodePerLane];
  const T* gQ = p.q + b * p.q_s.b + i * p.q_s.t + h * p.q_s.h;
#pragma unroll
  for (int u = 0; u < kDecodePerLane; ++u) {
    const int e = lane + 32 * u;
    rQ[u] = e < d ? to_float(ld_global(gQ + e)) * p.scale : 0.f;
    rAcc[u] = 0.f;
  }
  float run_max = -INFINITY, run_sum = 0.f;
  for (int j = k_begin + warp; j < k_stop; j += kDecodeWarps) {  // warp-uniform
    const T* gK = p.k + b * p.k_s.b + int64_t(j) * p.k_s.t + g * p.k_s.h;
    float dot = 0.f;
#pragma unroll
    for (int u = 0; u < kDecodePerLane; ++u) {
      const int e = lane + 32 * u;
      if (e < d) dot = fmaf(rQ[u], to_float(ld_global(gK + e)), dot);
    }
    const float s = warp_sum(dot);
    const float next_max = fmaxf(run_max, s);
    const float alpha = expf(run_max - next_max);  // 0 before the warp's first key
    const float prob = expf(s - next_max);
    run_sum = run_sum * alpha + prob;
    run_max = next_max;
    const T* gV = p.v + b * p.v_s.b + int64_t(j) * p.v_s.t + g * p.v_s.h;
#pragma unroll
    for (int u = 0; u < kDecodePerLane; ++u) {
      const int e = lane + 32 * u;
      if (e < d) rAcc[u] = fmaf(prob, to_float(ld_global(gV + e)), rAcc[u] * alpha);
    }
  }

  // sMax [kDecodeWarps], sSum [kDecodeWarps], sAcc [kDecodeWarps][D].
  float* sMax = dynamic_smem<float>();
  float* sSum = sMax + kDecodeWarps;
  float* sAcc = sSum + kDecodeWarps;
  if (lane == 0) {
    sMax[warp] = run_max;
    sSum[warp] = run_sum;
  }
#pragma unroll
  for (int u = 0; u < kDecodePerLane; ++u) {
    const int e = lane + 32 * u;
    if (e < d) sAcc[warp * d + e] = rAcc[u];
  }
  __syncthreads();
  // A warp that saw no key has max -inf and sum 0: its weight exp(-inf - m) is 0. Every query
  // sees at least itself (causal) or every key (full), so m is finite unless the split is
  // empty (-inf: its weights are then 0, not exp(-inf + inf)).
  float m = -INFINITY;
  for (int w = 0; w < kDecodeWarps; ++w) m = fmaxf(m, sMax[w]);
  float total = 0.f, weight[kDecodeWarps];
  for (int w = 0; w < kDecodeWarps; ++w) {
    weight[w] = m == -INFINITY ? 0.f : expf(sMax[w] - m);
    total += sSum[w] * weight[w];
  }
  if (p.splits > 1) {  // the partial result, merged by attention_decode_merge_kernel
    const DecodePartial part = decode_partial(p, int(blockIdx.x), b, split);
    if (threadIdx.x == 0) {
      st_global(part.max_sum, m);
      st_global(part.max_sum + 1, total);
    }
    for (int e = int(threadIdx.x); e < d; e += kDecodeThreads) {
      float o = 0.f;
      for (int w = 0; w < kDecodeWarps; ++w) o = fmaf(sAcc[w * d + e], weight[w], o);
      st_global(part.row + e, o);
    }
    return;
  }
  const float inv = 1.f / total;
  T* gOut = p.out + b * p.out_s.b + i * p.out_s.t + h * p.out_s.h;
  for (int e = int(threadIdx.x); e < d; e += kDecodeThreads) {
    float o = 0.f;
    for (int w = 0; w < kDecodeWarps; ++w) o = fmaf(sAcc[w * d + e], weight[w], o);
    st_global(gOut + e, from_float<T>(o * inv));
  }
}

/// The splits' partial results of a row merged into its output: grid (Tq · H, B); block
/// kDecodeThreads, each thread weighing every split (at most kDecodeMaxSplits) for its columns.
template <class T>
__global__ void __launch_bounds__(kDecodeThreads)
    attention_decode_merge_kernel(const AttentionDecodeParams<T> p) {
  const int x = int(blockIdx.x), b = int(blockIdx.y), d = p.head_dim;
  const int i = x / p.heads, h = x % p.heads;
  const DecodePartial first = decode_partial(p, x, b, 0);
  float m = -INFINITY;  // finite: some split saw the row's keys
  for (int s = 0; s < p.splits; ++s) m = fmaxf(m, ld_global(first.max_sum + 2 * s));
  float total = 0.f;
  for (int s = 0; s < p.splits; ++s) {
    const float ms = ld_global(first.max_sum + 2 * s);
    if (ms != -INFINITY) total = fmaf(ld_global(first.max_sum + 2 * s + 1), expf(ms - m), total);
  }
  const float inv = 1.f / total;
  T* gOut = p.out + b * p.out_s.b + i * p.out_s.t + h * p.out_s.h;
  for (int e = int(threadIdx.x); e < d; e += kDecodeThreads) {
    float o = 0.f;
    for (int s = 0; s < p.splits; ++s) {
      const float ms = ld_global(first.max_sum + 2 * s);
      if (ms != -INFINITY) o = fmaf(ld_global(first.row + int64_t(s) * d + e), expf(ms - m), o);
    }
    st_global(gOut + e, from_float<T>(o * inv));
  }
}

}  // namespace nuri::kernels
