// Linear-layer GEMM for sm_90a (H100/H200): the three layouts and the epilogues of matmul.cuh
// (C = A·B, then bias, GELU with its pre-activation, the fused GELU backward, a residual add,
// accumulate; T or f32 output), computed with the Hopper units.
//
// The grid is persistent: one block an SM (its shared memory allows no second), which walks the
// 128 × 256 tiles of C (mm::Sm90Config) w = blockIdx.x, w + gridDim.x, ... (along N first, as
// a grid of one block a tile would be scheduled). A block has three warpgroups:
//  - warpgroup 0, the producer, gives its registers back (setmaxnreg) and one of its threads
//    issues the TMA loads of each 64-deep K step's A and B tiles into stage it % kStages (`it`
//    counts the block's steps over all its tiles), completing on the stage's "full" mbarrier;
//    before reusing a stage it waits on its "empty" mbarrier, on which every consumer thread
//    arrives once done with it. So the next tile's first steps load while the consumers store
//    this one's results, and a block's tiles after the first do not wait for their pipeline to
//    fill (a grid of one block a tile, 1 block an SM, waited at every tile; the tensor cores
//    still idle through each epilogue, which the consumers that issue the wgmma run);
//  - warpgroups 1 and 2, the consumers, own 64 rows of the tile each: per K step one wgmma group
//    of four m64n256k16 products from shared memory into 128 f32 accumulators a thread, kept in
//    flight while the next step's group is issued (wait_group 1), so a stage is released one step
//    late and the tensor cores never wait for the issue of the next group.
// Why 256 columns: per k16 step the two consumers' wgmma read 2 × (2 + 8) KiB of shared
// memory and TMA writes 12 KiB for 2 · 64 · 256 · 16 products, 256 clocks of an H100 SM's
// tensor cores (2048 bf16 FMA a clock): 128 bytes a clock, what shared memory serves. On
// 128 × 128 tiles the same count gave 160 bytes a clock, more than it serves.
// Operands reach shared memory as TMA writes them with the 128-byte swizzle, in 16 KiB (A) and
// 32 KiB (B) tiles:
//   A [M, K] row-major (forward, input gradient): K-major, one atom of 128 rows × 64 k;
//   A stored [K, M] (weight gradient, dyᵀ):        MN-major, two atoms of 64 k rows × 64 m;
//   B stored [N, K] (forward, W):                  K-major, one atom of 256 rows × 64 k;
//   B stored [K, N] (gradients):                   MN-major, four atoms of 64 k rows × 64 n;
// wgmma reads the MN-major ones with its transpose bits (16-bit types only, which these are).
// TMA zero-fills what lies past M, N or K, so edges need no code in the loop; the epilogue skips
// rows and columns past M and N and is matmul.cuh's (store_warp_rows): wgmma's accumulator
// layout per warp is mma.sync's.
#pragma once

#include "matmul.cuh"
#include "sm90.cuh"

namespace nuri::kernels::mm {

/// The kernel's parameters: the product and its epilogue, and the tensor maps of A and B (two
/// dimensions, the contiguous one first; boxes of 64 elements by 128 (A) or 256 (B) rows for a
/// K-major operand, by 64 rows for an MN-major one).
template <class T>
struct GemmSm90Params {
  CUtensorMap a_map, b_map;
  GemmArgs<T> p;
};

template <class T, bool kATrans, bool kBKN>
__global__ void __launch_bounds__(Sm90Config::kThreads, 1)
    gemm_sm90_kernel(const __grid_constant__ GemmSm90Params<T> prm) {
  using C = Sm90Config;
  constexpr int kBM = C::kBlockM, kBN = C::kBlockN, kBK = C::kBlockK, kS = C::kStages;
  constexpr size_t kTileA = C::kTileBytesA, kTileB = C::kTileBytesB;
  static_assert(kBK == 64, "a K step is one 128-byte swizzle atom of 16-bit elements deep");
  static_assert(kBN == 256 && kBM == 128, "two consumers of m64n256 products");
  static_assert(C::kSmemBytes ==
                    1024 + kS * (kTileA + kTileB) + sm90::Pipeline<kS>::words() * sizeof(uint64_t),
                "Sm90Config's shared memory is this kernel's layout");
  const GemmArgs<T>& p = prm.p;

  // Shared memory, aligned up to the swizzle's 1024-byte repeat: the A stages, the B stages,
  // then the pipeline's barriers.
  unsigned char* const sA = sm90::aligned_smem();
  unsigned char* const sB = sA + kS * kTileA;
  const sm90::Pipeline<kS> pipe{reinterpret_cast<uint64_t*>(sB + kS * kTileB)};
  pipe.init();

  // Tile w of the n_tiles: rows m0 = w / tiles_n · kBM, columns n0 = w % tiles_n · kBN.
  const int tiles_n = (p.n + kBN - 1) / kBN;
  const int n_tiles = tiles_n * ((p.m + kBM - 1) / kBM);
  const int n_steps = (p.k + kBK - 1) / kBK;
  const int wg = int(threadIdx.x) / 128;

  if (wg == 0) {
    // ---- producer ----
    setmaxnreg<false, C::kProducerRegs>();
    if (threadIdx.x == 0) {
      int it = 0;  // the block's K steps so far, over its tiles: the pipeline's stage and phase
      for (int w = int(blockIdx.x); w < n_tiles; w += int(gridDim.x)) {
        const int m0 = w / tiles_n * kBM, n0 = w % tiles_n * kBN;
        for (int kt = 0; kt < n_steps; ++kt, ++it) {
          const int k0 = kt * kBK;
          pipe.wait_empty(it);
          uint64_t* full = pipe.expect(it, 0, unsigned(kTileA + kTileB));
          // An operand's tile of `rows` rows along M or N: K-major ([rows][K]) one box of rows ×
          // 64 k; MN-major ([K][MN]) the boxes of mn0..mn0+63, mn0+64..mn0+127, ..., each 64 k
          // rows.
          auto load = [&](unsigned char* dst, const CUtensorMap* map, bool mn_major, int mn0,
                          int rows) {
            if (mn_major) {
              for (int at = 0; at < rows / 64; ++at) {
                const int32_t c[2] = {mn0 + 64 * at, k0};
                tma_load<2>(dst + at * (kBK * 128), map, c, full);
              }
            } else {
              const int32_t c[2] = {k0, mn0};
              tma_load<2>(dst, map, c, full);
            }
          };
          load(sA + (it % kS) * kTileA, &prm.a_map, kATrans, m0, kBM);
          load(sB + (it % kS) * kTileB, &prm.b_map, kBKN, n0, kBN);
        }
      }
    }
    return;
  }

  // ---- consumers ----
  setmaxnreg<true, C::kConsumerRegs>();
  const int c = wg - 1;  // this consumer's 64 rows of a tile: m0 + 64c ..
  const int warp = int(threadIdx.x) / 32 % 4;
  int it = 0;  // as the producer counts
  for (int w = int(blockIdx.x); w < n_tiles; w += int(gridDim.x)) {
    const int m0 = w / tiles_n * kBM, n0 = w % tiles_n * kBN;
    float acc[kBN / 8][4];
#pragma unroll
    for (int nb = 0; nb < kBN / 8; ++nb) acc[nb][0] = acc[nb][1] = acc[nb][2] = acc[nb][3] = 0.f;

    // K > 0 (the launcher's rule): at least one step, so the loop is the accumulators' only
    // path to the epilogue (were there a zero-step path around it, the compiler would merge the
    // two with register moves before the final wait, reading accumulators of a group in flight,
    // and ptxas would serialize every wgmma). Not unrolled, for the same reason (a remainder
    // copy).
    int kt = 0;
#pragma unroll 1
    do {
      const unsigned char* a = sA + (it % kS) * kTileA;
      const unsigned char* b = sB + (it % kS) * kTileB;
      pipe.wait_full(it);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kBK / 16; ++ks) {
        // A: this consumer's 64 rows (K-major: rows 64c.. of the 128-row atom; MN-major: atom
        // c). B: all 256 columns (K-major: the 256-row atom; MN-major: atoms 64 · 128 bytes
        // apart).
        const uint64_t a_desc = kATrans ? sm90::mnmajor_desc<kBK>(a + c * (kBK * 128), ks)
                                        : sm90::kmajor_desc<kBM>(a, 64 * c, ks);
        const uint64_t b_desc =
            kBKN ? sm90::mnmajor_desc<kBK>(b, ks) : sm90::kmajor_desc<kBN>(b, 0, ks);
        wgmma_ss<T, kBN, kATrans, kBKN>(reinterpret_cast<float(&)[kBN / 2]>(acc), a_desc,
                                        b_desc, true);
      }
      wgmma_commit();
      // Step it - 1's group has completed (groups complete in issue order): its stage is free
      // (at a tile's first step, the last tile's last stage was freed below).
      wgmma_wait<1>();
      if (kt > 0) pipe.release(it - 1);
      ++it;
    } while (++kt < n_steps);
    wgmma_wait<0>();
    pipe.release(it - 1);  // the producer may load the next tile's steps into it meanwhile

    // The epilogue: each warp its 16 rows of this consumer's 64.
    store_warp_rows(p, acc, m0 + 64 * c + 16 * warp, n0, quad_aligned(p));
  }
}

}  // namespace nuri::kernels::mm
