// Token + position embedding: a gather, and its backward, a scatter-add made deterministic.
// A vocabulary shard (tensor parallelism) gathers only its rows [row_lo, row_lo + Vl) and writes
// 0 (plus the position term) for other tokens; its backward's runs hold only its own tokens.
//
// The design choice: no float atomics. The host sorts positions by token (embedding.cpp) into
// runs of at most kEmbeddingRunRows positions; one thread owns a (run, vector of columns) and
// sums the run's dout rows in position order. A token with a longer run is split into pieces
// whose partial sums go to a workspace and are added in piece order by a second kernel, so a
// frequent token (padding, "the") does not serialize on one thread and the result is the same
// bits on every launch. Every kernel is a grid-stride loop over items with the vector column
// fastest, so a warp reads contiguous bytes of one row.
#pragma once

#include "common.cuh"
#include "embedding.h"

namespace nuri::kernels {

constexpr int kEmbeddingThreads = 256;

template <class T, int kVec>
__device__ __forceinline__ Pack<float, kVec> load_f32(const T* g) {
  const Pack<T, kVec> in = *reinterpret_cast<const Pack<T, kVec>*>(g);
  Pack<float, kVec> r;
#pragma unroll
  for (int k = 0; k < kVec; ++k) r.v[k] = to_float(in.v[k]);
  return r;
}

/// Adds the kVec values at g (dtype T) to acc.
template <class T, int kVec>
__device__ __forceinline__ void add_to(Pack<float, kVec>& acc, const T* g) {
  const Pack<float, kVec> x = load_f32<T, kVec>(g);
#pragma unroll
  for (int k = 0; k < kVec; ++k) acc.v[k] += x.v[k];
}

template <int kVec>
__device__ __forceinline__ Pack<float, kVec> start_sum(const float* g, bool accumulate) {
  Pack<float, kVec> acc;
  if (accumulate) {
    acc = *reinterpret_cast<const Pack<float, kVec>*>(g);
  } else {
#pragma unroll
    for (int k = 0; k < kVec; ++k) acc.v[k] = 0.f;
  }
  return acc;
}

// kVec divides C and every pointer is aligned to its vector (checked by the launchers).

template <class T, int kVec>
__global__ void __launch_bounds__(kEmbeddingThreads) embedding_kernel(const EmbeddingParams<T> p) {
  const int64_t vecs = p.channels / kVec;
  const int64_t items = p.rows * vecs;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = item / vecs, col = (item % vecs) * kVec;
    const int64_t id = int64_t(p.gTokens[row]) - p.row_lo;
    Pack<float, kVec> r;
    if (id >= 0 && id < p.table_rows) {
      r = load_f32<T, kVec>(p.gWte + id * p.channels + col);
    } else {  // another shard's token: only the position term
#pragma unroll
      for (int k = 0; k < kVec; ++k) r.v[k] = 0.f;
    }
    if (p.gWpe != nullptr) {
      const int64_t pos = p.gPositions != nullptr ? int64_t(p.gPositions[row]) : row % p.seq;
      add_to<T, kVec>(r, p.gWpe + pos * p.channels + col);
    }
    Pack<T, kVec> out;
#pragma unroll
    for (int k = 0; k < kVec; ++k) out.v[k] = from_float<T>(r.v[k]);
    *reinterpret_cast<Pack<T, kVec>*>(p.gOut + row * p.channels + col) = out;
  }
}

/// Items (run, vector column): sums dout over the run's positions in order.
template <class T, int kVec>
__global__ void __launch_bounds__(kEmbeddingThreads)
    embedding_wte_grad_kernel(const EmbeddingWteGradParams<T> p) {
  const int64_t vecs = p.channels / kVec;
  const int64_t items = p.runs * vecs;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += int64_t(gridDim.x) * blockDim.x) {
    const EmbeddingRun run = p.gRuns[item / vecs];
    const int64_t col = (item % vecs) * kVec;
    float* gDst = run.slot < 0 ? p.gDwte + int64_t(run.token) * p.channels + col
                               : p.gPartial + int64_t(run.slot) * p.channels + col;
    Pack<float, kVec> acc = start_sum<kVec>(gDst, run.slot < 0 && p.accumulate);
#pragma unroll 4
    for (int32_t i = run.begin; i < run.end; ++i) {
      add_to<T, kVec>(acc, p.gDout + int64_t(p.gOrder[i]) * p.channels + col);
    }
    *reinterpret_cast<Pack<float, kVec>*>(gDst) = acc;
  }
}

/// Items (merge, vector column): dwte[token] (+)= the token's partial sums, in piece order.
template <int kVec>
__global__ void __launch_bounds__(kEmbeddingThreads)
    embedding_wte_merge_kernel(const EmbeddingWteGradParams<float> p) {
  const int64_t vecs = p.channels / kVec;
  const int64_t items = p.merges * vecs;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += int64_t(gridDim.x) * blockDim.x) {
    const EmbeddingRun merge = p.gMerges[item / vecs];
    const int64_t col = (item % vecs) * kVec;
    float* gDst = p.gDwte + int64_t(merge.token) * p.channels + col;
    Pack<float, kVec> acc = start_sum<kVec>(gDst, p.accumulate);
    for (int32_t s = merge.begin; s < merge.end; ++s) {
      add_to<float, kVec>(acc, p.gPartial + int64_t(s) * p.channels + col);
    }
    *reinterpret_cast<Pack<float, kVec>*>(gDst) = acc;
  }
}

/// Items (t, vector column): dwpe[t] (+)= Σ_b dout[b, t] in batch order.
template <class T, int kVec>
__global__ void __launch_bounds__(kEmbeddingThreads)
    embedding_wpe_grad_kernel(const EmbeddingWpeGradParams<T> p) {
  const int64_t vecs = p.channels / kVec;
  const int64_t items = p.seq * vecs;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = item / vecs, col = (item % vecs) * kVec;
    float* gDst = p.gDwpe + t * p.channels + col;
    Pack<float, kVec> acc = start_sum<kVec>(gDst, p.accumulate);
#pragma unroll 4
    for (int64_t b = 0; b < p.batch; ++b) {
      add_to<T, kVec>(acc, p.gDout + (b * p.seq + t) * p.channels + col);
    }
    *reinterpret_cast<Pack<float, kVec>*>(gDst) = acc;
  }
}

}  // namespace nuri::kernels
