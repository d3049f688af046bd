// Host interface of the fused attention kernels (attention_fwd.cuh, attention_bwd.cuh): the
// parameter struct, the tile configurations (so host code can size shared memory without device
// code) and the launchers, instantiated for __nv_bfloat16 and __half in attention_fwd.cu and
// attention_bwd.cu. Plain C++: the CUDA backend (csrc/backend/cuda/attention.cpp) and the GPU
// benchmark include it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "sm90.h"

namespace nuri::kernels {

/// Strides in elements of a [B, T, heads, D] tensor over B, T and heads; D has unit stride.
struct AttnStrides {
  int64_t b = 0, t = 0, h = 0;
};

/// One attention call. q [B, T, H, D]; k, v [B, T, Hkv, D] with Hkv dividing H (query head h
/// reads kv head h / (H / Hkv)); every row 16-byte aligned (base pointers and strides), so that
/// tiles load with 16-byte cp.async. lse, and the backward's Di, are [B, H, T] f32, contiguous.
template <class T>
struct AttentionParams {
  const T* q = nullptr;
  const T* k = nullptr;
  const T* v = nullptr;
  T* out = nullptr;       // [B, T, H, D] forward output; backward input (for Di = rowsum(dO∘O))
  float* lse = nullptr;   // [B, H, T] natural-log log-sum-exp of the scaled scores
  const T* dout = nullptr;  // backward: [B, T, H, D]
  T* dq = nullptr;          // backward outputs, shapes of q, k, v
  T* dk = nullptr;
  T* dv = nullptr;
  AttnStrides q_s, k_s, v_s, out_s, dout_s, dq_s, dk_s, dv_s;
  int batch = 0, seq = 0, heads = 0, kv_heads = 0, head_dim = 0;
  float scale = 0.f;  // softmax scale (the caller resolves "0 means 1/sqrt(D)")
  bool causal = true;
  /// Backward only: dQ without atomics (a separate query-major pass; bits independent of block
  /// order), or accumulated with f32 atomics from the key-major pass (faster, order-dependent).
  bool deterministic = true;
  /// Packed documents (causal only; null: none), [B, T] each, from AttentionOptions::documents:
  /// query t sees keys [key_start[b, t], t]; key t is seen by queries [t, query_end[b, t]).
  /// Both nondecreasing along t, so a tile's first row has its smallest bound. The query-major
  /// kernels read key_start for their rows, the key-major ones query_end for theirs. The
  /// kernels trust these (the CPU backend checks them: check_document_bounds); bounds that break
  /// the rules give wrong values, not out-of-bounds accesses.
  const int* key_start = nullptr;
  const int* query_end = nullptr;
};

/// Head dims with compiled kernels. Adding one is one line in each dispatch
/// (attention_fwd.cu, attention_bwd.cu) and one here.
constexpr int kAttentionHeadDims[] = {64, 128};
constexpr bool attention_head_dim_supported(int d) {
  for (int x : kAttentionHeadDims) {
    if (x == d) return true;
  }
  return false;
}

/// The sm_80-class kernels' Q, K, V and dO tiles in shared memory keep ldmatrix reads and cp.async
/// writes free of bank conflicts in one of two ways: rows padded by 8 elements (16 bytes), or
/// unpadded rows with their 16-byte chunks XOR-swizzled (tc::Swizzle128B<D>). The swizzle saves
/// 1/9 (D 64) or 1/17 (D 128) of the bytes but costs each fragment load an XOR, so only the
/// forwards take it where their blocks per SM would be decided by shared memory: the 128-row
/// forward on 32-key tiles, and the 64-row forward where attn_fwd_swizzled says so.
constexpr int attn_row_stride(int d) { return d + 8; }
/// Elements from one row of a tile to the next, padded or swizzled.
constexpr int attn_tile_ld(int d, bool swizzled) { return swizzled ? d : attn_row_stride(d); }
/// Bytes of a tile of `rows` rows of D 16-bit elements, padded or swizzled.
constexpr size_t attn_tile_bytes(int rows, int d, bool swizzled) {
  return size_t(rows) * size_t(attn_tile_ld(d, swizzled)) * 2;
}

/// Shared memory the driver reserves for each resident block, beside the kernel's own.
constexpr size_t kSmemReservedPerBlock = 1024;

/// Blocks of `bytes` of shared memory that fit an SM with `smem_per_sm` (allocated in 128-byte
/// units).
constexpr size_t blocks_by_smem(size_t bytes, size_t smem_per_sm) {
  return smem_per_sm / ((bytes + 127) / 128 * 128 + kSmemReservedPerBlock);
}

/// Blocks per SM the forward's registers must allow (its __launch_bounds__), on a 64K-register
/// SM: 64-row blocks (one m16 row tile a warp) 4 (≤ 128 registers) at D 64, 3 (≤ 168) at D 128;
/// 128-row blocks 2 (≤ 255).
constexpr int attn_fwd_min_blocks(int m_tiles, int d) { return m_tiles == 2 ? 2 : d <= 64 ? 4 : 3; }

/// Forward: a block of 4 warps owns kBlockM = 4 · kWarpRows query rows of one (b, h) and walks
/// key tiles of kBlockN (64, or 32 for 128-row blocks on GPUs with 100 KiB of shared memory a
/// SM: attn_fwd_q128_key_rows). Shared memory: one K and one V tile, each loading with cp.async
/// while the other is in use (FlashAttention-2's pipeline), and the Q tile.
/// - kWarpRows 16 (64-row blocks, NURI_ATTENTION=nuri): Q's fragments stay in registers and its
///   tile passes through the V tile before V_0 is loaded there.
/// - kWarpRows 32 (128-row blocks, NURI_ATTENTION=nuri128; FlashAttention-2's shape on A100):
///   every K or V fragment read from shared memory feeds two m16 products instead of one. Q has
///   a tile of its own; at D 64 its fragments stay in registers, at D 128 (two 16 × 128 output
///   accumulators a thread) they are read from that tile at each key tile.
/// The tiles are padded, or swizzled with kSwizzled_ (always on 32-key tiles, whose padded
/// tiles would not fit two blocks on a 100 KiB SM; for 64-row blocks, attn_fwd_swizzled).
template <int D, int kWarpRows_ = 16, int kBlockN_ = 64, bool kSwizzled_ = kBlockN_ == 32>
struct AttnFwdConfig {
  static_assert(kWarpRows_ == 16 || kWarpRows_ == 32, "a warp owns one or two m16 row tiles");
  static_assert(kBlockN_ == 64 || (kBlockN_ == 32 && kWarpRows_ == 32 && kSwizzled_),
                "key tiles of 64, or of 32 (swizzled) for 128-row blocks");
  static constexpr int kThreads = 128;
  static constexpr int kWarpRows = kWarpRows_;
  static constexpr int kMTiles = kWarpRows / 16;  // m16 row tiles a warp owns
  static constexpr int kBlockM = 4 * kWarpRows;   // query rows per block
  static constexpr int kBlockN = kBlockN_;        // keys per tile
  static constexpr bool kQInRegs = kMTiles * D <= 128;
  static constexpr bool kQInV = kBlockM <= kBlockN;  // Q's tile is V's place
  static_assert(kQInRegs || !kQInV, "Q may borrow V's place only on its way to registers");
  static constexpr bool kSwizzled = kSwizzled_;
  static constexpr size_t kSmemBytes =
      attn_tile_bytes(2 * kBlockN + (kQInV ? 0 : kBlockM), D, kSwizzled);
  static constexpr int kMinBlocks = attn_fwd_min_blocks(kMTiles, D);
};

/// Whether the 64-row forward swizzles its tiles on a GPU with `smem_per_sm` bytes of shared
/// memory a SM: where padded tiles let fewer blocks share the SM than its registers allow
/// (attn_fwd_min_blocks) and swizzled ones let more. At D 128 on an RTX 3090/4090 (100 KiB)
/// that is 3 blocks of 32768 B instead of 2 of 34816 B; on an A100 or H100 the registers bound
/// both at 3, and at D 64 every GPU nuri targets fits the 4 the registers allow.
constexpr bool attn_fwd_swizzled(int d, size_t smem_per_sm) {
  const size_t padded = blocks_by_smem(attn_tile_bytes(2 * 64, d, false), smem_per_sm);
  const size_t swizzled = blocks_by_smem(attn_tile_bytes(2 * 64, d, true), smem_per_sm);
  return padded < size_t(attn_fwd_min_blocks(1, d)) && swizzled > padded;
}

/// The key tile of the 128-row forward on a GPU with `smem_per_sm` bytes of shared memory a
/// SM: 64 where two blocks fit beside each other (the driver reserves 1 KiB a block), else 32,
/// FlashAttention-2's shape for sm_86/89 (at D 128, 69632 B a block fits twice on an A100's
/// 164 KiB or an H100's 228 KiB, not on an RTX 3090/4090's 100 KiB; 49152 B with 32-key tiles,
/// swizzled, does).
constexpr int attn_fwd_q128_key_rows(int d, size_t smem_per_sm) {
  return blocks_by_smem(attn_tile_bytes(128 + 2 * 64, d, false), smem_per_sm) >= 2 ? 64 : 32;
}

/// Backward, key-major pass (dK, dV and, when not deterministic, atomic dQ): a block of 4 warps
/// owns 64 keys (16 per warp) of one (b, kv head) and walks the query tiles of every query head
/// sharing it (32 rows per tile, 2-stage pipeline). Shared memory: K, V + 2 × (Q + dO) tiles,
/// dSᵀ [64 keys][32 queries] (padded), lse and Di of a query tile for each stage.
template <int D>
struct AttnBwdKVConfig {
  static constexpr int kThreads = 128;
  static constexpr int kBlockN = 64;  // keys per block
  static constexpr int kBlockM = 32;  // queries per tile
  static constexpr int kStages = 2;
  static constexpr size_t kSmemBytes =
      attn_tile_bytes(2 * kBlockN + 2 * kStages * kBlockM, D, false) +
      size_t(kBlockN) * (kBlockM + 8) * 2 + size_t(kStages) * 2 * kBlockM * sizeof(float);
};

/// Backward, query-major dQ pass (deterministic mode): a block of 4 warps owns 64 query rows of
/// one (b, h) and walks key tiles of 32 (2-stage pipeline). Shared memory: 2 × (K + V) tiles,
/// through which the Q and dO tiles pass on their way to registers before the first K and V
/// tiles load there, and lse and Di of its rows.
template <int D>
struct AttnBwdQConfig {
  static constexpr int kThreads = 128;
  static constexpr int kBlockM = 64;  // query rows per block
  static constexpr int kBlockN = 32;  // keys per tile
  static constexpr int kStages = 2;
  static_assert(2 * kBlockM <= 2 * kStages * kBlockN, "Q and dO fit in the K/V stages");
  static constexpr size_t kSmemBytes =
      attn_tile_bytes(2 * kStages * kBlockN, D, false) + size_t(2 * kBlockM) * sizeof(float);
};

/// Forward for sm_90a (attention_fwd_sm90.cuh), FlashAttention-3's structure: three
/// warpgroups, a producer issuing TMA loads of Q and of K/V tiles into kStages stages (mbarrier
/// full/empty pairs) and two consumers of 64 query rows each, computing S = Q Kᵀ and O += P V
/// with wgmma (Q and K from shared memory, P from registers, V from shared memory read
/// MN-major). Tiles are stored in the 128-byte swizzle, as 64-column atoms of [rows][128 B].
template <int D>
struct AttnFwdSm90Config {
  static constexpr int kThreads = 384;  // producer + 2 consumer warpgroups
  static constexpr int kBlockM = 128;   // query rows per block, 64 per consumer
  static constexpr int kBlockN = 128;   // keys per tile
  static constexpr int kStages = 2;
  static constexpr int kAtoms = D / 64;  // 64-column (128-byte) swizzle atoms per row
  static constexpr size_t kQBytes = size_t(kBlockM) * D * 2;
  static constexpr size_t kTileBytes = size_t(kBlockN) * D * 2;  // one K or V tile
  /// Registers per thread after setmaxnreg: 24 + 2 x 240 = 504, the whole pool of a 384-thread
  /// block (3 x 168; sm90.h).
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;
  static_assert(setmaxnreg_split_fits(kThreads, kProducerRegs, kConsumerRegs, 2),
                "setmaxnreg: the split must fit the registers the block is launched with");
  /// Slack to align the tiles to 1024 bytes (the swizzle's repeat), the tiles, the barriers.
  /// Slack, Q, O (staged for the tensor store), the K/V stages, the pipeline's barriers and
  /// q_empty.
  static constexpr size_t kSmemBytes =
      1024 + 2 * kQBytes + kStages * 2 * kTileBytes + (2 + 3 * kStages) * sizeof(uint64_t);
  /// The consumers' turns (ping-pong): named barriers kSchedBarrier (consumer 0's) and the next
  /// (consumer 1's), each phase one consumer waiting and the other passing the turn.
  static constexpr unsigned kSchedBarrier = 1, kSchedThreads = 256;
  /// Each consumer's own barrier (its 128 threads) around its epilogue: kEpilogueBarrier + c.
  static constexpr unsigned kEpilogueBarrier = 3;
};

/// The sm_90a backward (attention_bwd_sm90.cuh), in the forward's structure (a TMA producer
/// warpgroup, two wgmma consumer warpgroups of 64 rows). dK/dV: 128 keys a block, query tiles
/// of 64. dQ: 128 query rows a block, key tiles of 64. Each stage holds two 64-row tiles (Q and
/// dO, or K and V).
template <int D>
struct AttnBwdSm90Config {
  static constexpr int kThreads = 384;
  static constexpr int kBlock = 128;  // keys (dK/dV) or query rows (dQ) a block owns
  static constexpr int kTile = 64;    // rows of the tiles it walks
  static constexpr int kStages = 2;
  static constexpr int kAtoms = D / 64;
  static constexpr size_t kBlockBytes = size_t(kBlock) * D * 2;  // K or V; Q or dO
  static constexpr size_t kTileBytes = size_t(kTile) * D * 2;
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;  // as the forward's
  static_assert(setmaxnreg_split_fits(kThreads, kProducerRegs, kConsumerRegs, 2),
                "setmaxnreg: the split must fit the registers the block is launched with");
  /// Per stage, the walked tile's row statistics the dK/dV kernel stages beside it: lse·log2 e
  /// and Di of its kTile query rows.
  static constexpr size_t kStatsBytes = size_t(2 * kTile) * sizeof(float);
  static constexpr size_t kSmemBytes = 1024 + 2 * kBlockBytes + kStages * 2 * kTileBytes +
                                       kStages * kStatsBytes + (1 + 2 * kStages) * sizeof(uint64_t);
};

/// out and lse like attention_forward, with the sm_90a kernel: an H100/H200 (compute
/// capability 9.0) in a build where sm90a_compiled() (sm90.h), or the emulator. Returns "" when
/// launched; else why it declined, launching nothing and writing nothing: the driver refused a
/// tensor map (cuTensorMapEncodeTiled's rules on the tensors' address and strides).
template <class T>
std::string attention_forward_sm90(const AttentionParams<T>& p, cudaStream_t stream);

/// dq, dk, dv like attention_backward, with the sm_90a kernels (where attention_forward_sm90
/// runs; it declines as that does, writing nothing: a tensor map refused). dq is always the
/// query-major pass (no atomics, whatever p.deterministic says), so `workspace` holds
/// attention_backward_workspace_bytes(..., deterministic = true) bytes: Di.
template <class T>
std::string attention_backward_sm90(const AttentionParams<T>& p, void* workspace,
                                    cudaStream_t stream);

/// out and lse from q, k, v. T is __nv_bfloat16 or __half; head_dim one of kAttentionHeadDims;
/// block_rows the query rows of a block, 64 or 128 (AttnFwdConfig). 128-row blocks take the key
/// tile attn_fwd_q128_key_rows gives for the current device's shared memory a SM, 64-row blocks
/// the tiles attn_fwd_swizzled says.
template <class T>
void attention_forward(const AttentionParams<T>& p, cudaStream_t stream, int block_rows = 64);

/// Bytes of device workspace attention_backward needs: Di [B, H, T] f32, plus an f32 dQ
/// accumulator [B, T, H, D] when not deterministic (each part 256-byte aligned).
size_t attention_backward_workspace_bytes(int batch, int seq, int heads, int head_dim,
                                          bool deterministic);

/// dq, dk, dv from q, k, v, out, lse and dout; `workspace` holds
/// attention_backward_workspace_bytes(...) bytes of device memory.
template <class T>
void attention_backward(const AttentionParams<T>& p, void* workspace, cudaStream_t stream);

}  // namespace nuri::kernels
