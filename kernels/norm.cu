// LayerNorm / RMSNorm launchers and their instantiations (float, __nv_bfloat16), see norm.cuh.
// The launch shape depends only on (M, C) and pointer alignment, never on the device, so the
// parameter-gradient reduction order (and thus every bit of the result) is the same everywhere.
#include <algorithm>
#include <cstdint>

#include "norm.cuh"

namespace nuri::kernels {

namespace {

using norm::kBlockRowThreads;
using norm::kForwardThreads;
using norm::kWarpRowMaxC;

constexpr size_t kScratchBytes = kWarpSize * sizeof(float);  // block_sum scratch
constexpr size_t kWarpModeSmem = 48 * 1024;   // no opt-in needed; 6-8 warps at C <= 1024
constexpr size_t kBlockModeSmem = 96 * 1024;  // within every sm_80+ part's opt-in limit (99 KiB)
constexpr int64_t kMaxWarpsInFlight = 2048;   // ~16 warps on each of an H100's 132 SMs
constexpr int64_t kMinRowsPerWarp = 4;        // amortizes the accumulator setup and combine

// Launch shapes that do not change results. The emulator creates every thread of a launch and
// switches every thread at each barrier, so it gets small grids (which also make the op tests
// run the grid-stride loops repeatedly) and one thread per column in the reduction.
// kTargetBlocks (how widely the backward spreads a small M) does change the fixed summation
// order; emulated, it is small so that the op tests cover several warps per block and all the
// reduction's splits with a few hundred threads.
#if defined(NURI_CUDA_EMULATION)
constexpr int64_t kMaxForwardBlocks = 2;
constexpr int64_t kMaxReduceBlocks = 1;
constexpr unsigned kReduceThreadsY = 1;
constexpr int64_t kTargetBlocks = 8;
#else
constexpr int64_t kMaxForwardBlocks = int64_t(1) << 20;
constexpr int64_t kMaxReduceBlocks = int64_t(1) << 20;
constexpr unsigned kReduceThreadsY = norm::kReduceSplits;
constexpr int64_t kTargetBlocks = kNormGpuTargetBlocks;
#endif

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class T>
constexpr int kVec = 16 / int(sizeof(T));  // elements per 16-byte pack

template <class T, bool kCenter, int N>
void launch_forward(const norm::NormForwardKernelParams<T>& kp, dim3 grid, dim3 block, size_t smem,
                    cudaStream_t stream) {
  NURI_LAUNCH((norm::norm_forward_kernel<T, kCenter, N>), grid, block, smem, stream, kp);
}

template <class T, bool kCenter, int N>
void launch_backward(const norm::NormBackwardKernelParams<T>& kp, dim3 grid, dim3 block,
                     size_t smem, cudaStream_t stream) {
  NURI_LAUNCH((norm::norm_backward_kernel<T, kCenter, N>), grid, block, smem, stream, kp);
}

}  // namespace

NormBackwardPlan plan_norm_backward(int64_t m, int64_t c, bool has_dbias, int64_t target_blocks) {
  NURI_ASSERT(m > 0 && c > 0 && target_blocks >= 0);
  if (target_blocks == 0) target_blocks = kTargetBlocks;
  NormBackwardPlan pl{};
  pl.acc_cols = has_dbias ? 2 * c : c;
  const size_t acc_bytes = size_t(pl.acc_cols) * sizeof(float);
  int64_t blocks;
  if (c <= kWarpRowMaxC) {  // a warp per row, one accumulator per warp (at most 8 KiB each)
    pl.block_per_row = false;
    // Up to 8 warps per block as shared memory allows, fewer when M is small so that the rows
    // still spread over about kTargetBlocks blocks (SMs).
    const int64_t max_warps = std::clamp<int64_t>(int64_t(kWarpModeSmem / acc_bytes), 1, 8);
    pl.warps = int(std::clamp<int64_t>(ceil_div(m, kMinRowsPerWarp * target_blocks), 1, max_warps));
    pl.smem_acc = true;
    pl.smem_bytes = size_t(pl.warps) * acc_bytes;  // warp_sum needs no scratch
    blocks = ceil_div(m, pl.warps * kMinRowsPerWarp);
  } else {  // a block per row, one accumulator per block; in the workspace if C is very large
    pl.block_per_row = true;
    pl.warps = kBlockRowThreads / kWarpSize;
    pl.smem_acc = acc_bytes + kScratchBytes <= kBlockModeSmem;
    pl.smem_bytes = (pl.smem_acc ? acc_bytes : 0) + kScratchBytes;
    blocks = ceil_div(m, kMinRowsPerWarp);
  }
  blocks = std::min<int64_t>(blocks, std::max<int64_t>(1, kMaxWarpsInFlight / pl.warps));
  pl.rows_per_block = ceil_div(m, blocks);
  pl.blocks = int(ceil_div(m, pl.rows_per_block));  // no empty blocks
  const int64_t groups = pl.block_per_row ? 1 : pl.warps;
  pl.workspace_bytes = size_t(pl.blocks) * acc_bytes * (pl.smem_acc ? 1 : 1 + groups);
  return pl;
}

template <class T>
void norm_forward(const NormForwardParams<T>& p, bool center, cudaStream_t stream) {
  NURI_ASSERT(p.m > 0 && p.c > 0);
  const bool vec = p.c % kVec<T> == 0 && aligned16(p.gX) && aligned16(p.gResidual) &&
                   aligned16(p.gWeight) && aligned16(p.gBias) && aligned16(p.gSum) &&
                   aligned16(p.gY);
  const bool block_per_row = p.c > kWarpRowMaxC;
  const int threads = block_per_row ? kBlockRowThreads : kForwardThreads;
  const int64_t rows_per_block = block_per_row ? 1 : threads / kWarpSize;
  const dim3 grid(unsigned(std::min(ceil_div(p.m, rows_per_block), kMaxForwardBlocks)));
  const size_t smem = block_per_row ? kScratchBytes : 0;
  const norm::NormForwardKernelParams<T> kp{p, block_per_row};
  if (center) {
    vec ? launch_forward<T, true, kVec<T>>(kp, grid, threads, smem, stream)
        : launch_forward<T, true, 1>(kp, grid, threads, smem, stream);
  } else {
    vec ? launch_forward<T, false, kVec<T>>(kp, grid, threads, smem, stream)
        : launch_forward<T, false, 1>(kp, grid, threads, smem, stream);
  }
}

template <class T>
void norm_backward(const NormBackwardParams<T>& p, bool center, const NormBackwardPlan& plan,
                   void* workspace, cudaStream_t stream) {
  NURI_ASSERT(p.m > 0 && p.c > 0 && plan.acc_cols == (p.gDbias ? 2 * p.c : p.c));
  float* partial = static_cast<float*>(workspace);  // [blocks, acc_cols]
  float* scratch = plan.smem_acc ? nullptr : partial + int64_t(plan.blocks) * plan.acc_cols;
  const norm::NormBackwardKernelParams<T> kp{
      p, partial, scratch, plan.rows_per_block, plan.acc_cols, plan.block_per_row};
  const bool vec = p.c % kVec<T> == 0 && aligned16(p.gDy) && aligned16(p.gS) &&
                   aligned16(p.gWeight) && aligned16(p.gDsum) && aligned16(p.gDs);
  const dim3 grid(unsigned(plan.blocks)), block(unsigned(plan.warps * kWarpSize));
  if (center) {
    vec ? launch_backward<T, true, kVec<T>>(kp, grid, block, plan.smem_bytes, stream)
        : launch_backward<T, true, 1>(kp, grid, block, plan.smem_bytes, stream);
  } else {
    vec ? launch_backward<T, false, kVec<T>>(kp, grid, block, plan.smem_bytes, stream)
        : launch_backward<T, false, 1>(kp, grid, block, plan.smem_bytes, stream);
  }
  const norm::NormParamGradParams rp{partial, p.gDweight,    p.gDbias,    plan.blocks,
                                     p.c,     plan.acc_cols, p.accumulate};
  NURI_LAUNCH(
      norm::norm_param_grad_kernel,
      dim3(unsigned(std::min(ceil_div(plan.acc_cols, norm::kReduceCols), kMaxReduceBlocks))),
      dim3(norm::kReduceCols, kReduceThreadsY), norm::kReduceThreads * sizeof(float), stream, rp);
}

// The supported storage types.
template void norm_forward<float>(const NormForwardParams<float>&, bool, cudaStream_t);
template void norm_forward<__nv_bfloat16>(const NormForwardParams<__nv_bfloat16>&, bool,
                                          cudaStream_t);
template void norm_backward<float>(const NormBackwardParams<float>&, bool, const NormBackwardPlan&,
                                   void*, cudaStream_t);
template void norm_backward<__nv_bfloat16>(const NormBackwardParams<__nv_bfloat16>&, bool,
                                           const NormBackwardPlan&, void*, cudaStream_t);

}  // namespace nuri::kernels
