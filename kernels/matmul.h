// Host interface of the linear-layer kernels (matmul.cuh): y = act(x·Wᵀ + b) and its input,
// weight and bias gradients. T is the activation / compute-weight type: __nv_bfloat16 or __half
// run on tensor cores (f32 accumulate), float on a SIMT fallback; instantiated in matmul.cu.
// All matrices are row-major and contiguous ([rows][cols]).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "sm90.h"

namespace nuri::kernels {

/// y = x·Wᵀ (+ bias) (+ residual); with gelu, pre receives x·Wᵀ + bias and
/// y = gelu(pre) (+ residual). residual may alias y.
template <class T>
struct MatmulParams {
  const T* gX;         // [M, K]
  const T* gW;         // [N, K]
  const T* gBias;      // [N] or null
  T* gY;               // [M, N]
  T* gPre;             // [M, N] pre-activation, non-null exactly when gelu
  const T* gResidual;  // [M, N] or null
  int64_t m, n, k;
  bool gelu;
  int tiles = 0;  // the GEMM tile's column edge: 0 by shape (matmul_tiles); 256, 128, 64 force it
  bool sm90 = false;  // the sm_90a kernel where it takes the call (see matmul_forward)
  // The sm_90a kernel's grid: a block a tile instead of persistent blocks (min(tiles, SMs)), to
  // measure what persistence gives (NURI_GEMM_SM90_GRID=tiles).
  bool sm90_per_tile = false;
};

/// dx (+)= dy·W; with gGeluPre, dx = (dy·W) ⊙ gelu'(gelu_pre) (then accumulate is false).
template <class T>
struct MatmulBackwardInputParams {
  const T* gDy;       // [M, N]
  const T* gW;        // [N, K]
  const T* gGeluPre;  // [M, K] or null
  T* gDx;             // [M, K]
  int64_t m, n, k;
  bool accumulate;
  int tiles = 0;      // as in MatmulParams
  bool sm90 = false;  // as in MatmulParams
  bool sm90_per_tile = false;  // as in MatmulParams
};

/// dW (+)= dyᵀ·x, f32.
template <class T>
struct MatmulBackwardWeightParams {
  const T* gDy;  // [M, N]
  const T* gX;   // [M, K]
  float* gDw;    // [N, K]
  int64_t m, n, k;
  bool accumulate;
  int tiles = 0;      // as in MatmulParams
  bool sm90 = false;  // as in MatmulParams
  bool sm90_per_tile = false;  // as in MatmulParams
};

/// dbias (+)= Σ_m dy[m, :], f32, deterministic: blocks of kMatmulBiasRows rows sum their
/// columns into gWork (one row of partials per block), then a second pass adds the partials
/// in order.
template <class T>
struct MatmulBackwardBiasParams {
  const T* gDy;   // [M, N]
  float* gDbias;  // [N]
  float* gWork;   // [matmul_bias_partials(M), N] scratch
  int64_t m, n;
  bool accumulate;
};

constexpr int64_t kMatmulBiasRows = 256;
/// Rows of partial sums the bias gradient needs in its workspace.
constexpr int64_t matmul_bias_partials(int64_t m) {
  return (m + kMatmulBiasRows - 1) / kMatmulBiasRows;
}

/// The tensor-core tile for an output of rows × cols on a device with `sms` SMs, named by its
/// column edge: 256 (128 × 256, TcWide), 128 (128², TcLarge) or 64 (64², TcSmall), the
/// largest whose grid has at least as many blocks as SMs (64 when none has: skinny products fill
/// the device with the most blocks). `forced` (256, 128 or 64) overrides; 0 means choose.
int matmul_tiles(int64_t rows, int64_t cols, int sms, int forced = 0);

/// Each launcher requires a non-empty output; the contraction dimension (k; m for the weight
/// gradient) may be 0, then the product is 0 (the bias gradient needs m > 0). The tensor-core
/// path loads 16-byte chunks when every row of both operands is 16-byte aligned (leading dims
/// multiples of 8, aligned bases) and single elements otherwise. With p.sm90 (the caller has
/// checked that the device is an sm_90 one and sm90a_compiled(), sm90.h), a bf16/f16 product whose
/// operands' rows are all 16-byte aligned, whose contraction is not empty and whose operands'
/// tensor maps the driver makes runs on the sm_90a kernel (matmul_sm90.cuh: wgmma and TMA),
/// every other one on the mma.sync or SIMT kernel.
/// Returns whether the sm_90a kernel ran it.
template <class T>
bool matmul_forward(const MatmulParams<T>& p, cudaStream_t stream);
template <class T>
bool matmul_backward_input(const MatmulBackwardInputParams<T>& p, cudaStream_t stream);
template <class T>
bool matmul_backward_weight(const MatmulBackwardWeightParams<T>& p, cudaStream_t stream);
template <class T>
void matmul_backward_bias(const MatmulBackwardBiasParams<T>& p, cudaStream_t stream);

namespace mm {

/// A tensor-core tile shape: a block of kWarpsM × kWarpsN warps owns a kBlockM × kBlockN tile of
/// C (each warp a kWarpM × kWarpN sub-tile of m16n8 accumulators) and streams K in
/// kBlockK-deep stages. Three shapes, the largest whose grid still gives every SM a block
/// (matmul_tiles): TcWide (128 × 256, 8 warps of 64 × 64) for big products, TcLarge (128², 8
/// warps of 64 × 32), TcSmall (64², 4 warps of 32 × 32) for skinny ones.
template <int kBlockM_, int kBlockN_, int kWarpsM_, int kWarpsN_, int kMinBlocks_>
struct TcConfig {
  static constexpr int kBlockM = kBlockM_, kBlockN = kBlockN_, kBlockK = 32;
  static constexpr int kStages = 3;
  static constexpr int kWarpsM = kWarpsM_, kWarpsN = kWarpsN_;
  static constexpr int kMinBlocks = kMinBlocks_;  // per SM, for __launch_bounds__
  static constexpr int kThreads = kWarpsM * kWarpsN * 32;
  static constexpr int kWarpM = kBlockM / kWarpsM;
  static constexpr int kWarpN = kBlockN / kWarpsN;
  static constexpr int kMi = kWarpM / 16;           // m16 blocks per warp
  static constexpr int kNj = kWarpN / 8;            // n8 blocks per warp
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0, "warp tiles are whole m16 × n16 blocks");
  static constexpr int kPad = 8;
  static_assert(kBlockK == 32, "K-contiguous tiles are 64-byte rows in tc::Swizzle64B");
  // Elements of one stage's tile of an operand with `rows` rows along M or N: [rows][kBlockK]
  // swizzled (K contiguous) or [kBlockK][rows + kPad] (M or N contiguous), whichever is larger.
  static constexpr int tile_elems(int rows) {
    return rows * kBlockK > kBlockK * (rows + kPad) ? rows * kBlockK : kBlockK * (rows + kPad);
  }
  static constexpr int kTileElemsA = tile_elems(kBlockM), kTileElemsB = tile_elems(kBlockN);
  static constexpr int kStageElems = kTileElemsA + kTileElemsB;  // sA then sB
  static constexpr size_t kSmemBytes = size_t(kStages * kStageElems) * 2;
};
// Wide: warp tiles 64 × 64 (128 accumulators): per k16 step a warp reads 8 ldmatrix.x4 for 32
// mma, against 6 for 16 in Large, so shared memory serves each mma in 2/3 of the bytes. Large:
// warp tiles 64 × 32 (64 accumulators; min. 1 block per SM: without it ptxas caps the kernel at
// 128 registers and spills, it needs ~130-150). Small: warp tiles 32 × 32.
using TcWide = TcConfig<128, 256, 2, 4, 1>;
using TcLarge = TcConfig<128, 128, 2, 4, 1>;
using TcSmall = TcConfig<64, 64, 2, 2, 2>;

/// The sm_90a kernel (matmul_sm90.cuh): a block of a TMA producer warpgroup and two wgmma
/// consumer warpgroups owns a 128 × 256 tile of C (64 rows a consumer, one m64n256 accumulator
/// of 128 f32 a thread); K streams through kStages stages of 64-deep A and B tiles (16 and
/// 32 KiB) of 128-byte swizzle atoms as TMA writes them. One block per SM (the registers, and
/// the shared memory).
struct Sm90Config {
  static constexpr int kBlockM = 128, kBlockN = 256, kBlockK = 64;
  static constexpr int kStages = 4;
  static constexpr int kThreads = 384;
  static constexpr size_t kTileBytesA = size_t(kBlockM) * kBlockK * 2;  // one stage's A tile
  static constexpr size_t kTileBytesB = size_t(kBlockN) * kBlockK * 2;  // and B tile
  /// Registers per thread after setmaxnreg: 24 + 2 × 240 = 504, the whole pool of a 384-thread
  /// block (3 × 168; sm90.h).
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;
  static_assert(setmaxnreg_split_fits(kThreads, kProducerRegs, kConsumerRegs, 2),
                "setmaxnreg: the split must fit the registers the block is launched with");
  /// Slack to align the tiles to 1024 bytes (the swizzle's repeat), the stages, the barriers.
  static constexpr size_t kSmemBytes =
      1024 + kStages * (kTileBytesA + kTileBytesB) + (1 + 2 * kStages) * 8;
};

}  // namespace mm

}  // namespace nuri::kernels
