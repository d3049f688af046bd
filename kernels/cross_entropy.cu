// Instantiation unit of the cross-entropy kernels: launch configuration and the explicit list of
// activation dtypes (float, __nv_bfloat16). The plain ops are the vocabulary-parallel launchers
// with the whole vocabulary as one shard at column 0.
#include "cross_entropy.cuh"
#include "cross_entropy.h"

namespace nuri::kernels {

static_assert(sizeof(CeScanResult) == 3 * sizeof(int32_t), "the host reads 3 int32");

void launch_ce_scan_targets(const int32_t* g_targets, int64_t n, int64_t vocab,
                            int32_t ignore_index, int32_t* g_result, cudaStream_t stream) {
  const CeScanParams p{g_targets, reinterpret_cast<CeScanResult*>(g_result), n, vocab,
                       ignore_index};
  const size_t smem = 2 * (kCeScanThreads / kWarpSize) * sizeof(int);
  NURI_LAUNCH(ce_scan_targets, dim3(1), dim3(kCeScanThreads), smem, stream, p);
}

// A row is 16-byte aligned when the base is and the padded width is a whole number of packs.
template <class T>
static bool rows_aligned(const void* base, int64_t vp) {
  return reinterpret_cast<uintptr_t>(base) % 16 == 0 && (vp * int64_t(sizeof(T))) % 16 == 0;
}

template <class T>
void launch_ce_shard_forward(const T* g_logits, const int32_t* g_targets, int64_t n, int64_t vp,
                             int64_t vocab, int64_t col_lo, int64_t vocab_size,
                             int32_t ignore_index, float* g_losses, float* g_lse,
                             cudaStream_t stream) {
  if (n == 0) return;
  CeForwardParams<T> p{};
  p.g_logits = g_logits;
  p.g_targets = g_targets;
  p.g_losses = g_losses;
  p.g_lse = g_lse;
  p.vp = vp;
  p.vocab = vocab;
  p.col_lo = col_lo;
  p.vocab_size = vocab_size;
  p.ignore_index = ignore_index;
  p.vec = rows_aligned<T>(g_logits, vp);
  const size_t smem = 2 * (kCeThreads / kWarpSize) * sizeof(float);
  NURI_LAUNCH(ce_forward<T>, dim3(unsigned(n)), dim3(kCeThreads), smem, stream, p);
}

static void launch_mean_loss(const float* g_losses, int64_t n, int64_t count, float* g_loss,
                             cudaStream_t stream) {
  const CeLossParams lp{g_losses, g_loss, n, count};
  NURI_LAUNCH(ce_mean_loss, dim3(1), dim3(kCeScanThreads), kWarpSize * sizeof(float), stream, lp);
}

template <class T>
void launch_ce_forward(const T* g_logits, const int32_t* g_targets, int64_t n, int64_t vp,
                       int64_t vocab, int32_t ignore_index, int64_t count, float* g_losses,
                       float* g_lse, float* g_loss, cudaStream_t stream) {
  // The whole vocabulary is the shard at column 0 whose real columns are all of it.
  launch_ce_shard_forward(g_logits, g_targets, n, vp, vocab, 0, vocab, ignore_index, g_losses,
                          g_lse, stream);
  launch_mean_loss(g_losses, n, count, g_loss, stream);
}

void launch_ce_merge(const float* g_part_lse, const float* g_part_losses, const int32_t* g_targets,
                     int64_t shards, int64_t n, int32_t ignore_index, int64_t count,
                     float* g_losses, float* g_lse, float* g_loss, cudaStream_t stream) {
  if (n > 0) {
    const CeMergeParams p{g_part_lse, g_part_losses, g_targets, g_losses, g_lse,
                          shards,     n,             ignore_index};
    NURI_LAUNCH(ce_merge, dim3(unsigned(ceil_div(n, kCeMergeThreads))), dim3(kCeMergeThreads), 0,
                stream, p);
  }
  launch_mean_loss(g_losses, n, count, g_loss, stream);
}

template <class T>
void launch_ce_backward(const T* g_logits, const int32_t* g_targets, const float* g_lse, int64_t n,
                        int64_t vp, int64_t vocab, int64_t col_lo, int32_t ignore_index,
                        float scale, T* g_dlogits, cudaStream_t stream) {
  if (n == 0) return;
  CeBackwardParams<T> p{};
  p.g_logits = g_logits;
  p.g_targets = g_targets;
  p.g_lse = g_lse;
  p.g_dlogits = g_dlogits;
  p.vp = vp;
  p.vocab = vocab;
  p.col_lo = col_lo;
  p.ignore_index = ignore_index;
  p.scale = scale;
  p.vec = rows_aligned<T>(g_logits, vp) && rows_aligned<T>(g_dlogits, vp);
  NURI_LAUNCH(ce_backward<T>, dim3(unsigned(n)), dim3(kCeThreads), 0, stream, p);
}

#define NURI_CE_INSTANTIATE(T)                                                                     \
  template void launch_ce_shard_forward<T>(const T*, const int32_t*, int64_t, int64_t, int64_t,    \
                                           int64_t, int64_t, int32_t, float*, float*,              \
                                           cudaStream_t);                                          \
  template void launch_ce_forward<T>(const T*, const int32_t*, int64_t, int64_t, int64_t, int32_t, \
                                     int64_t, float*, float*, float*, cudaStream_t);               \
  template void launch_ce_backward<T>(const T*, const int32_t*, const float*, int64_t, int64_t,    \
                                      int64_t, int64_t, int32_t, float, T*, cudaStream_t);
NURI_CE_INSTANTIATE(float)
NURI_CE_INSTANTIATE(__nv_bfloat16)
#undef NURI_CE_INSTANTIATE

}  // namespace nuri::kernels
