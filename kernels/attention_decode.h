// Host interface of the decoding attention kernel (attention_decode.cuh): queries that continue
// a sequence whose keys and values are cached, instantiated for __nv_bfloat16 and __half in
// attention_decode.cu. Plain C++ for the CUDA backend (csrc/backend/cuda/attention.cpp).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "attention.h"

namespace nuri::kernels {

/// One call: q [B, Tq, H, D] are rows keys - Tq .. keys - 1 of a sequence whose k, v
/// [B, keys, Hkv, D] are given (query head h reads kv head h / (H / Hkv)); out [B, Tq, H, D].
/// Strides in elements, D unit stride; no alignment is needed (scalar loads).
template <class T>
struct AttentionDecodeParams {
  const T* q = nullptr;
  const T* k = nullptr;
  const T* v = nullptr;
  T* out = nullptr;
  AttnStrides q_s, k_s, v_s, out_s;
  int batch = 0, q_rows = 0, keys = 0, heads = 0, kv_heads = 0, head_dim = 0;
  float scale = 0.f;  // softmax scale (the caller resolves "0 means 1/sqrt(D)")
  bool causal = true;
  /// Packed documents (causal only; null: none): key_start [B, keys], row 0 of
  /// AttentionOptions::documents. Query row r sees keys [key_start[b, r], r].
  const int* key_start = nullptr;
  /// The keys a query sees split over this many blocks (attention_decode_splits); with more
  /// than one, each block leaves its partial softmax in `partial` (f32,
  /// attention_decode_workspace_bytes) and a second kernel merges them into out.
  int splits = 1;
  float* partial = nullptr;
};

/// Head dims up to this take the kernel (each lane holds D / 32 rounded up of a row).
constexpr int kDecodeMaxHeadDim = 256;

/// How many blocks share a query's keys: 1 when the B·Tq·H blocks give each of the `sms` SMs
/// two already; otherwise enough for about four, at most kDecodeMaxSplits and at most one a
/// kDecodeMinSplitKeys of the call's keys (a split's partial result costs a write and a merge;
/// a row that sees fewer keys, an early causal row or a short document, has smaller splits).
/// NURI_DECODE_SPLITS (1 to kDecodeMaxSplits) sets it instead, for tests and measurements; read
/// at each call.
int attention_decode_splits(int batch, int q_rows, int heads, int keys, int sms);
constexpr int kDecodeMinSplitKeys = 64;
constexpr int kDecodeMaxSplits = 64;

/// Bytes of f32 workspace a call with p.splits > 1 needs for its partial results.
size_t attention_decode_workspace_bytes(int batch, int q_rows, int heads, int head_dim,
                                        int splits);

/// Runs it; requires B·Tq·H > 0, Tq <= keys, head_dim in [1, kDecodeMaxHeadDim], splits in
/// [1, kDecodeMaxSplits], and `partial` when splits > 1.
template <class T>
void attention_decode(const AttentionDecodeParams<T>& p, cudaStream_t stream);

}  // namespace nuri::kernels
