// Host launchers of the cross-entropy kernels (cross_entropy.cuh). T is float or __nv_bfloat16
// (the activation dtype of logits and dlogits); statistics and losses are f32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace nuri::kernels {

/// Writes 3 int32 to g_result [3]: the rows whose target is not ignore_index, the first row
/// whose target is outside [0, vocab) and not ignore_index (n if none), and that target.
void launch_ce_scan_targets(const int32_t* g_targets, int64_t n, int64_t vocab,
                            int32_t ignore_index, int32_t* g_result, cudaStream_t stream);

/// lse [n] and losses [n] (0 on ignored rows) from logits [n, vp] (real columns [0, vocab)),
/// then loss [1] = Σ losses / count (0 if count == 0), summed in a fixed order.
template <class T>
void launch_ce_forward(const T* g_logits, const int32_t* g_targets, int64_t n, int64_t vp,
                       int64_t vocab, int32_t ignore_index, int64_t count, float* g_losses,
                       float* g_lse, float* g_loss, cudaStream_t stream);

/// A vocabulary shard: logits [n, vp] hold the ids [col_lo, col_lo + vp), real in their first
/// `vocab` columns (0 allowed); lse [n] over them (-inf when none) and losses [n] = lse - the
/// target's logit when the shard holds it, lse when the target is another shard's (in
/// [0, vocab_size)), 0 where ignored. No mean loss (launch_ce_merge computes it).
template <class T>
void launch_ce_shard_forward(const T* g_logits, const int32_t* g_targets, int64_t n, int64_t vp,
                             int64_t vocab, int64_t col_lo, int64_t vocab_size,
                             int32_t ignore_index, float* g_losses, float* g_lse,
                             cudaStream_t stream);

/// part_lse, part_losses [shards, n] from the shards' launch_ce_shard_forward: lse [n] and losses
/// [n] of the whole rows, then loss [1] = Σ losses / count (0 if count == 0), as
/// launch_ce_forward.
void launch_ce_merge(const float* g_part_lse, const float* g_part_losses, const int32_t* g_targets,
                     int64_t shards, int64_t n, int32_t ignore_index, int64_t count,
                     float* g_losses, float* g_lse, float* g_loss, cudaStream_t stream);

/// dlogits [n, vp] (may alias logits) = scale · (softmax - onehot) on real columns [0, vocab) of
/// rows that count, 0 elsewhere; scale = dloss / count. Column j is the vocabulary id col_lo + j
/// (0 for the whole vocabulary, else a shard's): the onehot is at target - col_lo.
template <class T>
void launch_ce_backward(const T* g_logits, const int32_t* g_targets, const float* g_lse, int64_t n,
                        int64_t vp, int64_t vocab, int64_t col_lo, int32_t ignore_index,
                        float scale, T* g_dlogits, cudaStream_t stream);

}  // namespace nuri::kernels
