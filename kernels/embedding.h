// Host interface of the embedding kernels (embedding.cuh): parameter structs and launchers,
// instantiated for float and __nv_bfloat16 activations in embedding.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace nuri::kernels {

/// out = wte[token - row_lo] (0 for a token outside [row_lo, row_lo + Vl)) + wpe[p], p =
/// positions[b, t] or t. Tokens and positions were validated on the host. The whole table is
/// row_lo = 0, Vl = V: every token inside.
template <class T>
struct EmbeddingParams {
  const int32_t* gTokens;     // [B, T]
  const T* gWte;              // [Vl, C]: the vocabulary rows [row_lo, row_lo + Vl)
  const T* gWpe;              // [Tmax, C] or null
  const int32_t* gPositions;  // [B, T] or null (position t)
  T* gOut;                 // [B, T, C]
  int64_t rows;            // B·T
  int64_t seq;             // T
  int64_t channels;        // C
  int64_t row_lo;          // first vocabulary row of gWte (0: the whole table)
  int64_t table_rows;      // Vl
};

/// Positions one thread sums before a token's run is split into pieces (the host plans runs).
constexpr int kEmbeddingRunRows = 64;

/// A run of positions of one token whose dout rows one thread sums in order: order[begin, end).
/// slot < 0: the token's whole run, added to dwte[token]; slot >= 0: one piece of a long run,
/// written to partial[slot] and added later by a merge. A merge reuses the struct with
/// [begin, end) a range of partial slots, summed in order.
struct alignas(16) EmbeddingRun {
  int32_t token, begin, end, slot;
};

/// dwte (+)= the scatter of dout by token, deterministically (also dwpe's scatter by position,
/// with positions for tokens): runs built on the host from the
/// token array (embedding.cpp), so every sum has a fixed order independent of the schedule.
template <class T>
struct EmbeddingWteGradParams {
  const T* gDout;               // [B·T, C]
  const int32_t* gOrder;        // [B·T]: positions grouped by token, increasing within a token
  const EmbeddingRun* gRuns;    // [runs]
  const EmbeddingRun* gMerges;  // [merges]: tokens split into several runs
  float* gDwte;                 // [V, C] (a shard's [Vl, C]: run tokens are rows of it)
  float* gPartial;              // [slots, C] workspace
  int64_t runs, merges;
  int64_t channels;  // C
  bool accumulate;   // false: overwrite the rows of tokens in runs (the caller zeroes the rest)
};

/// dwpe[t] (+)= Σ_b dout[b, t] for t < T, in batch order.
template <class T>
struct EmbeddingWpeGradParams {
  const T* gDout;    // [B, T, C]
  float* gDwpe;      // [Tmax, C]; rows >= T are the caller's
  int64_t batch;     // B
  int64_t seq;       // T
  int64_t channels;  // C
  bool accumulate;
};

template <class T>
void embedding(const EmbeddingParams<T>& p, cudaStream_t stream);
/// Runs the run kernel, then (when p.merges > 0) the merge kernel.
template <class T>
void embedding_backward_wte(const EmbeddingWteGradParams<T>& p, cudaStream_t stream);
template <class T>
void embedding_backward_wpe(const EmbeddingWpeGradParams<T>& p, cudaStream_t stream);

}  // namespace nuri::kernels
