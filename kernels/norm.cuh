// LayerNorm and RMSNorm fused with the residual add, forward and backward (device code).
//
// A row of C values is handled by a "row group": one warp (C <= kWarpRowMaxC, several rows per
// block) or the whole block (larger C, one row at a time). Each thread of a group owns the same
// packs of columns in every row it touches, so its parameter-gradient partial sums (dweight,
// dbias) need no atomics: per-group accumulators in shared memory, summed over the block's groups
// in a fixed order into a per-block partial, then summed over blocks in a fixed order by a second
// kernel. dweight and dbias depend only on (M, C), never on scheduling or on the device.
//
// Precision: storage T (bf16 or f32), fp32 in registers. The forward normalizes the stored s
// (x + residual rounded to T), so mean/rstd describe exactly the s the backward reads back.
#pragma once

#include "common.cuh"
#include "norm.h"

namespace nuri::kernels::norm {

constexpr int kWarpRowMaxC = 1024;  // above this C, a whole block works on one row
constexpr int kForwardThreads = 256;
constexpr int kBlockRowThreads = 256;
constexpr int kMaxThreads = 256;  // every kernel here launches at most this many threads

/// Row-group geometry of the calling thread: warp per row or block per row (uniform per launch).
struct Group {
  int tid;    // index within the group
  int size;   // threads in the group
  int index;  // group within the block
  int count;  // groups per block
};
__device__ __forceinline__ Group row_group(bool block_per_row) {
  const int warp = threadIdx.x / kWarpSize;
  if (block_per_row) return {int(threadIdx.x), int(blockDim.x), 0, 1};
  return {int(threadIdx.x % kWarpSize), kWarpSize, warp, int(blockDim.x / kWarpSize)};
}

/// Sum over the row group. In block mode every thread of the block must call it (it contains
/// barriers); `scratch` is 32 floats of shared memory.
__device__ __forceinline__ float group_sum(float v, bool block_per_row, float* scratch) {
  return block_per_row ? block_sum(v, scratch) : warp_sum(v);
}

// ---- forward ------------------------------------------------------------------------------------

template <class T>
struct NormForwardKernelParams {
  NormForwardParams<T> a;
  bool block_per_row;  // a block per row (else a warp per row)
};

/// One row group per row: s = x (+ r) stored rounded to T, then mean (layernorm), rstd and y.
/// Shared memory: 32 floats of reduction scratch in block mode, none otherwise.
template <class T, bool kCenter, int N>
__global__ void __launch_bounds__(kMaxThreads)
    norm_forward_kernel(const NormForwardKernelParams<T> kp) {
  using P = Pack<T, N>;
  const NormForwardParams<T>& p = kp.a;
  const bool block_per_row = kp.block_per_row;
  float* s_scratch = dynamic_smem<float>();  // [32] block mode only
  const Group g = row_group(block_per_row);
  const int64_t packs = p.c / N;
  const float inv_c = 1.f / float(p.c);
  // The loop bound is uniform over a group, and in block mode the group is the block, so every
  // thread reaches the same barriers.
  for (int64_t row = int64_t(blockIdx.x) * g.count + g.index; row < p.m;
       row += int64_t(gridDim.x) * g.count) {
    const P* gx = reinterpret_cast<const P*>(p.gX + row * p.c);  // [C / N]
    const P* gr = p.gResidual ? reinterpret_cast<const P*>(p.gResidual + row * p.c) : nullptr;
    P* gsum = p.gResidual ? reinterpret_cast<P*>(p.gSum + row * p.c) : nullptr;
    // Passes 2 and 3 re-read s from global memory (the writes of pass 1 are this thread's own,
    // same packs), which stays in L1/L2 at these row sizes.
    const P* gs = gsum ? gsum : gx;

    float total = 0.f;
    for (int64_t q = g.tid; q < packs; q += g.size) {
      P rs = gx[q];
      if (gr) {
        const P rr = gr[q];
#pragma unroll
        for (int e = 0; e < N; ++e) rs.v[e] = from_float<T>(to_float(rs.v[e]) + to_float(rr.v[e]));
        gsum[q] = rs;
      }
      if (kCenter) {
#pragma unroll
        for (int e = 0; e < N; ++e) total += to_float(rs.v[e]);
      }
    }
    const float mean = kCenter ? group_sum(total, block_per_row, s_scratch) * inv_c : 0.f;

    float var = 0.f;
    for (int64_t q = g.tid; q < packs; q += g.size) {
      const P rs = gs[q];
#pragma unroll
      for (int e = 0; e < N; ++e) {
        const float d = to_float(rs.v[e]) - mean;
        var += d * d;
      }
    }
    const float rstd = 1.f / sqrtf(group_sum(var, block_per_row, s_scratch) * inv_c + p.eps);

    const P* gw = reinterpret_cast<const P*>(p.gWeight);  // [C / N]
    const P* gb = p.gBias ? reinterpret_cast<const P*>(p.gBias) : nullptr;
    P* gy = reinterpret_cast<P*>(p.gY + row * p.c);
    for (int64_t q = g.tid; q < packs; q += g.size) {
      const P rs = gs[q], rw = gw[q];
      P ry;
      if (gb) {
        const P rb = gb[q];
#pragma unroll
        for (int e = 0; e < N; ++e) {
          ry.v[e] = from_float<T>((to_float(rs.v[e]) - mean) * rstd * to_float(rw.v[e]) +
                                  to_float(rb.v[e]));
        }
      } else {
#pragma unroll
        for (int e = 0; e < N; ++e) {
          ry.v[e] = from_float<T>((to_float(rs.v[e]) - mean) * rstd * to_float(rw.v[e]));
        }
      }
      gy[q] = ry;
    }
    if (g.tid == 0) {
      if (kCenter) p.gMean[row] = mean;
      p.gRstd[row] = rstd;
    }
  }
}

// ---- backward -----------------------------------------------------------------------------------

template <class T>
struct NormBackwardKernelParams {
  NormBackwardParams<T> a;
  float* gPartial;         // [gridDim.x, acc_cols] per-block sums: dweight (C) | dbias (C)
  float* gScratch;         // [gridDim.x * groups, acc_cols] group accumulators, or null: in smem
  int64_t rows_per_block;  // block b reduces rows [b * rows_per_block, (b + 1) * rows_per_block)
  int64_t acc_cols;        // C, or 2C when dbias is wanted
  bool block_per_row;
};

/// ds = dsum + r · (dxhat − mean(dxhat) − xhat · mean(dxhat · xhat)), dxhat = dy · w,
/// xhat = (s − mean) · r; and the block's partial Σ dy · xhat, Σ dy over its chunk of rows.
/// Shared memory: [groups, acc_cols] accumulators (unless gScratch is given), then in block mode
/// 32 floats of reduction scratch. An accumulator holds column q·N + e at e·(C/N) + q, so the
/// lanes of a warp touch consecutive words (no bank conflicts).
template <class T, bool kCenter, int N>
__global__ void __launch_bounds__(kMaxThreads)
    norm_backward_kernel(const NormBackwardKernelParams<T> p) {
  using P = Pack<T, N>;
  const NormBackwardParams<T>& a = p.a;
  const Group g = row_group(p.block_per_row);
  const int64_t c = a.c, packs = c / N;
  const bool want_dbias = a.gDbias != nullptr;
  float* smem = dynamic_smem<float>();
  float* acc_base = p.gScratch ? p.gScratch + int64_t(blockIdx.x) * g.count * p.acc_cols : smem;
  float* s_scratch = p.gScratch ? smem : smem + g.count * p.acc_cols;  // [32], block mode only
  float* acc = acc_base + int64_t(g.index) * p.acc_cols;               // this group's [acc_cols]

  for (int64_t q = g.tid; q < packs; q += g.size) {
#pragma unroll
    for (int e = 0; e < N; ++e) {
      acc[e * packs + q] = 0.f;
      if (want_dbias) acc[c + e * packs + q] = 0.f;
    }
  }

  const float inv_c = 1.f / float(c);
  const P* gw = reinterpret_cast<const P*>(a.gWeight);  // [C / N]
  const int64_t first = int64_t(blockIdx.x) * p.rows_per_block;
  const int64_t last = first + p.rows_per_block < a.m ? first + p.rows_per_block : a.m;
  for (int64_t row = first + g.index; row < last; row += g.count) {
    const P* gdy = reinterpret_cast<const P*>(a.gDy + row * c);  // [C / N]
    const P* gs = reinterpret_cast<const P*>(a.gS + row * c);
    const float mu = kCenter ? a.gMean[row] : 0.f;
    const float r = a.gRstd[row];
    float sum_dxhat = 0.f, sum_dxhat_xhat = 0.f;
    for (int64_t q = g.tid; q < packs; q += g.size) {
      const P rdy = gdy[q], rs = gs[q], rw = gw[q];
#pragma unroll
      for (int e = 0; e < N; ++e) {
        const float dy = to_float(rdy.v[e]);
        const float xhat = (to_float(rs.v[e]) - mu) * r;
        const float dxhat = dy * to_float(rw.v[e]);
        sum_dxhat += dxhat;
        sum_dxhat_xhat += dxhat * xhat;
        acc[e * packs + q] += dy * xhat;
        if (want_dbias) acc[c + e * packs + q] += dy;
      }
    }
    const float mean_dxhat =
        kCenter ? group_sum(sum_dxhat, p.block_per_row, s_scratch) * inv_c : 0.f;
    const float mean_dxhat_xhat = group_sum(sum_dxhat_xhat, p.block_per_row, s_scratch) * inv_c;

    const P* gdsum = a.gDsum ? reinterpret_cast<const P*>(a.gDsum + row * c) : nullptr;
    P* gds = reinterpret_cast<P*>(a.gDs + row * c);  // may alias gdsum: same thread, read first
    for (int64_t q = g.tid; q < packs; q += g.size) {
      const P rdy = gdy[q], rs = gs[q], rw = gw[q];
      P rd;
      if (gdsum) {
        rd = gdsum[q];
      } else {
#pragma unroll
        for (int e = 0; e < N; ++e) rd.v[e] = from_float<T>(0.f);
      }
#pragma unroll
      for (int e = 0; e < N; ++e) {
        const float xhat = (to_float(rs.v[e]) - mu) * r;
        const float dxhat = to_float(rdy.v[e]) * to_float(rw.v[e]);
        const float v = r * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
        rd.v[e] = from_float<T>(to_float(rd.v[e]) + v);
      }
      gds[q] = rd;
    }
  }

  // Block partial: the groups' accumulators summed in group order, written in column order.
  __syncthreads();
  for (int64_t j = threadIdx.x; j < p.acc_cols; j += blockDim.x) {
    const int64_t part = j >= c ? 1 : 0, col = j - part * c;
    const int64_t slot = part * c + (col % N) * packs + col / N;
    float total = 0.f;
    for (int k = 0; k < g.count; ++k) total += acc_base[k * p.acc_cols + slot];
    p.gPartial[int64_t(blockIdx.x) * p.acc_cols + j] = total;
  }
}

struct NormParamGradParams {
  const float* gPartial;  // [blocks, acc_cols]
  float* gDweight;        // [C]
  float* gDbias;          // [C] or null
  int64_t blocks, c, acc_cols;
  bool accumulate;
};

constexpr int kReduceCols = 32;   // columns per tile (threadIdx.x)
constexpr int kReduceSplits = 8;  // partial blocks b are summed in 8 interleaved splits b % 8
constexpr int kReduceThreads = kReduceCols * kReduceSplits;

/// dweight | dbias (+)= Σ_b partial[b], over tiles of 32 columns by grid stride. Split s of
/// column x (blocks s, s + 8, ...) is summed by thread (x, s mod blockDim.y) into s_sum[s][x];
/// row y = 0 then adds the 8 splits in order. That order is fixed, whatever the grid and
/// blockDim.y (8 on a GPU: 8 loads in flight per column; 1 under the emulator, where every
/// barrier costs a switch per thread). Shared memory: [8][32] floats.
__global__ void __launch_bounds__(kReduceThreads)
    norm_param_grad_kernel(const NormParamGradParams p) {
  float* s_sum = dynamic_smem<float>();  // [kReduceSplits][kReduceCols]
  const int64_t tiles = (p.acc_cols + kReduceCols - 1) / kReduceCols;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {  // uniform over the block
    const int64_t j = tile * kReduceCols + threadIdx.x;
    for (int split = threadIdx.y; split < kReduceSplits; split += blockDim.y) {
      float total = 0.f;
      if (j < p.acc_cols) {
        for (int64_t b = split; b < p.blocks; b += kReduceSplits) {
          total += p.gPartial[b * p.acc_cols + j];
        }
      }
      s_sum[split * kReduceCols + threadIdx.x] = total;
    }
    __syncthreads();
    if (threadIdx.y == 0 && j < p.acc_cols) {
      float sum = 0.f;
      for (int split = 0; split < kReduceSplits; ++split) {
        sum += s_sum[split * kReduceCols + threadIdx.x];
      }
      float* dst = j < p.c ? p.gDweight + j : p.gDbias + (j - p.c);
      *dst = (p.accumulate ? *dst : 0.f) + sum;
    }
    __syncthreads();  // s_sum is rewritten by the next tile
  }
}

}  // namespace nuri::kernels::norm
