// Linear-layer GEMMs (device code). One product C [M, N] = A [M, K] · B [K, N] serves the three
// layouts of a linear layer:
//   forward          y [M, N]  = x [M, K] · W [N, K]ᵀ   A row-major,             B stored [n][k]
//   input gradient   dx [M, K] = dy [M, N] · W [N, K]   A row-major,             B stored [k][n]
//   weight gradient  dW [N, K] = dy [M, N]ᵀ · x [M, K]  A stored [k][m] (dyᵀ),  B stored [k][n]
// followed by an elementwise epilogue (bias, GELU with its pre-activation, the fused GELU
// backward, a residual add, accumulate into the output; T or f32 output).
//
// Tensor cores (T = bf16 or f16): a block owns a tile of C (TcConfig in matmul.h: 128 × 256,
// 128 × 128 or 64 × 64); warp w owns the sub-tile (w / kWarpsN, w % kWarpsN) as kMi × kNj m16n8
// f32 accumulators (64 × 64, 64 × 32, 32 × 32). K streams through a 3-stage
// cp.async pipeline of 32-deep A and B tiles in shared memory (K-contiguous tiles XOR-swizzled,
// the others padded by 8 elements a row, so neither the ldmatrix reads nor the cp.async writes
// conflict); fragments come from ldmatrix (.trans for the operands stored the other way round).
// Edges: rows and columns past M, N, K are zero-filled in shared memory (cp.async src-size < 16;
// element loads on the unaligned path) and the epilogue skips them.
//
// f32 (no tensor-core input type here): a SIMT kernel with the same layouts and epilogue, 64 × 64
// tiles, 16-deep shared-memory stages, 4 × 4 outputs per thread.
//
// Bias gradient: column sums in a fixed order, per 256-row block into a workspace, then in order.
#pragma once

#include <type_traits>

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

/// The epilogue of N adjacent elements (row, col..col+N-1) of C with product values v, as
/// N-element loads and stores (N > 1 needs N-element alignment of every operand's element).
template <class T, int N>
__device__ __forceinline__ void store_elements(const GemmArgs<T>& p, int row, int col,
                                               float (&v)[N]) {
  using PT = Pack<T, N>;
  using PF = Pack<float, N>;
  const int64_t i = int64_t(row) * p.n + col;
  if (p.bias) {
    const PT b = ld_global(reinterpret_cast<const PT*>(p.bias + col));
    for (int e = 0; e < N; ++e) v[e] += to_float(b.v[e]);
  }
  if (p.pre) {
    PT q;
    for (int e = 0; e < N; ++e) {
      q.v[e] = from_float<T>(v[e]);
      v[e] = act::gelu(v[e]);
    }
    st_global(reinterpret_cast<PT*>(p.pre + i), q);
  }
  if (p.gelu_pre) {
    const PT q = ld_global(reinterpret_cast<const PT*>(p.gelu_pre + i));
    for (int e = 0; e < N; ++e) v[e] *= act::gelu_grad(to_float(q.v[e]));
  }
  if (p.residual) {  // read by the thread that writes out[i] (they may alias)
    const PT r = ld_global(reinterpret_cast<const PT*>(p.residual + i));
    for (int e = 0; e < N; ++e) v[e] += to_float(r.v[e]);
  }
  // The old output is read only under `accumulate`; what is not read is zero, not left
  // unwritten: an unwritten value selected away under `accumulate` again was, to the compiler,
  // live across the persistent sm_90a kernel's tile loop (46 spilled registers).
  if (p.out_f32) {
    PF* o = reinterpret_cast<PF*>(p.out_f32 + i);
    PF w{};
    if (p.accumulate) w = ld_global(o);
    for (int e = 0; e < N; ++e) w.v[e] = p.accumulate ? w.v[e] + v[e] : v[e];
    st_global(o, w);
  } else {
    PT* o = reinterpret_cast<PT*>(p.out + i);
    PT w{};
    if (p.accumulate) w = ld_global(o);
    for (int e = 0; e < N; ++e) {
      w.v[e] = from_float<T>(p.accumulate ? to_float(w.v[e]) + v[e] : v[e]);
    }
    st_global(o, w);
  }
}

/// The epilogue of element (row, col) of C with product value v.
template <class T>
__device__ __forceinline__ void store_element(const GemmArgs<T>& p, int row, int col, float v) {
  float one[1] = {v};
  store_elements<T, 1>(p, row, col, one);
}

/// Whether the epilogue may move 4 elements at a time: N a multiple of 4 and every operand
/// aligned to 4 elements.
template <class T>
__device__ __forceinline__ bool quad_aligned(const GemmArgs<T>& p) {
  auto ok = [](const void* q, unsigned bytes) {
    return reinterpret_cast<uintptr_t>(q) % bytes == 0;  // null is aligned
  };
  constexpr unsigned kT = 4 * sizeof(T);
  return p.n % 4 == 0 && ok(p.bias, kT) && ok(p.pre, kT) && ok(p.gelu_pre, kT) &&
         ok(p.residual, kT) && ok(p.out, kT) && ok(p.out_f32, 16);
}

// ---- tensor cores ---------------------------------------------------------------------------

/// The epilogue of one warp's 16 rows of C from row0 and kNj · 8 columns from col0, held as
/// m16n8 accumulators (mma.sync's layout, which is also wgmma's per warp), 4 adjacent columns a
/// lane (tc::acc_quad): each warp-wide store covers 32 contiguous bytes of 8 rows. Rows and
/// columns past M and N are skipped; quads: quad_aligned(p).
template <class T, int kNj>
__device__ __forceinline__ void store_warp_rows(const GemmArgs<T>& p, const float (&acc)[kNj][4],
                                                int row0, int col0, bool quads) {
  const int g = tc::lane_id() / 4;
#pragma unroll
  for (int e2 = 0; e2 < 2; ++e2) {
    const int row = row0 + g + 8 * e2;
#pragma unroll
    for (int j = 0; j < kNj; j += 2) {
      float v[4];
      const int col = col0 + j * 8 + tc::acc_quad(v, acc, j, e2);
      if (row >= p.m || col >= p.n) continue;
      if (quads) {  // col < n and n % 4 == 0: all four are in range
        store_elements<T, 4>(p, row, col, v);
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (col + e < p.n) store_element(p, row, col + e, v[e]);
        }
      }
    }
  }
}


// The tile shapes (TcConfig, TcWide, TcLarge, TcSmall) are in matmul.h, for host code to size
// them.

/// Loads the kR × kC tile at g (row stride ldg) into s in layout `at` one element at a time (rows
/// of g not 16-byte aligned; visible after a barrier); rows at or past vr and columns at or past
/// vc are zero.
template <class T, int kR, int kC, int kThreads, class L>
__device__ __forceinline__ void load_tile_elements(T* s, L at, const T* g, int64_t ldg, int vr,
                                                   int vc) {
  for (int i = int(threadIdx.x); i < kR * kC; i += kThreads) {
    const int r = i / kC, c = i % kC;
    s[at(r, c)] = r < vr && c < vc ? g[r * ldg + c] : from_float<T>(0.f);
  }
}

/// The cp.async loads of one operand's kR × kC tiles as K advances (the aligned path), with what
/// does not change from tile to tile worked out once, before the K loop: this thread's
/// kIters 16-byte chunks, their shared-memory offsets in layout `at`, their global offset from
/// the operand's tile origin, and how many of their 8 elements lie inside the matrix along M or
/// N. A tile that lies wholly inside K (every one but the last when K % 32 != 0), issued from
/// the kernel's main loop (issue<true>), then costs an address add and a cp.async per chunk;
/// the prologue's and the last steps' tiles (issue<false>) check K. kKRows: the tile's rows run
/// along K ([32][kC], an operand stored K-major), else its columns do ([kR][32]).
template <class T, int kR, int kC, int kThreads, bool kKRows>
struct TileLoader {
  static constexpr int kChunks = kC / 8;  // 16-byte chunks a row
  static constexpr int kIters = kR * kChunks / kThreads;
  static_assert(kR * kChunks % kThreads == 0 && kThreads % kChunks == 0,
                "every thread loads the same chunks of every tile");
  static constexpr int kRowStep = kThreads / kChunks;  // rows between a thread's chunks
  const T* g;       // the tile origin at k = 0
  int64_t ldg;      // row stride of the operand in global memory
  int64_t g_off;    // this thread's first chunk from the origin; the others are kRowStep rows on
  int r0, c;        // this thread's first chunk: row, first column
  int s_off[kIters];
  int mn_valid[kIters];  // elements of the chunk inside M or N: 0 to 8

  /// vmn: rows (kKRows: columns) of the tile inside M or N.
  template <class L>
  __device__ __forceinline__ TileLoader(const T* g_, int64_t ldg_, int vmn, L at)
      : g(g_), ldg(ldg_) {
    const int i = int(threadIdx.x);
    r0 = i / kChunks;
    c = (i % kChunks) * 8;
    g_off = r0 * ldg + c;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int r = r0 + it * kRowStep;
      s_off[it] = at(r, c);
      mn_valid[it] = kKRows ? min(max(vmn - c, 0), 8) : (r < vmn ? 8 : 0);
    }
  }

  /// Issues the tile whose K range starts at k0 (of k in all) into s. kFull: the tile lies
  /// wholly inside K (the kernel's main loop), so nothing is clipped along K. (Written as one
  /// loop that selects the clipped count per chunk, ptxas if-converted the clipping into every
  /// step: about 80 instructions around TcLarge's 4 cp.async.)
  template <bool kFull>
  __device__ __forceinline__ void issue(T* s, int k0, int k) const {
    const T* base = g + (kKRows ? k0 * ldg : int64_t(k0)) + g_off;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const T* src = base + it * kRowStep * ldg;
      int valid = mn_valid[it];
      if constexpr (!kFull) {
        const int r = r0 + it * kRowStep;
        valid = kKRows ? (k0 + r < k ? valid : 0) : min(valid, max(k - k0 - c, 0));
      }
      cp_async<16>(s + s_off[it], valid ? src : g, valid * 2);
    }
  }
};

template <class C, class T, bool kATrans, bool kBKN, bool kAligned>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks) gemm_tc_kernel(const GemmArgs<T> p) {
  constexpr int kBM = C::kBlockM, kBN = C::kBlockN, kBK = C::kBlockK, kS = C::kStages;
  // M- or N-contiguous tiles ([kBK][kBM]) are padded rows; K-contiguous ones ([kBM][kBK])
  // swizzled (tc::Swizzle64B says why padding cannot serve both ldmatrix and cp.async there).
  constexpr int kLdA = kBM + C::kPad, kLdB = kBN + C::kPad;
  const auto at_a = [] {
    if constexpr (kATrans) {
      return tc::RowMajor{kLdA};
    } else {
      return tc::Swizzle64B{};
    }
  }();
  const auto at_b = [] {
    if constexpr (kBKN) {
      return tc::RowMajor{kLdB};
    } else {
      return tc::Swizzle64B{};
    }
  }();
  // Per stage: sA (C::kTileElemsA) then sB (C::kTileElemsB).
  T* smem = dynamic_smem<T>();
  auto sA = [&](int stage) { return smem + stage * C::kStageElems; };
  auto sB = [&](int stage) { return smem + stage * C::kStageElems + C::kTileElemsA; };

  const int m0 = int(blockIdx.y) * kBM, n0 = int(blockIdx.x) * kBN;
  const int warp = tc::warp_id();
  const int wm = warp / C::kWarpsN, wn = warp % C::kWarpsN;
  const int n_tiles = (p.k + kBK - 1) / kBK;

  // Aligned operands: loaders that keep each thread's chunk offsets across the K loop.
  using LoaderA = std::conditional_t<kATrans, TileLoader<T, kBK, kBM, C::kThreads, true>,
                                     TileLoader<T, kBM, kBK, C::kThreads, false>>;
  using LoaderB = std::conditional_t<kBKN, TileLoader<T, kBK, kBN, C::kThreads, true>,
                                     TileLoader<T, kBN, kBK, C::kThreads, false>>;
  struct Loaders {
    LoaderA a;
    LoaderB b;
  };
  [[maybe_unused]] const auto loaders = [&] {  // unused (0) without kAligned
    if constexpr (kAligned) {
      return Loaders{LoaderA(kATrans ? p.a + m0 : p.a + m0 * p.lda, p.lda, p.m - m0, at_a),
                     LoaderB(kBKN ? p.b + n0 : p.b + n0 * p.ldb, p.ldb, p.n - n0, at_b)};
    } else {
      return 0;  // element loads below
    }
  }();

  // Issues tile kt (full: std::true_type where it lies inside K).
  auto issue = [&](int kt, auto full) {
    const int k0 = kt * kBK, stage = kt % kS;
    if constexpr (kAligned) {
      loaders.a.template issue<decltype(full)::value>(sA(stage), k0, p.k);
      loaders.b.template issue<decltype(full)::value>(sB(stage), k0, p.k);
    } else {
      constexpr int kT = C::kThreads;
      if constexpr (kATrans) {
        load_tile_elements<T, kBK, kBM, kT>(sA(stage), at_a, p.a + k0 * p.lda + m0, p.lda,
                                            p.k - k0, p.m - m0);
      } else {
        load_tile_elements<T, kBM, kBK, kT>(sA(stage), at_a, p.a + m0 * p.lda + k0, p.lda,
                                            p.m - m0, p.k - k0);
      }
      if constexpr (kBKN) {
        load_tile_elements<T, kBK, kBN, kT>(sB(stage), at_b, p.b + k0 * p.ldb + n0, p.ldb,
                                            p.k - k0, p.n - n0);
      } else {
        load_tile_elements<T, kBN, kBK, kT>(sB(stage), at_b, p.b + n0 * p.ldb + k0, p.ldb,
                                            p.n - n0, p.k - k0);
      }
    }
  };

  float acc[C::kMi][C::kNj][4];
#pragma unroll
  for (int i = 0; i < C::kMi; ++i) {
#pragma unroll
    for (int j = 0; j < C::kNj; ++j)
      acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;
  }

  // One step of the K loop: tile kt from shared memory into the accumulators, tile kt + kS - 1
  // issued (full: std::true_type where that tile lies inside K).
  auto step = [&](int kt, auto full) {
    cp_async_wait<kS - 2>();
    __syncthreads();  // tile kt visible; every warp is done with step kt - 1's stage
    if (kt + kS - 1 < n_tiles) issue(kt + kS - 1, full);  // into the stage step kt - 1 read
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
          tc::load_a(af[i], a_s, at_a, mr, ks);
        }
      }
#pragma unroll
      for (int j = 0; j < C::kNj / 2; ++j) {
        const int nc = wn * C::kWarpN + j * 16;
        if constexpr (kBKN) {
          tc::load_b_kn(bf[j], b_s, kLdB, ks, nc);
        } else {
          tc::load_b_nk(bf[j], b_s, at_b, nc, ks);
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
  };

  // Tiles 0 .. kS-2 in flight before the loop; one group per tile (empty past the end), so at
  // the top of step kt exactly kS - 2 groups younger than tile kt may still be pending. The
  // main loop runs while the tile it issues lies inside K; the last steps, which may issue the
  // tile K ends in, are a second loop, so the main one never clips.
  [[maybe_unused]] const int full_tiles = p.k / kBK;
#pragma unroll
  for (int s = 0; s < kS - 1; ++s) {
    if (s < n_tiles) issue(s, std::false_type{});
    cp_async_commit();
  }
  int kt = 0;
  if constexpr (kAligned) {
    for (; kt + kS - 1 < full_tiles; ++kt) step(kt, std::true_type{});
  }
  for (; kt < n_tiles; ++kt) step(kt, std::false_type{});
  cp_async_wait<0>();  // no copy outlives the block (only empty groups can be left)

  // The epilogue: each warp its kMi × kNj accumulators.
  const bool quads = quad_aligned(p);
#pragma unroll
  for (int i = 0; i < C::kMi; ++i) {
    store_warp_rows(p, acc[i], m0 + wm * C::kWarpM + i * 16, n0 + wn * C::kWarpN, quads);
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
