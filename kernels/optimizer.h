// Host launchers of the multi-tensor optimizer kernels (optimizer.cuh), and the per-tensor
// descriptors they upload (plain data, shared with the device code).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace nuri::kernels {

/// One AdamW tensor: all f32 with n elements, plus an optional bf16 copy of the param.
struct AdamWTensorDesc {
  float* param;               // [n]
  const float* grad;          // [n]
  float* m;                   // [n]
  float* v;                   // [n]
  __nv_bfloat16* param_bf16;  // [n] or nullptr
  int64_t n;
  float weight_decay;  // 0 for tensors without decay
  int32_t index;       // position in the caller's list: part of the Philox counter
  int32_t vec;         // set by the launcher: pointers aligned for float4 access
};

/// The scalars of one AdamW step (bias corrections computed by the caller, as the CPU does).
struct AdamWStep {
  float lr, beta1, beta2, eps, grad_scale;
  float bc1, bc2;  // 1 - beta1^step, 1 - beta2^step
  uint64_t seed;
  uint32_t step;
  bool stochastic_rounding;
};

struct NormTensorDesc {
  const float* g;  // [n]
  int64_t n;
  int32_t vec;  // set by the launcher: 16-byte aligned
};

/// Device workspace bytes launch_adamw needs for `num_tensors` tensors.
size_t adamw_workspace_bytes(int64_t num_tensors);
/// One launch updating every tensor (tensors with n == 0 are allowed and skipped). The
/// descriptors are uploaded into g_workspace (adamw_workspace_bytes) on `stream`.
void launch_adamw(const AdamWTensorDesc* tensors, int64_t num_tensors, const AdamWStep& step,
                  void* g_workspace, cudaStream_t stream);

/// Device workspace bytes launch_global_norm needs for these tensors.
size_t global_norm_workspace_bytes(const NormTensorDesc* tensors, int64_t num_tensors);
/// g_out [1] = sqrt(Σ_t Σ g²): one launch of per-block partial sums, then one block summing them
/// in a fixed order (deterministic).
void launch_global_norm(const NormTensorDesc* tensors, int64_t num_tensors, float* g_out,
                        void* g_workspace, cudaStream_t stream);

}  // namespace nuri::kernels
