// Linear-layer GEMMs (device code). One product C [M, N] = A [M, K] · B [K, N] serves the three
// layouts of a linear layer:
//   forward          y [M, N]  = x [M, K] · W [N, K]ᵀ   A row-major,             B stored [n][k]
//   input gradient   dx [M, K] = dy [M, N] · W [N, K]   A row-major,             B stored [k][n]
//   weight gradient  dW [N, K] = dy [M, N]ᵀ · x [M, K]  A stored [k][m] (dyᵀ),  B stored [k][n]
// followed by an elementwise epilogue (bias, GELU with its pre-activation, the fused GELU
// backward, a residual add, accumulate into the output; T or f32 output).
//
// Tensor cores (T = bf16 or f16): a block of 8 warps owns a 128 × 128 tile of C; warp w owns the
// 64 × 32 sub-tile (w / 4, w % 4) as 4 × 4 m16n8 f32 accumulators. K streams through a 3-stage
// cp.async pipeline of 32-deep A and B tiles in shared memory (rows padded by 8 elements, so
// the 8 rows an ldmatrix reads fall in distinct banks); fragments come from ldmatrix (.trans for
// the operands stored the other way round). Edges: rows and columns past M, N, K are zero-filled
// in shared memory (cp.async src-size < 16; element loads on the unaligned path) and the
// epilogue skips them.
//
// f32 (no tensor-core input type here): a SIMT kernel with the same layouts and epilogue, 64 × 64
// tiles, 16-deep shared-memory stages, 4 × 4 outputs per thread.
//
// Bias gradient: column sums in a fixed order, per 256-row block into a workspace, then in order.
#pragma once

#include "activation.cuh"
#include "common.cuh"
#include "matmul.h"
#include "mma_tiles.cuh"
#include "ptx.cuh"

namespace nuri::kernels::mm {

/// One product and its epilogue: C = A·B (+ bias) ... (see the file comment).
template <class T>
struct GemmArgs {
  const T* a;  // [M, K] row-major, or stored [K, M] (kATrans)
  int64_t lda;
  const T* b;  // stored [N, K], or [K, N] (kBKN)
  int64_t ldb;
  int m, n, k;
  const T* bias;      // [N] or null: v += bias[col]
  T* pre;             // [M, N] or null: pre = v, then v = gelu(v)
  const T* gelu_pre;  // [M, N] or null: v *= gelu'(gelu_pre)
  const T* residual;  // [M, N] or null: v += residual (after the activation; may alias out)
  T* out;             // [M, N] output in T, or null
  float* out_f32;     // [M, N] output in f32, or null
  bool accumulate;    // out = out + v instead of out = v
};

/// The epilogue of element (row, col) of C with product value v.
template <class T>
__device__ __forceinline__ void store_element(const GemmArgs<T>& p, int row, int col, float v) {
  const int64_t i = int64_t(row) * p.n + col;
  if (p.bias) v += to_float(p.bias[col]);
  if (p.pre) {
    p.pre[i] = from_float<T>(v);
    v = act::gelu(v);
  }
  if (p.gelu_pre) v *= act::gelu_grad(to_float(p.gelu_pre[i]));
  if (p.residual) v += to_float(p.residual[i]);  // read by the thread that writes out[i]
  if (p.out_f32) {
    p.out_f32[i] = p.accumulate ? p.out_f32[i] + v : v;
  } else {
    p.out[i] = from_float<T>(p.accumulate ? to_float(p.out[i]) + v : v);
  }
}

// ---- tensor cores ---------------------------------------------------------------------------

/// A tensor-core tile shape: a block of kWarpsM × kWarpsN warps owns a kBlock × kBlock tile of C
/// (each warp a kWarpM × kWarpN sub-tile of m16n8 accumulators) and streams K in kBlockK-deep
/// stages. TcLarge (128², 8 warps) for big products; TcSmall (64², 4 warps) when TcLarge's grid
/// would leave SMs idle (skinny products, the weight gradient of small layers): 4× the blocks.
template <int kBlock, int kWarpsM_, int kWarpsN_, int kMinBlocks_>
struct TcConfig {
  static constexpr int kBlockM = kBlock, kBlockN = kBlock, kBlockK = 32;
  static constexpr int kStages = 3;
  static constexpr int kWarpsM = kWarpsM_, kWarpsN = kWarpsN_;
  static constexpr int kMinBlocks = kMinBlocks_;  // per SM, for __launch_bounds__
  static constexpr int kThreads = kWarpsM * kWarpsN * kWarpSize;
  static constexpr int kWarpM = kBlockM / kWarpsM;
  static constexpr int kWarpN = kBlockN / kWarpsN;
  static constexpr int kMi = kWarpM / 16;           // m16 blocks per warp
  static constexpr int kNj = kWarpN / 8;            // n8 blocks per warp
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0, "warp tiles are whole m16 × n16 blocks");
  static constexpr int kPad = 8;
  // Elements of one stage's A or B tile: [kBlockM][kBlockK + kPad] or [kBlockK][kBlockM + kPad]
  // (kBlockM == kBlockN), whichever is larger.
  static constexpr int kTileElems = kBlockM * (kBlockK + kPad) > kBlockK*(kBlockM + kPad)
                                        ? kBlockM*(kBlockK + kPad)
                                        : kBlockK*(kBlockM + kPad);
  static constexpr size_t kSmemBytes = size_t(2 * kStages * kTileElems) * 2;
};
// Large: warp tiles 64 × 32 (64 accumulators; min. 1 block per SM: without it ptxas caps the
// kernel at 128 registers and spills, it needs ~130-150). Small: warp tiles 32 × 32.
using TcLarge = TcConfig<128, 2, 4, 1>;
using TcSmall = TcConfig<64, 2, 2, 2>;

/// Loads the kR × kC tile at g (row stride ldg) into s (row stride ld_s); rows at or past vr and
/// columns at or past vc are zero. kAligned: 16-byte cp.async chunks (every row of g 16-byte
/// aligned), partial chunks through src-size; else element loads (visible after a barrier).
template <class T, int kR, int kC, bool kAligned, int kThreads>
__device__ __forceinline__ void load_tile(T* s, int ld_s, const T* g, int64_t ldg, int vr, int vc) {
  if constexpr (kAligned) {
    constexpr int kChunks = kC / 8;
    for (int i = int(threadIdx.x); i < kR * kChunks; i += kThreads) {
      const int r = i / kChunks, c = (i % kChunks) * 8;
      const int valid = r < vr ? min(max(vc - c, 0), 8) : 0;
      cp_async<16>(s + r * ld_s + c, valid ? g + r * ldg + c : g, valid * 2);
    }
  } else {
    for (int i = int(threadIdx.x); i < kR * kC; i += kThreads) {
      const int r = i / kC, c = i % kC;
      s[r * ld_s + c] = r < vr && c < vc ? g[r * ldg + c] : from_float<T>(0.f);
    }
  }
}

template <class C, class T, bool kATrans, bool kBKN, bool kAligned>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks) gemm_tc_kernel(const GemmArgs<T> p) {
  constexpr int kBM = C::kBlockM, kBN = C::kBlockN, kBK = C::kBlockK, kS = C::kStages;
  constexpr int kLdA = kATrans ? kBM + C::kPad : kBK + C::kPad;
  constexpr int kLdB = kBKN ? kBN + C::kPad : kBK + C::kPad;
  // Per stage: sA then sB, C::kTileElems each.
  T* smem = dynamic_smem<T>();
  auto sA = [&](int stage) { return smem + stage * 2 * C::kTileElems; };
  auto sB = [&](int stage) { return smem + stage * 2 * C::kTileElems + C::kTileElems; };

  const int m0 = int(blockIdx.y) * kBM, n0 = int(blockIdx.x) * kBN;
  const int warp = tc::warp_id(), lane = tc::lane_id();
  const int wm = warp / C::kWarpsN, wn = warp % C::kWarpsN;
  const int n_tiles = (p.k + kBK - 1) / kBK;

  auto issue = [&](int kt) {
    const int k0 = kt * kBK, stage = kt % kS;
    if constexpr (kATrans) {
      load_tile<T, kBK, kBM, kAligned, C::kThreads>(sA(stage), kLdA, p.a + k0 * p.lda + m0, p.lda,
                                                    p.k - k0, p.m - m0);
    } else {
      load_tile<T, kBM, kBK, kAligned, C::kThreads>(sA(stage), kLdA, p.a + m0 * p.lda + k0, p.lda,
                                                    p.m - m0, p.k - k0);
    }
    if constexpr (kBKN) {
      load_tile<T, kBK, kBN, kAligned, C::kThreads>(sB(stage), kLdB, p.b + k0 * p.ldb + n0, p.ldb,
                                                    p.k - k0, p.n - n0);
    } else {
      load_tile<T, kBN, kBK, kAligned, C::kThreads>(sB(stage), kLdB, p.b + n0 * p.ldb + k0, p.ldb,
                                                    p.n - n0, p.k - k0);
    }
  };

  float acc[C::kMi][C::kNj][4];
#pragma unroll
  for (int i = 0; i < C::kMi; ++i) {
#pragma unroll
    for (int j = 0; j < C::kNj; ++j)
      acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;
  }

  // Tiles 0 .. kS-2 in flight before the loop; one group per tile (empty past the end), so at
  // the top of step kt exactly kS - 2 groups younger than tile kt may still be pending.
#pragma unroll
  for (int s = 0; s < kS - 1; ++s) {
    if (s < n_tiles) issue(s);
    cp_async_commit();
  }
  for (int kt = 0; kt < n_tiles; ++kt) {
    cp_async_wait<kS - 2>();
    __syncthreads();  // tile kt visible; every warp is done with step kt - 1's stage
    if (kt + kS - 1 < n_tiles) issue(kt + kS - 1);  // into the stage step kt - 1 read
    cp_async_commit();

    const T* a_s = sA(kt % kS);
    const T* b_s = sB(kt % kS);
#pragma unroll
    for (int ks = 0; ks < kBK; ks += 16) {
      uint32_t af[C::kMi][4], bf[C::kNj / 2][4];
#pragma unroll
      for (int i = 0; i < C::kMi; ++i) {
        const int mr = wm * C::kWarpM + i * 16;
        if constexpr (kATrans) {
          tc::load_a_trans(af[i], a_s, kLdA, mr, ks);
        } else {
          tc::load_a(af[i], a_s, kLdA, mr, ks);
        }
      }
#pragma unroll
      for (int j = 0; j < C::kNj / 2; ++j) {
        const int nc = wn * C::kWarpN + j * 16;
        if constexpr (kBKN) {
          tc::load_b_kn(bf[j], b_s, kLdB, ks, nc);
        } else {
          tc::load_b_nk(bf[j], b_s, kLdB, nc, ks);
        }
      }
#pragma unroll
      for (int i = 0; i < C::kMi; ++i) {
#pragma unroll
        for (int j = 0; j < C::kNj / 2; ++j) {
          tc::mma<T>(acc[i][2 * j], af[i], bf[j][0], bf[j][1]);
          tc::mma<T>(acc[i][2 * j + 1], af[i], bf[j][2], bf[j][3]);
        }
      }
    }
  }
  cp_async_wait<0>();  // no copy outlives the block (only empty groups can be left)

  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int i = 0; i < C::kMi; ++i) {
#pragma unroll
    for (int e2 = 0; e2 < 2; ++e2) {
      const int row = m0 + wm * C::kWarpM + i * 16 + g + 8 * e2;
      if (row >= p.m) continue;
#pragma unroll
      for (int j = 0; j < C::kNj; ++j) {
        const int col = n0 + wn * C::kWarpN + j * 8 + 2 * t;
        if (col < p.n) store_element(p, row, col, acc[i][j][2 * e2]);
        if (col + 1 < p.n) store_element(p, row, col + 1, acc[i][j][2 * e2 + 1]);
      }
    }
  }
}

// ---- SIMT f32 -------------------------------------------------------------------------------

struct SimtConfig {
  static constexpr int kBlockM = 64, kBlockN = 64, kBlockK = 16;
  static constexpr int kThreads = 256;  // 16 × 16 threads, 4 × 4 outputs each
  static constexpr int kLd = kBlockM + 1;
  static constexpr size_t kSmemBytes = size_t(2 * kBlockK * kLd) * sizeof(float);
};

template <bool kATrans, bool kBKN>
__global__ void __launch_bounds__(SimtConfig::kThreads) gemm_simt_kernel(const GemmArgs<float> p) {
  using C = SimtConfig;
  constexpr int kBM = C::kBlockM, kBN = C::kBlockN, kBK = C::kBlockK, kLd = C::kLd;
  float* sA = dynamic_smem<float>();  // [kBK][kLd]: sA[k][m]
  float* sB = sA + kBK * kLd;         // [kBK][kLd]: sB[k][n]
  const int m0 = int(blockIdx.y) * kBM, n0 = int(blockIdx.x) * kBN;
  const int tid = int(threadIdx.x), tx = tid % 16, ty = tid / 16;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < p.k; k0 += kBK) {
    for (int i = tid; i < kBM * kBK; i += C::kThreads) {
      int m, k;  // coalesced along the stored rows
      if constexpr (kATrans) {
        k = i / kBM, m = i % kBM;
      } else {
        m = i / kBK, k = i % kBK;
      }
      const bool in = m0 + m < p.m && k0 + k < p.k;
      const int64_t at =
          kATrans ? int64_t(k0 + k) * p.lda + m0 + m : int64_t(m0 + m) * p.lda + k0 + k;
      sA[k * kLd + m] = in ? p.a[at] : 0.f;
    }
    for (int i = tid; i < kBN * kBK; i += C::kThreads) {
      int n, k;
      if constexpr (kBKN) {
        k = i / kBN, n = i % kBN;
      } else {
        n = i / kBK, k = i % kBK;
      }
      const bool in = n0 + n < p.n && k0 + k < p.k;
      const int64_t at = kBKN ? int64_t(k0 + k) * p.ldb + n0 + n : int64_t(n0 + n) * p.ldb + k0 + k;
      sB[k * kLd + n] = in ? p.b[at] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kBK; ++k) {
      float a[4], b[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) a[r] = sA[k * kLd + ty + 16 * r];
#pragma unroll
      for (int c = 0; c < 4; ++c) b[c] = sB[k * kLd + tx + 16 * c];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int row = m0 + ty + 16 * r;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int col = n0 + tx + 16 * c;
      if (row < p.m && col < p.n) store_element(p, row, col, acc[r][c]);
    }
  }
}

// ---- bias gradient --------------------------------------------------------------------------

constexpr int kBiasThreads = 256;  // 32 columns × 8 row groups
constexpr int kBiasCols = 32;

/// work[blockIdx.y][col] = Σ of dy[row, col] over the block's kMatmulBiasRows rows: row group
/// w sums rows w, w + 8, ... in order, then the 8 group sums are added in order.
template <class T>
__global__ void __launch_bounds__(kBiasThreads)
    bias_partial_kernel(const MatmulBackwardBiasParams<T> p) {
  float* sPart = dynamic_smem<float>();  // [8][32]
  const int lane = int(threadIdx.x) % kBiasCols, grp = int(threadIdx.x) / kBiasCols;
  constexpr int kGroups = kBiasThreads / kBiasCols;
  const int64_t col = int64_t(blockIdx.x) * kBiasCols + lane;
  const int64_t r0 = int64_t(blockIdx.y) * kMatmulBiasRows;
  const int64_t r1 = r0 + kMatmulBiasRows < p.m ? r0 + kMatmulBiasRows : p.m;
  float s = 0.f;
  if (col < p.n) {
    for (int64_t r = r0 + grp; r < r1; r += kGroups) s += to_float(p.gDy[r * p.n + col]);
  }
  sPart[grp * kBiasCols + lane] = s;
  __syncthreads();
  if (grp == 0 && col < p.n) {
    float t = 0.f;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) t += sPart[g * kBiasCols + lane];
    p.gWork[int64_t(blockIdx.y) * p.n + col] = t;
  }
}

/// dbias[col] (+)= Σ_j work[j][col], j in order.
template <class T>
__global__ void __launch_bounds__(kBiasThreads)
    bias_final_kernel(const MatmulBackwardBiasParams<T> p) {
  const int64_t col = int64_t(blockIdx.x) * kBiasThreads + threadIdx.x;
  if (col >= p.n) return;
  const int64_t parts = matmul_bias_partials(p.m);
  float s = 0.f;
  for (int64_t j = 0; j < parts; ++j) s += p.gWork[j * p.n + col];
  p.gDbias[col] = p.accumulate ? p.gDbias[col] + s : s;
}

}  // namespace nuri::kernels::mm
