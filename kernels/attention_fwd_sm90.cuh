// Fused attention forward for sm_90a (H100/H200), FlashAttention-3's structure: the same
// results as attention_fwd.cuh (out and the natural-log lse), computed with the Hopper units.
//
// Persistent: one block per SM walks work tiles of 128 query rows of one (batch, head), the
// heaviest causal ones first. A block has three warpgroups:
//  - warpgroup 0, the producer, gives its registers back (setmaxnreg) and one of its threads
//    issues every load as a TMA tile copy: each work tile's Q (once the consumers are done with
//    the last one's), then K_j and V_j into stage j % kStages (j running on across work tiles),
//    each completing on its own "full" mbarrier; before reusing a stage it waits on the stage's
//    "empty" mbarrier, on which every consumer thread arrives when done with the stage;
//  - warpgroups 1 and 2, the consumers, take the registers and own 64 query rows each. Per key
//    tile: S = Q K_jᵀ as one wgmma group (Q and K from shared memory, both K-major), the mask
//    and the online softmax in registers (exp2, the scale folded into one FMA), P rounded to
//    the input type straight into A-operand registers, then O += P V_j as one wgmma group with V
//    read MN-major from shared memory as TMA stored it ([keys][D]: keys are the k index). The
//    products of S_{j+1} and P_j V_j are in flight together, and the softmax of S_{j+1} runs
//    while P_j V_j does (FlashAttention-3's intra-warpgroup overlap), and the two consumers
//    take turns issuing their products (its warpgroup scheduler). O goes through shared memory
//    to a TMA store per consumer, which runs while the next work tile starts.
// Tiles are stored as TMA writes them with the 128-byte swizzle: each 64-column (128-byte) slice
// of a [rows][D] tile is an atom of [rows][128 B], atoms one after the other. The wgmma
// accumulator layout per warp is mma.sync's, so the softmax and the stores are
// attention_fwd.cuh's. Causal blocks stop at the diagonal; the heaviest query tiles go first.
#pragma once

#include <cmath>
#include <memory>
#include <string>
#include <type_traits>

#include "attention_common.cuh"
#include "sm90.cuh"
#include "sm90.h"

namespace nuri::kernels {

/// The kernel's parameters: the call, and the tensor maps of q, k and v as rank-4 tensors
/// [B][heads][T][D] (innermost last here; the maps list D first) with boxes of 64 columns by
/// kBlockM (q) or kBlockN (k, v) rows.
template <class T>
struct AttnFwdSm90Params {
  CUtensorMap q_map, k_map, v_map;
  CUtensorMap o_map;  // out, boxes of 64 columns by 64 rows (one consumer's)
  AttentionParams<T> p;
  int n_q_blocks = 0, n_work = 0;  // query blocks of kBlockM per head; work tiles in all
};

namespace attn90 {

using namespace ::nuri::kernels::sm90;  // the Hopper building blocks

/// S = A₁·B₁ᵀ and R = A₂·B₂ᵀ over D (64 rows of A from row a_row0 of tiles of kARows rows, the
/// kN rows of B tiles of kN rows, all K-major) as one wgmma group of this warpgroup, waited for.
template <class T, int D, int kN, int kARows>
__device__ __forceinline__ void two_products(float (&s)[kN / 8][4], float (&r)[kN / 8][4],
                                             const unsigned char* a1, const unsigned char* b1,
                                             const unsigned char* a2, const unsigned char* b2,
                                             int a_row0) {
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    wgmma_ss<T, kN>(reinterpret_cast<float(&)[kN / 2]>(s), kmajor_desc<kARows>(a1, a_row0, ks),
                    kmajor_desc<kN>(b1, 0, ks), ks > 0);
  }
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    wgmma_ss<T, kN>(reinterpret_cast<float(&)[kN / 2]>(r), kmajor_desc<kARows>(a2, a_row0, ks),
                    kmajor_desc<kN>(b2, 0, ks), ks > 0);
  }
  wgmma_commit();
  wgmma_wait<0>();
}

/// TMA loads of a rows x D tile (D / 64 atoms) at row `row` of head `head`, batch `b`.
template <int kRows, int kAtoms>
__device__ __forceinline__ void load_rows(unsigned char* dst, const CUtensorMap* map, int row,
                                          int head, int b, uint64_t* bar) {
#pragma unroll
  for (int a = 0; a < kAtoms; ++a) {
    const int32_t at[4] = {64 * a, row, head, b};
    tma_load<4>(dst + a * kRows * 128, map, at, bar);
  }
}

/// The tensor maps of one launch, made before anything is launched. A map is that of a
/// [B, T, heads, D] view (strides in elements, D contiguous) as TMA sees it: dims {D, T, heads,
/// B}, boxes of 64 columns by `rows` rows of one head and batch, 128-byte swizzle. `why` names
/// the first map the driver refused (the later ones are not made); the launch then declines,
/// so that NURI_ATTENTION=auto runs another path, as it does where cuDNN declines.
struct TensorMaps {
  std::string why;

  template <class T>
  CUtensorMap operator()(const T* base, const AttnStrides& s, int batch, int seq, int heads, int d,
                         int rows, const char* name) {
    if (!why.empty()) return CUtensorMap{};
    // Encoded on the heap (aligned new: the 64 bytes the driver asks) and returned by copy: the
    // map holds no address of its own, and a return slot in the caller's frame is not always
    // aligned (GCC's TSan build handed BackwardLaunch's constructor one 16 bytes off).
    const auto encoded = std::make_unique<CUtensorMap>();
    CUtensorMap& m = *encoded;
    const cuuint64_t dim[4] = {cuuint64_t(d), cuuint64_t(seq), cuuint64_t(heads),
                               cuuint64_t(batch)};
    const cuuint64_t stride[3] = {cuuint64_t(s.t) * sizeof(T), cuuint64_t(s.h) * sizeof(T),
                                  cuuint64_t(s.b) * sizeof(T)};
    const cuuint32_t box[4] = {64, cuuint32_t(rows), 1, 1}, estride[4] = {1, 1, 1, 1};
    const CUtensorMapDataType type = std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                                               : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    const CUresult r =
        encode_tiled()(&m, type, 4, const_cast<T*>(base), dim, stride, box, estride,
                       CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                       CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
      why = "the driver refused the tensor map of " + std::string(name) + " (CUresult " +
            std::to_string(int(r)) + "; address " +
            std::to_string(reinterpret_cast<uintptr_t>(base) % 128) + " bytes past a 128-byte " +
            "boundary, strides " + std::to_string(s.b) + ", " + std::to_string(s.t) + ", " +
            std::to_string(s.h) + " elements)";
      return CUtensorMap{};
    }
    return m;
  }
};

}  // namespace attn90

template <class T, int D, bool kCausal>
__global__ void __launch_bounds__(AttnFwdSm90Config<D>::kThreads, 1)
    attention_fwd_sm90_kernel(const __grid_constant__ AttnFwdSm90Params<T> prm) {
  using Cfg = AttnFwdSm90Config<D>;
  constexpr int kM = Cfg::kBlockM, kN = Cfg::kBlockN, kStages = Cfg::kStages;
  constexpr int kAtoms = Cfg::kAtoms;
  constexpr int kKSteps = D / 16;   // k-steps of Q·Kᵀ
  constexpr int kPSteps = kN / 16;  // k-steps of P·V
  constexpr int kSBlocks = kN / 8;  // 8-key column blocks of S
  constexpr int kOBlocks = D / 8;   // 8-wide column blocks of O
  static_assert(D % 64 == 0, "head dims are whole 128-byte swizzle atoms");
  static_assert(Cfg::kSmemBytes == 1024 + 2 * Cfg::kQBytes + kStages * 2 * Cfg::kTileBytes +
                                       (sm90::Pipeline<kStages, 2>::words() + 1) *
                                           sizeof(uint64_t),
                "AttnFwdSm90Config's shared memory is this kernel's layout");
  const AttentionParams<T>& p = prm.p;

  // Shared memory, aligned up to the swizzle's 1024-byte repeat: Q, O (each consumer's 64 rows
  // on their way to the tensor store), the K and V stages, then the barriers.
  unsigned char* sQ = sm90::aligned_smem();
  unsigned char* sO = sQ + Cfg::kQBytes;
  unsigned char* sK = sO + Cfg::kQBytes;               // stage s at s · kTileBytes
  unsigned char* sV = sK + kStages * Cfg::kTileBytes;  // likewise
  // Q on once() (a phase per work tile); K_j and V_j as parts 0 and 1 of pipeline tile j, so
  // S = Q K_jᵀ starts before V_j lands. q_empty: every consumer thread is done with Q.
  const sm90::Pipeline<kStages, 2> pipe{
      reinterpret_cast<uint64_t*>(sV + kStages * Cfg::kTileBytes)};
  uint64_t* const q_empty = pipe.bars + sm90::Pipeline<kStages, 2>::words();

  const int wg = int(threadIdx.x) / 128;
  if (threadIdx.x == 0) mbarrier_init(q_empty, sm90::Pipeline<kStages, 2>::kConsumerThreads);
  pipe.init();  // fences thread 0's inits (q_empty's too) and meets the block at a barrier

  // Persistent: this block takes work tiles blockIdx.x, + gridDim.x, ... (a tile: 128 query rows
  // of one head and batch, the heaviest causal ones first). The K/V pipeline's tile index runs
  // on across work tiles, so its stages and phases follow from it alone.
  if (wg == 0) {
    // ---- producer ----
    setmaxnreg<false, Cfg::kProducerRegs>();
    if (threadIdx.x == 0) {
      int kv = 0, n = 0;
      for (int w = int(blockIdx.x); w < prm.n_work; w += int(gridDim.x), ++n) {
        const attn::QueryBlock blk = attn::work_tile<kCausal, kM, kN>(p, w, prm.n_q_blocks);
        if (n > 0) mbarrier_wait_parity(q_empty, unsigned((n - 1) & 1));
        mbarrier_arrive_expect_tx(pipe.once(), unsigned(Cfg::kQBytes));
        attn90::load_rows<kM, kAtoms>(sQ, &prm.q_map, blk.q0, blk.h, blk.b, pipe.once());
        for (int j = blk.first_tile; j < blk.n_tiles; ++j, ++kv) {
          const int s = kv % kStages;
          pipe.wait_empty(kv);
          attn90::load_rows<kN, kAtoms>(sK + s * Cfg::kTileBytes, &prm.k_map, j * kN, blk.kvh,
                                        blk.b, pipe.expect(kv, 0, unsigned(Cfg::kTileBytes)));
          attn90::load_rows<kN, kAtoms>(sV + s * Cfg::kTileBytes, &prm.v_map, j * kN, blk.kvh,
                                        blk.b, pipe.expect(kv, 1, unsigned(Cfg::kTileBytes)));
        }
      }
    }
    return;
  }

  // ---- consumers ----
  setmaxnreg<true, Cfg::kConsumerRegs>();
  const int c = wg - 1;                  // this consumer's 64 rows of each work tile
  const int warp = attn::warp_id() % 4;  // warp within the warpgroup: 16 of those rows
  const int lane = attn::lane_id();
  const int rg = lane / 4;
  const bool leader = threadIdx.x % 128 == 0;  // issues this consumer's tensor stores

  // The scale is folded into one FMA per score: P = exp2(s·c − m) with c = scale·log2 e and m
  // the row max of s·c: c times the max of the raw scores, or of their min when c < 0.
  const bool flip = p.scale < 0.f;
  const float scale_log2 = p.scale * attn::kLog2e;

  // FlashAttention-3's warpgroup scheduler (ping-pong): the two consumers take turns issuing
  // their products, each waiting for its turn at its own named barrier and passing it with an
  // arrival at the other's (Cfg::kSchedThreads arrivals a phase: the waiting consumer's and the
  // passing one's), so one consumer's softmax runs while the other's products hold the tensor
  // cores. Consumer 0's own arrival gives it the first turn; each consumer takes n_tiles + 1
  // turns a work tile, and the last arrival is left over when the block ends.
  constexpr unsigned kBar0 = Cfg::kSchedBarrier, kBar1 = kBar0 + 1, kCount = Cfg::kSchedThreads;
  auto wait_turn = [&] {
    if (c == 0) {
      named_barrier_sync<kBar0, kCount>();
    } else {
      named_barrier_sync<kBar1, kCount>();
    }
  };
  auto pass_turn = [&] {
    if (c == 0) {
      named_barrier_arrive<kBar1, kCount>();
    } else {
      named_barrier_arrive<kBar0, kCount>();
    }
  };
  // The consumer's own barrier for its epilogue (its 128 threads).
  constexpr unsigned kEpi0 = Cfg::kEpilogueBarrier, kEpi1 = kEpi0 + 1;
  auto sync_consumer = [&] {
    if (c == 0) {
      named_barrier_sync<kEpi0, 128>();
    } else {
      named_barrier_sync<kEpi1, 128>();
    }
  };
  if (c == 0) named_barrier_arrive<kBar0, kCount>();

  // This consumer's O rows as the tensor store reads them: [64 rows][128 B] atoms of 64 columns,
  // in the 128-byte swizzle (16-byte chunk index XOR row % 8).
  unsigned char* const sO_mine = sO + c * (64 * D * 2);

  int kv = 0, n = 0;
  for (int w = int(blockIdx.x); w < prm.n_work; w += int(gridDim.x), ++n) {
    const attn::QueryBlock blk = attn::work_tile<kCausal, kM, kN>(p, w, prm.n_q_blocks);
    // j below counts the tiles this work tile walks, from its first (packed documents: the one
    // holding its first row's document start): key tile first_tile + j, pipeline tile kv + j.
    const int q0 = blk.q0, h = blk.h, b = blk.b, j_first = blk.first_tile,
              n_tiles = blk.n_tiles - blk.first_tile;
    const int row_lo = q0 + 64 * c + warp * 16 + rg;  // query index of accumulator rows rg, rg + 8
    // Packed documents: the first key of each of the two rows (keys before it are masked; the
    // walk starts at the tile holding the work tile's first row's).
    const int first_key[2] = {attn::document_bound(p.key_start, b, row_lo, p.seq, 0),
                              attn::document_bound(p.key_start, b, row_lo + 8, p.seq, 0)};

    float rO[kOBlocks][4];
#pragma unroll
    for (int nb = 0; nb < kOBlocks; ++nb) rO[nb][0] = rO[nb][1] = rO[nb][2] = rO[nb][3] = 0.f;
    float rMax[2] = {-INFINITY, -INFINITY}, rSum[2] = {0.f, 0.f};

    // S_j = Q K_jᵀ for this warpgroup's 64 rows and the tile's kN keys, issued as one group.
    float rS[kSBlocks][4];
    auto issue_s = [&](int j) {
      pipe.wait_full(kv + j, 0);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kKSteps; ++ks) {
        wgmma_ss<T, kN>(reinterpret_cast<float(&)[kN / 2]>(rS),
                        sm90::kmajor_desc<kM>(sQ, 64 * c, ks),
                        sm90::kmajor_desc<kN>(sK + ((kv + j) % kStages) * Cfg::kTileBytes, 0, ks),
                        ks > 0);
      }
      wgmma_commit();
    };
    // P rounded to the input type, as the A operands (this warp's 16 rows) of P V.
    uint32_t rP[kPSteps][4];
    // O += P V_j, V read MN-major (its rows are the k index), issued as one group.
    auto issue_pv = [&](int j) {
      pipe.wait_full(kv + j, 1);
      wgmma_fence();
#pragma unroll
      for (int kb = 0; kb < kPSteps; ++kb) {
        wgmma_rs<T, D, true>(reinterpret_cast<float(&)[D / 2]>(rO), rP[kb],
                             sm90::mnmajor_desc<kN>(sV + ((kv + j) % kStages) * Cfg::kTileBytes, kb),
                             true);
      }
      wgmma_commit();
    };
    // The mask (keys past the end, causally past the row, and before the row's document, only
    // on tiles that reach any; masked scores take the value that loses the row max, or min,
    // whatever the scale's sign) and the online softmax of S_j: P_j in rS, and the factor for
    // what O holds so far.
    auto softmax = [&](int j, float (&alpha)[2]) {
      const int k0 = (j_first + j) * kN;
      const bool edge = k0 + kN > p.seq || (kCausal && k0 + kN - 1 > q0 + 64 * c + warp * 16) ||
                        k0 < first_key[1];
      if (edge) {
        attn::mask_scores<kCausal>(rS, k0, row_lo, p.seq, first_key, flip ? INFINITY : -INFINITY);
      }
      attn::softmax_tile(rS, rMax, rSum, alpha, scale_log2, flip);
    };

    // FlashAttention-3's overlap within a warpgroup: the products of S_{j+1} and of P_j V_j are
    // in flight together, and the softmax of S_{j+1} runs while P_j V_j is; only the rescale of
    // O waits for it. Groups complete in issue order, so wait_group 1 after issuing S_{j+1} and
    // then P_j V_j means S_{j+1} is done.
    mbarrier_wait_parity(pipe.once(), unsigned(n & 1));
    float alpha[2];
    wait_turn();
    issue_s(0);
    pass_turn();
    wgmma_wait<0>();
    softmax(0, alpha);  // O is still zero: nothing to rescale
#pragma unroll
    for (int kb = 0; kb < kPSteps; ++kb) attn::acc_to_a<T>(rP[kb], rS, kb);
    for (int j = 0; j + 1 < n_tiles; ++j) {
      wait_turn();
      issue_s(j + 1);
      issue_pv(j);
      pass_turn();
      wgmma_wait<1>();  // S_{j+1}
      softmax(j + 1, alpha);
      wgmma_wait<0>();      // P_j V_j
      pipe.release(kv + j);  // this thread is done with stage (kv + j) % kStages
      attn::rescale_rows(rO, alpha);
#pragma unroll
      for (int kb = 0; kb < kPSteps; ++kb) attn::acc_to_a<T>(rP[kb], rS, kb);
    }
    wait_turn();
    issue_pv(n_tiles - 1);
    pass_turn();
    wgmma_wait<0>();
    pipe.release(kv + n_tiles - 1);
    mbarrier_arrive(q_empty);  // every product reading Q has completed: the next Q may land
    kv += n_tiles;

    // out = O / rowsum; lse = ln(rowsum) + max (back from the log2 domain). O goes through
    // shared memory to one tensor store per consumer (rows past T are not written), which runs
    // while the next work tile starts; its source is rewritten only after the store has read it.
    float inv[2];
    attn::softmax_finish(inv, rMax, rSum, p.lse + (int64_t(b) * p.heads + h) * p.seq, row_lo,
                         p.seq);
    if (leader) cp_async_bulk_wait<0>();  // the previous work tile's store has read sO_mine
    sync_consumer();
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = 16 * warp + rg + 8 * half;  // row within this consumer's 64
#pragma unroll
      for (int nb = 0; nb < kOBlocks; ++nb) {
        const int chunk = (nb % 8) ^ (r % 8);  // the 128-byte swizzle
        unsigned char* dst =
            sO_mine + (nb / 8) * (64 * 128) + r * 128 + chunk * 16 + (lane % 4) * 4;
        st_shared(reinterpret_cast<uint32_t*>(dst),
                  attn::pack2<T>(rO[nb][2 * half] * inv[half], rO[nb][2 * half + 1] * inv[half]));
      }
    }
    fence_proxy_async();  // the plain stores, visible to the tensor store
    sync_consumer();
    if (leader) {
#pragma unroll
      for (int a = 0; a < kAtoms; ++a) {
        const int32_t at[4] = {64 * a, q0 + 64 * c, h, b};
        tma_store<4>(&prm.o_map, at, sO_mine + a * (64 * 128));
      }
      cp_async_bulk_commit();
    }
  }
  if (leader) cp_async_bulk_wait<0>();
}

}  // namespace nuri::kernels
