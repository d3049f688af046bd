// Host launchers of the LayerNorm / RMSNorm kernels (norm.cuh), fused with the residual add.
// Plain C++: the CUDA backend (csrc/backend/cuda/norm.cpp) fills a parameter struct and calls
// these; T is float or __nv_bfloat16 (activations and compute weights), statistics and parameter
// gradients are f32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace nuri::kernels {

template <class T>
struct NormForwardParams {
  const T* gX;         // [M, C]
  const T* gResidual;  // [M, C] or null
  const T* gWeight;    // [C]
  const T* gBias;      // [C] or null (layernorm only)
  T* gSum;             // [M, C] s = x + residual, written when residual is given
  T* gY;               // [M, C]
  float* gMean;        // [M] (layernorm) or null (rmsnorm)
  float* gRstd;        // [M]
  float eps;
  int64_t m, c;
};

template <class T>
struct NormBackwardParams {
  const T* gDy;        // [M, C]
  const T* gS;         // [M, C] the normalized input saved by the forward
  const T* gWeight;    // [C]
  const float* gMean;  // [M] (layernorm) or null (rmsnorm)
  const float* gRstd;  // [M]
  const T* gDsum;      // [M, C] or null; may alias gDs
  T* gDs;              // [M, C]
  float* gDweight;     // [C]
  float* gDbias;       // [C] or null
  bool accumulate;     // dweight/dbias += (true) or = (false)
  int64_t m, c;
};

/// How the backward splits rows into blocks; the parameter-gradient partial sums it needs go to
/// a workspace of `workspace_bytes` (the caller provides it).
struct NormBackwardPlan {
  int blocks;              // grid of the row kernel; block b reduces a fixed chunk of rows
  int warps;               // warps per block
  bool block_per_row;      // the block's warps share each row (large C), else a warp per row
  int64_t rows_per_block;  // the chunk
  int64_t acc_cols;        // C (dweight) or 2C (dweight | dbias)
  bool smem_acc;           // per-group accumulators in shared memory (else in the workspace)
  size_t smem_bytes;       // dynamic shared memory of the row kernel
  size_t workspace_bytes;  // partials [blocks, acc_cols] (+ per-group scratch when !smem_acc)
};

/// The plan for M rows of C columns. `target_blocks`: about how many blocks a small M is spread
/// over (0: this build's, kNormGpuTargetBlocks on a GPU, fewer in the emulator; the planner's
/// bound, nuri/train/plan.h, is checked against both).
NormBackwardPlan plan_norm_backward(int64_t m, int64_t c, bool has_dbias,
                                    int64_t target_blocks = 0);
constexpr int64_t kNormGpuTargetBlocks = 132;  // an H100's SMs

/// y = norm(x + residual) · weight (+ bias); center = true: layernorm, false: rmsnorm.
template <class T>
void norm_forward(const NormForwardParams<T>& p, bool center, cudaStream_t stream);

/// ds = dsum + ∂/∂s; dweight, dbias (+)= deterministic row sums (fixed chunks, fixed order).
/// `workspace` holds plan.workspace_bytes of device memory.
template <class T>
void norm_backward(const NormBackwardParams<T>& p, bool center, const NormBackwardPlan& plan,
                   void* workspace, cudaStream_t stream);

}  // namespace nuri::kernels
