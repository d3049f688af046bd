// nuri's attention and GEMM kernels under the emulator's performance counters (emu.h): the
// layouts meant to be conflict-free are (zero excess shared-memory wavefronts for ldmatrix,
// cp.async writes and the epilogue), the tile loads and output stores touch the fewest 32-byte
// sectors, and the tensor-core and special-function work is what the tiling says (causal blocks
// stop at the diagonal). Also which tiles the attention forward takes for the emulated device's
// shared memory (its launch records). Emulated tree only (test_ops on cuda-emu).
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>

#include "attention.h"
#include "matmul.h"
#include "emu/emu.h"
#include "ops/harness.h"

namespace nuri::test {
namespace {

using emu::Access;
using emu::Instr;

class Counting {
 public:
  Counting() {
    emu::set_counters(true);
    emu::take_counters();
  }
  ~Counting() { emu::set_counters(false); }
};

/// Every launch of `kernel`: no excess wavefronts in any shared-memory access, and no excess
/// sectors in the listed global accesses. Returns the launches' sum.
emu::Counters expect_efficient(const std::vector<emu::LaunchCounters>& launches,
                               const std::string& kernel,
                               std::initializer_list<Access> global_at_minimum) {
  int seen = 0;
  for (const auto& l : launches) {
    if (l.kernel.find(kernel) == std::string::npos) continue;
    ++seen;
    for (Access a : {Access::ld_shared, Access::st_shared, Access::ldmatrix,
                     Access::cp_async_shared}) {
      EXPECT_EQ(l.total[a].excess(), 0u) << emu::format_counters(l);
    }
    for (Access a : global_at_minimum) {
      EXPECT_EQ(l.total[a].excess(), 0u) << emu::format_counters(l);
    }
  }
  EXPECT_GT(seen, 0) << "no launch of " << kernel;
  emu::LaunchCounters sum;  // printed: kernels/README.md records these
  sum.kernel = kernel + " (" + std::to_string(seen) + " launches)";
  sum.grid = dim3(0, 0, 0);
  sum.total = emu::sum_counters(launches, kernel);
  std::printf("%s", emu::format_counters(sum).c_str());
  return sum.total;
}

/// The counted launches of one attention forward on random bf16 q [b, t, h, d] and k, v
/// [b, t, hkv, d].
std::vector<emu::LaunchCounters> forward_launches(Backend& be, int64_t b, int64_t t, int64_t h,
                                                  int64_t hkv, int64_t d, bool causal) {
  const Shape qs{b, t, h, d}, ks{b, t, hkv, d};
  Tensor q = on(be, qs, random_vec(b * t * h * d, 71)),
         k = on(be, ks, random_vec(b * t * hkv * d, 72)),
         v = on(be, ks, random_vec(b * t * hkv * d, 73));
  Tensor out = be.empty(qs, DType::bf16), lse = zeros_f32(be, {b, h, t});
  AttentionOptions opt;
  opt.causal = causal;
  Counting counting;
  be.attention(q, k, v, out, lse, opt);
  return emu::take_counters();
}

// Sequences of whole tiles with 16-byte aligned rows: every tile load is whole sectors. (The
// lse/Di vectors of the backward are loaded 32 rows at a time at T-dependent offsets, so they
// are left out: at T = 65 a 128-byte read straddles 5 sectors.)
TEST(KernelCounters, AttentionLayoutsAreConflictFreeAndLoadsCoalesced) {
  const std::string name = backends().front();
  if (name != "cuda-emu") GTEST_SKIP() << "counters exist on the emulated backend only";
  auto be = make_backend(name);
  // Both head dims, causal and not (two of the four pairs: each costs ~10 s under TSan).
  for (const auto& [d, causal] : {std::pair<int64_t, bool>{64, true}, {128, false}}) {
    SCOPED_TRACE("D " + std::to_string(d) + (causal ? " causal" : " full"));
    const int64_t b = 1, t = 128, h = 2, hkv = 1;
    const Shape qs{b, t, h, d}, ks{b, t, hkv, d};
    Tensor q = on(*be, qs, random_vec(b * t * h * d, 71)),
           k = on(*be, ks, random_vec(b * t * hkv * d, 72)),
           v = on(*be, ks, random_vec(b * t * hkv * d, 73)),
           dout = on(*be, qs, random_vec(b * t * h * d, 74));
    Tensor out = be->empty(qs, DType::bf16), lse = zeros_f32(*be, {b, h, t});
    AttentionOptions opt;
    opt.causal = causal;
    Counting counting;
    be->attention(q, k, v, out, lse, opt);
    for (bool deterministic : {true, false}) {
      opt.deterministic = deterministic;
      Tensor dq = zeros(*be, qs), dk = zeros(*be, ks), dv = zeros(*be, ks);
      be->attention_backward(q, k, v, out, lse, dout, dq, dk, dv, opt);
    }
    const auto launches = emu::take_counters();
    const emu::Counters fwd = expect_efficient(
        launches, "attention_fwd_kernel", {Access::cp_async_global, Access::st_global});
    // Forward, per warp and key tile: D/16 · 8 products for S and 4 · D/8 for O (D in all),
    // and 2 · (1 + 16) exp2 (the rescale and 16 scores of each of the lane's two rows).
    // Query tile m of 64 rows visits m + 1 key tiles causally, all 2 otherwise.
    const int64_t tiles = causal ? 1 + 2 : 2 * 2, warps = 4;
    EXPECT_EQ(fwd[Instr::mma], uint64_t(b * h * tiles * warps * d));
    EXPECT_EQ(fwd[Instr::sfu], uint64_t(b * h * tiles * warps * 34));
    // One vote per warp and key tile: whether any of its rows' max moved (attn::rescale_rows
    // skips the rescale where none did).
    EXPECT_EQ(fwd[Instr::vote], uint64_t(b * h * tiles * warps));
    EXPECT_EQ(fwd[Instr::atomic], 0u);
    const emu::Counters dkdv =
        expect_efficient(launches, "attn_bwd_dkdv", {Access::st_global});
    const emu::Counters dq = expect_efficient(launches, "attn_bwd_dq", {Access::st_global});
    EXPECT_GT(dkdv[Instr::mma], 0u);
    EXPECT_GT(dq[Instr::mma], 0u);
    EXPECT_GT(dkdv[Instr::atomic], 0u);  // the atomic-dq run adds dQ from the key-major pass
    EXPECT_EQ(dq[Instr::atomic], 0u);
    // The dQ pass's Q and dO tiles pass through its two stages of K and V (4 tiles of 32 padded
    // rows): the launch asks for those and its 64 rows' lse and Di, no more.
    for (const auto& l : launches) {
      if (l.kernel.find("attn_bwd_dq") != std::string::npos) {
        EXPECT_EQ(l.smem, size_t(4 * 32 * (d + 8) * 2 + 2 * 64 * 4));
      }
    }
    // The Q, K, V, dO tile loads (attention_common.cuh's load_tile) are whole sectors.
    for (const auto& l : launches) {
      for (const auto& s : l.sites) {
        if (s.site.rfind("attention_common.cuh:", 0) == 0) {
          EXPECT_EQ(s.mem.excess(), 0u) << l.kernel << " " << s.site << " "
                                        << emu::name(s.access);
        }
      }
    }
  }
}

// The forward on 128-row query blocks (NURI_ATTENTION=nuri128): the same efficiency, and the
// work its tiling says. A warp owns two m16 row tiles, so each K or V fragment it reads with
// ldmatrix feeds two products: per active warp and key tile of kn keys, D·kn/32 products,
// 2 · 2 · (1 + kn/4) exp2 (a rescale and the scores, for 2 row tiles × 2 rows a lane), and
// D·kn/128 ldmatrix for K and V (plus, at D 128, D/8 for Q from its tile at each key tile; at
// D 64 Q's D/8 are read once). With kn = 64 that is 2·D products for D/2 K/V reads, where the
// 64-row kernel reads D/2 per D products, so shared-memory reads per product fall by half at
// D 64 and to 5/8 at D 128. Causally, a warp skips the key tiles past its last row, which
// leaves the products of the 64-row kernel (also counted here). On a device with less shared
// memory a SM than two 64-key blocks need (NURI_EMU_SMEM_PER_SM: an RTX 3090/4090's 102400 at
// D 128; 65536 for D 64), the key tiles are 32 (attn_fwd_q128_key_rows): twice the tiles, each
// half the work, and Q read from its tile at D 128 twice as often.
TEST(KernelCounters, ForwardOn128RowBlocksReadsEachFragmentForTwoProducts) {
  const std::string name = backends().front();
  if (name != "cuda-emu") GTEST_SKIP() << "counters exist on the emulated backend only";
  auto [be, why] = make_backend_with(name, "NURI_ATTENTION", "nuri128");
  ASSERT_TRUE(be) << why;
  auto be64 = make_backend(name);
  struct Case {
    int64_t d;
    bool causal;
    const char* smem_per_sm;  // of the emulated device ("" for its 228 KiB)
    int64_t kn;               // the key tile attn_fwd_q128_key_rows gives for it
  };
  for (const Case& c : {Case{64, true, "", 64}, Case{128, false, "", 64},
                        Case{128, true, "102400", 32}, Case{64, false, "65536", 32}}) {
    const int64_t d = c.d, kn = c.kn;
    const bool causal = c.causal;
    SCOPED_TRACE("D " + std::to_string(d) + (causal ? " causal" : " full") + " key tiles " +
                 std::to_string(kn));
    ScopedEnv smem("NURI_EMU_SMEM_PER_SM", c.smem_per_sm);
    ASSERT_EQ(kernels::attn_fwd_q128_key_rows(
                  int(d), *c.smem_per_sm ? std::stoul(c.smem_per_sm) : 228 * 1024),
              kn);
    const int64_t b = 1, t = 256, h = 2, hkv = 1;
    const auto launches = forward_launches(*be, b, t, h, hkv, d, causal);
    const emu::Counters fwd = expect_efficient(launches, "attention_fwd_q128_kernel",
                                               {Access::cp_async_global, Access::st_global});
    // Active (warp, key tile) pairs: warp w of query block qb owns rows 128·qb + 32·w ..+31 and
    // walks key tiles j of kn up to the block's last row (causal) or the end; causally it skips
    // the tiles that start past its last row.
    int64_t warp_tiles = 0;
    for (int64_t qb = 0; qb < t / 128; ++qb) {
      const int64_t n_tiles = causal ? (qb + 1) * 128 / kn : t / kn;
      for (int64_t w = 0; w < 4; ++w) {
        for (int64_t j = 0; j < n_tiles; ++j) {
          warp_tiles += !causal || kn * j <= 128 * qb + 32 * w + 31;
        }
      }
    }
    warp_tiles *= b * h;
    const int64_t warps = b * h * (t / 128) * 4;
    EXPECT_EQ(fwd[Instr::mma], uint64_t(warp_tiles * d * kn / 32));
    EXPECT_EQ(fwd[Instr::sfu], uint64_t(warp_tiles * 4 * (1 + kn / 4)));
    const int64_t q_reads = d == 64 ? warps * 2 * d / 16 : warp_tiles * d / 8;
    EXPECT_EQ(fwd[Instr::ldmatrix], uint64_t(warp_tiles * d * kn / 128 + q_reads));
    EXPECT_EQ(fwd[Instr::atomic], 0u);
    if (kn != 64) continue;
    // The 64-row kernel on the same inputs: the same products, twice the K/V fragment reads.
    const emu::Counters fwd64 =
        emu::sum_counters(forward_launches(*be64, b, t, h, hkv, d, causal), "attention_fwd_kernel");
    EXPECT_EQ(fwd64[Instr::mma], fwd[Instr::mma]);
    EXPECT_EQ(fwd64[Instr::ldmatrix], uint64_t(b * h * (t / 64) * 4 * d / 16 + warp_tiles * d));
  }
}

// The 128-row forward's key tile on the GPUs nuri targets (their shared memory a SM): 64-key
// tiles where two blocks fit, 32 on an RTX 3090/4090 at D 128.
TEST(KernelCounters, Q128KeyTileFollowsSharedMemoryPerSm) {
  struct Gpu {
    const char* name;
    size_t smem_per_sm;
    int d64, d128;
  };
  for (const Gpu& g : {Gpu{"A100", 164 * 1024, 64, 64}, Gpu{"RTX 3090/4090", 100 * 1024, 64, 32},
                       Gpu{"H100", 228 * 1024, 64, 64}}) {
    EXPECT_EQ(kernels::attn_fwd_q128_key_rows(64, g.smem_per_sm), g.d64) << g.name;
    EXPECT_EQ(kernels::attn_fwd_q128_key_rows(128, g.smem_per_sm), g.d128) << g.name;
  }
  // Two blocks with the driver's 1 KiB each: 2 · (69632 + 1024) bytes at D 128 (rows padded).
  EXPECT_EQ(kernels::attn_fwd_q128_key_rows(128, 141312), 64);
  EXPECT_EQ(kernels::attn_fwd_q128_key_rows(128, 141311), 32);
}

// The 64-row forward swizzles its tiles where its blocks per SM would be decided by shared
// memory (attn_fwd_swizzled): at D 128 on an RTX 3090/4090 (100 KiB a SM) padded tiles take
// 34816 B, 2 blocks, and swizzled ones 32768 B, 3 blocks, as many as its registers allow.
// Elsewhere the registers decide and the tiles stay padded.
TEST(KernelCounters, SixtyFourRowForwardSwizzlesWhereSharedMemoryDecidesItsBlocks) {
  struct Gpu {
    const char* name;
    size_t smem_per_sm;
    bool d64, d128;
  };
  for (const Gpu& g : {Gpu{"A100", 164 * 1024, false, false},
                       Gpu{"RTX 3090/4090", 100 * 1024, false, true},
                       Gpu{"H100", 228 * 1024, false, false}}) {
    EXPECT_EQ(kernels::attn_fwd_swizzled(64, g.smem_per_sm), g.d64) << g.name;
    EXPECT_EQ(kernels::attn_fwd_swizzled(128, g.smem_per_sm), g.d128) << g.name;
  }
  // D 128, with the driver's 1 KiB a block: 3 swizzled blocks from 3 · 33792 bytes, 3 padded
  // ones from 3 · 35840 (then the registers decide); 2 swizzled against 1 padded from 2 · 33792.
  EXPECT_FALSE(kernels::attn_fwd_swizzled(128, 101375));
  EXPECT_TRUE(kernels::attn_fwd_swizzled(128, 101376));
  EXPECT_TRUE(kernels::attn_fwd_swizzled(128, 107519));
  EXPECT_FALSE(kernels::attn_fwd_swizzled(128, 107520));
  EXPECT_TRUE(kernels::attn_fwd_swizzled(128, 67584));
  // D 64 on no GPU nuri targets: 4 swizzled blocks (17408 B each) against 3 padded (19456).
  EXPECT_TRUE(kernels::attn_fwd_swizzled(64, 69632));
  // The padded baselines of AttentionSwizzledTiles.SixtyFourRowForwardIsBitForBitThePaddedTiles.
  EXPECT_FALSE(kernels::attn_fwd_swizzled(128, 98304));
  EXPECT_FALSE(kernels::attn_fwd_swizzled(64, 65536));

  // Under the emulator, on a device with each shared memory: the tile bytes the launch asks
  // for, no excess wavefronts (the swizzled tiles are conflict-free too) or sectors, and the
  // tiling's products.
  const std::string name = backends().front();
  if (name != "cuda-emu") return;  // the counters exist on the emulated backend only
  auto be = make_backend(name);
  struct Case {
    const char* smem_per_sm;  // of the emulated device ("" for its 228 KiB)
    size_t smem;              // the launch's
  };
  for (const Case& c : {Case{"", 34816}, Case{"102400", 32768}}) {
    SCOPED_TRACE(std::string("shared memory a SM ") + (*c.smem_per_sm ? c.smem_per_sm : "228 KiB"));
    ScopedEnv smem("NURI_EMU_SMEM_PER_SM", c.smem_per_sm);
    const int64_t b = 1, h = 2, d = 128;
    const auto launches = forward_launches(*be, b, 128, h, 1, d, /*causal=*/true);
    const emu::Counters fwd = expect_efficient(launches, "attention_fwd_kernel",
                                               {Access::cp_async_global, Access::st_global});
    for (const auto& l : launches) {
      if (l.kernel.find("attention_fwd_kernel") != std::string::npos) {
        EXPECT_EQ(l.smem, c.smem);
      }
    }
    // Causally, query tile m of 64 rows visits m + 1 key tiles: 3 (warp, tile) pairs a warp.
    EXPECT_EQ(fwd[Instr::mma], uint64_t(b * h * 3 * 4 * d));
    EXPECT_EQ(fwd[Instr::sfu], uint64_t(b * h * 3 * 4 * 34));
    // ldmatrix: Q's D/16 fragments once a warp, then D/4 of K and D/4 of V per (warp, tile).
    EXPECT_EQ(fwd[Instr::ldmatrix], uint64_t(b * h * 2 * 4 * d / 16 + b * h * 3 * 4 * d / 2));
  }
}

// NURI_TILE_SMEM_PER_SM: the launchers choose tiles as for a GPU with that shared memory a SM,
// on a device with more (here the emulated 228 KiB, on a GPU an A100 or H100): the forward then
// asks for the swizzled tiles' 32768 B at D 128. A value over the device's, or not a number, is
// an error naming the variable.
TEST(KernelCounters, TileSharedMemoryChoosesTheTilesOfAGpuWithLess) {
  const std::string name = backends().front();
  if (name != "cuda-emu") GTEST_SKIP() << "the launch records exist on the emulated backend only";
  auto be = make_backend(name);
  {
    ScopedEnv tiles("NURI_TILE_SMEM_PER_SM", "102400");
    for (const auto& l : forward_launches(*be, 1, 64, 1, 1, 128, /*causal=*/false)) {
      if (l.kernel.find("attention_fwd_kernel") != std::string::npos) {
        EXPECT_EQ(l.smem, 32768u);
      }
    }
  }
  for (const auto& [emu_smem, tile_smem] :
       {std::pair<const char*, const char*>{"", "100k"}, {"102400", "167936"}, {"", "1024"}}) {
    SCOPED_TRACE(std::string("NURI_TILE_SMEM_PER_SM=") + tile_smem);
    ScopedEnv device("NURI_EMU_SMEM_PER_SM", emu_smem);
    ScopedEnv tiles("NURI_TILE_SMEM_PER_SM", tile_smem);
    try {
      forward_launches(*be, 1, 64, 1, 1, 128, false);
      ADD_FAILURE() << "no error";
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("NURI_TILE_SMEM_PER_SM='") + tile_smem),
                std::string::npos)
          << e.what();
    }
  }
}

// The sm_90a kernels (NURI_ATTENTION=sm90): their tiles arrive by TMA and their products are
// wgmma, neither of which the counters see, so what is checked is what their threads do: no
// mma.sync, ldmatrix, cp.async or atomics, output stores of whole sectors, and the exp2 count
// the tiling says (forward, per consumer warp and key tile of 128: 2 rows x (1 rescale + 32
// scores) per lane; backward, 32 per 64 x 64 tile).
TEST(KernelCounters, Sm90AttentionStoresWholeSectorsAndItsExp2CountIsWhatTheTilingSays) {
  const std::string name = backends().front();
  if (name != "cuda-emu") GTEST_SKIP() << "counters exist on the emulated backend only";
  auto [be, why] = make_backend_with(name, "NURI_ATTENTION", "sm90");
  ASSERT_TRUE(be) << why;
  for (const auto& [d, causal] : {std::pair<int64_t, bool>{64, true}, {128, false}}) {
    SCOPED_TRACE("D " + std::to_string(d) + (causal ? " causal" : " full"));
    const int64_t b = 1, t = 256, h = 2, hkv = 1;
    const Shape qs{b, t, h, d}, ks{b, t, hkv, d};
    Tensor q = on(*be, qs, random_vec(b * t * h * d, 71)),
           k = on(*be, ks, random_vec(b * t * hkv * d, 72)),
           v = on(*be, ks, random_vec(b * t * hkv * d, 73));
    Tensor dout = on(*be, qs, random_vec(b * t * h * d, 74));
    Tensor out = be->empty(qs, DType::bf16), lse = zeros_f32(*be, {b, h, t});
    Tensor dq = zeros(*be, qs), dk = zeros(*be, ks), dv = zeros(*be, ks);
    AttentionOptions opt;
    opt.causal = causal;
    opt.deterministic = false;  // the sm_90a dq has no atomics either way
    Counting counting;
    be->attention(q, k, v, out, lse, opt);
    be->attention_backward(q, k, v, out, lse, dout, dq, dk, dv, opt);
    const auto launches = emu::take_counters();
    ASSERT_EQ(launches.size(), 4u);  // forward; Di, dK/dV, dQ
    const int64_t consumer_warps = 8;
    // The forward stages O in shared memory (conflict-free, checked with every shared access)
    // for one tensor store per consumer and work tile: 2 row halves x D / 8 column blocks of
    // 4-byte stores per consumer warp, no st.global (lse is a plain store).
    const emu::Counters fwd = expect_efficient(launches, "attention_fwd_sm90_kernel", {});
    const int64_t work_tiles = b * h * (t / 128);
    EXPECT_EQ(fwd[Access::st_shared].requests, uint64_t(work_tiles * consumer_warps * 2 * d / 8));
    EXPECT_EQ(fwd[Access::st_global].requests, 0u);
    // Query tile m of 128 rows visits m + 1 key tiles of 128 causally, both otherwise.
    const int64_t tiles = causal ? 1 + 2 : 2 * 2;
    EXPECT_EQ(fwd[Instr::sfu], uint64_t(b * h * tiles * consumer_warps * 66));
    const emu::Counters dkdv =
        expect_efficient(launches, "attn_bwd_dkdv_sm90_kernel", {Access::st_global});
    const emu::Counters dqc =
        expect_efficient(launches, "attn_bwd_dq_sm90_kernel", {Access::st_global});
    for (const emu::Counters* k : {&fwd, &dkdv, &dqc}) {
      EXPECT_EQ((*k)[Instr::mma], 0u);
      EXPECT_EQ((*k)[Instr::ldmatrix], 0u);
      EXPECT_EQ((*k)[Instr::cp_async], 0u);
      EXPECT_EQ((*k)[Instr::atomic], 0u);
    }
    EXPECT_GT(dkdv[Access::st_global].requests, 0u);
    EXPECT_GT(dqc[Access::st_global].requests, 0u);
    if (!causal) {  // no masked entries: one exp2 per score of a lane, 32 per 64 x 64 tile
      // dK/dV: 2 key blocks x 2 heads x 4 query tiles of 64; dQ: 2 query blocks x 2 heads x
      // 4 key tiles of 64.
      EXPECT_EQ(dkdv[Instr::sfu], uint64_t(2 * h * 4 * consumer_warps * 32));
      EXPECT_EQ(dqc[Instr::sfu], uint64_t(2 * h * 4 * consumer_warps * 32));
    }
  }
}

// The three products of a linear layer, each layout of the tiles (A and B K-contiguous in the
// forward, B N-contiguous in the input gradient, A transposed in the weight gradient), with
// bias, GELU and a residual in the epilogue. Runs with the 64² tiles and, under the tiles128.
// and tiles256. prefixes (NURI_GEMM_TILES), the 128² and 128 × 256 ones.
/// A linear layer's three products (M 128, N 192, K 96) with bias, GELU and a residual in the
/// forward's epilogue, the f32 weight gradient accumulated; the launches' counters.
std::vector<emu::LaunchCounters> count_linear_layer(Backend& be) {
  const int64_t m = 128, n = 192, k = 96;
  Tensor x = on(be, {m, k}, random_vec(m * k, 81)), w = on(be, {n, k}, random_vec(n * k, 82)),
         bias = on(be, {n}, random_vec(n, 83)), r = on(be, {m, n}, random_vec(m * n, 84));
  Tensor y = zeros(be, {m, n}), pre = zeros(be, {m, n});
  Tensor dx = zeros(be, {m, k}), dw = zeros_f32(be, {n, k});
  Counting counting;
  be.matmul(x, w, bias, y, Activation::gelu, pre, r);
  be.matmul_backward_input(y, w, dx, false, Tensor());
  be.matmul_backward_weight(y, x, dw, true);
  return emu::take_counters();
}

/// count_linear_layer's forward with K = 90: rows of 180 bytes, not 16-byte aligned (the path
/// that neither TMA nor the 128 × 256 tiles take); the one launch's counters.
emu::LaunchCounters count_unaligned_forward(Backend& be) {
  const int64_t m = 128, n = 192, k = 90;
  Tensor x = on(be, {m, k}, random_vec(m * k, 85)), w = on(be, {n, k}, random_vec(n * k, 86));
  Tensor y = zeros(be, {m, n});
  Counting counting;
  be.matmul(x, w, Tensor(), y, Activation::none, Tensor(), Tensor());
  auto launches = emu::take_counters();
  EXPECT_EQ(launches.size(), 1u);
  return launches.empty() ? emu::LaunchCounters{} : launches[0];
}

TEST(KernelCounters, MatmulTilesAreConflictFreeAndEpilogueStoresWholeSectors) {
  const std::string name = backends().front();
  if (name != "cuda-emu") GTEST_SKIP() << "counters exist on the emulated backend only";
  auto be = make_backend(name);
  const int64_t m = 128, n = 192, k = 96;  // count_linear_layer's
  const auto launches = count_linear_layer(*be);
  ASSERT_EQ(launches.size(), 3u);
  const emu::Counters gemm =
      expect_efficient(launches, "gemm_tc_kernel",
                       {Access::cp_async_global, Access::ld_global, Access::st_global});
  // Whole tiles: the products are M·N·K / (16·8·16) mma each, plus the zero-padded remainder
  // of a tile that overhangs (96 is 1.5 tiles of 64; 192 is 1.5 of 128 and 0.75 of 256).
  EXPECT_GE(gemm[Instr::mma], uint64_t(3 * m * n * k / (16 * 8 * 16)));
  EXPECT_GT(gemm[Access::st_global].requests, 0u);
  EXPECT_GT(gemm[Access::ld_global].requests, 0u);  // bias, residual, the f32 accumulation
}

/// What one tile shape C issues for count_linear_layer's three products: every warp runs every
/// k16 step of its block's K tiles (zero-filled past the edges), each step kMi · kNj mma and
/// kMi + kNj / 2 ldmatrix.x4 (A's and B's fragments).
template <class C>
std::pair<uint64_t, uint64_t> linear_layer_mma_and_ldmatrix() {
  // (rows, cols, contraction) of the forward y [128, 192], dx [128, 96] and dW [192, 96].
  const int64_t products[3][3] = {{128, 192, 96}, {128, 96, 192}, {192, 96, 128}};
  auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  uint64_t steps = 0;  // warp · k16 steps over the three launches
  for (const auto& [rows, cols, contraction] : products) {
    const int64_t blocks = ceil_div(rows, C::kBlockM) * ceil_div(cols, C::kBlockN);
    steps += uint64_t(blocks * (C::kThreads / 32) * ceil_div(contraction, C::kBlockK) *
                      (C::kBlockK / 16));
  }
  return {steps * C::kMi * C::kNj, steps * (C::kMi + C::kNj / 2)};
}

// The three tile shapes of the mma.sync GEMM (kernels/matmul.h), forced by NURI_GEMM_TILES, on
// count_linear_layer's products: the launch asks for the shape's shared memory, and the mma and
// ldmatrix counts are what its warp tiles say; with 256 forced, a product whose rows are not
// 16-byte aligned runs on the 128² tiles. The 128 × 256 tiles' 64 × 64 warp tiles issue
// one ldmatrix.x4 for every 4 mma (the 128² tiles one for every 8/3, the 64² ones one for
// every 2): shared memory serves each product in 2/3 of the 128² tiles' bytes.
TEST(KernelCounters, WideGemmTilesReadTwoThirdsTheSharedMemoryPerMma) {
  const std::string name = backends().front();
  if (name != "cuda-emu") GTEST_SKIP() << "counters exist on the emulated backend only";
  struct Tiles {
    const char* tiles;
    size_t smem;
    std::pair<uint64_t, uint64_t> counts;
  };
  using namespace nuri::kernels::mm;
  for (const Tiles& s :
       {Tiles{"256", TcWide::kSmemBytes, linear_layer_mma_and_ldmatrix<TcWide>()},
        Tiles{"128", TcLarge::kSmemBytes, linear_layer_mma_and_ldmatrix<TcLarge>()},
        Tiles{"64", TcSmall::kSmemBytes, linear_layer_mma_and_ldmatrix<TcSmall>()}}) {
    SCOPED_TRACE(std::string("NURI_GEMM_TILES=") + s.tiles);
    auto [be, why] = make_backend_with(name, "NURI_GEMM_TILES", s.tiles);
    ASSERT_TRUE(be) << why;
    const auto launches = count_linear_layer(*be);
    ASSERT_EQ(launches.size(), 3u);
    for (const auto& l : launches) EXPECT_EQ(l.smem, s.smem) << l.kernel;
    const emu::Counters gemm =
        expect_efficient(launches, "gemm_tc_kernel", {Access::cp_async_global});
    EXPECT_EQ(gemm[Instr::mma], s.counts.first);
    EXPECT_EQ(gemm[Instr::ldmatrix], s.counts.second);
  }
  {  // Rows that are not 16-byte aligned run on the 128² tiles.
    auto [be, why] = make_backend_with(name, "NURI_GEMM_TILES", "256");
    ASSERT_TRUE(be) << why;
    const emu::LaunchCounters l = count_unaligned_forward(*be);
    EXPECT_EQ(l.smem, TcLarge::kSmemBytes) << l.kernel;
  }
  // The ratios the comment above states, from the shapes' constants.
  static_assert(4 * (TcWide::kMi + TcWide::kNj / 2) == TcWide::kMi * TcWide::kNj);
  static_assert(8 * (TcLarge::kMi + TcLarge::kNj / 2) == 3 * TcLarge::kMi * TcLarge::kNj);
}

// matmul_tiles: the largest tile shape whose grid gives every SM a block, else the smallest;
// a forced shape wins; an unknown one is an error naming the three.
TEST(KernelCounters, GemmTilesAreTheLargestThatFillTheDevice) {
  EXPECT_EQ(kernels::matmul_tiles(8192, 768, 108), 256);  // 64 × 3 = 192 blocks of 128 × 256
  EXPECT_EQ(kernels::matmul_tiles(4096, 768, 108), 128);  // 32 × 3 = 96; 32 × 6 = 192 of 128²
  EXPECT_EQ(kernels::matmul_tiles(4096, 768, 96), 256);   // 96 blocks fill 96 SMs
  EXPECT_EQ(kernels::matmul_tiles(1024, 768, 108), 64);   // 8 × 6 = 48 of 128²
  EXPECT_EQ(kernels::matmul_tiles(1024, 768, 48), 128);
  EXPECT_EQ(kernels::matmul_tiles(8192, 768, 108, 64), 64);
  EXPECT_EQ(kernels::matmul_tiles(1, 1, 108, 256), 256);
  try {
    kernels::matmul_tiles(8192, 768, 108, 32);
    ADD_FAILURE() << "tile 32 accepted";
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const char* s : {"32", "256", "128", "64"}) {
      EXPECT_NE(what.find(s), std::string::npos) << what;
    }
  }
}

// The sm_90a GEMM (NURI_GEMM=sm90, kernels/matmul_sm90.cuh) on the same three products: each is
// one launch of gemm_sm90_kernel, whose tiles arrive by TMA and whose products are wgmma (which
// the counters do not see), so no thread issues mma.sync, ldmatrix or cp.async, and the
// epilogue (matmul.cuh's, from wgmma's accumulators) stores whole sectors. A product whose rows
// are not 16-byte aligned (K = 90: 180-byte rows) is not TMA's: it runs on the mma.sync kernel.
// The matmul suites run on this path as sm90gemm.* (tests/CMakeLists.txt); this test is what
// shows they exercised the sm_90a kernel.
TEST(KernelCounters, Sm90MatmulRunsItsLayoutsOnTmaAndWgmmaAndStoresWholeSectors) {
  const std::string name = backends().front();
  if (name != "cuda-emu") GTEST_SKIP() << "counters exist on the emulated backend only";
  auto [be, why] = make_backend_with(name, "NURI_GEMM", "sm90");
  ASSERT_TRUE(be) << why;
  const int64_t m = 128, n = 192, k = 96;  // count_linear_layer's
  {
    const auto launches = count_linear_layer(*be);
    ASSERT_EQ(launches.size(), 3u);
    const emu::Counters gemm =
        expect_efficient(launches, "gemm_sm90_kernel", {Access::ld_global, Access::st_global});
    EXPECT_EQ(emu::sum_counters(launches, "gemm_tc_kernel")[Access::st_global].requests, 0u);
    EXPECT_EQ(gemm[Instr::mma], 0u);
    EXPECT_EQ(gemm[Instr::ldmatrix], 0u);
    EXPECT_EQ(gemm[Instr::cp_async], 0u);
    // Every output element is stored once a product, 4 adjacent ones a lane, 32 lanes a request.
    EXPECT_EQ(gemm[Access::st_global].requests,
              uint64_t((m * n + m * n + m * k + n * k) / (4 * 32)));  // y and pre, dx, dw
  }
  const emu::LaunchCounters l = count_unaligned_forward(*be);
  EXPECT_NE(l.kernel.find("gemm_tc_kernel"), std::string::npos) << l.kernel;
}

// A product whose tensor maps the driver refuses runs on the mma.sync kernel too: with the
// emulator holding swizzled maps to 128 bytes (the Programming Guide's rule,
// emu::set_swizzled_map_alignment), the three products of the test above, each of which has x or
// w, whose rows (K 96) are 192 bytes, as an operand. (A refusal used to stop the product.)
TEST(KernelCounters, Sm90MatmulRunsProductsWithRefusedMapsOnMmaSync) {
  const std::string name = backends().front();
  if (name != "cuda-emu") GTEST_SKIP() << "the stricter alignment is modelled by the emulator";
  auto [be, why] = make_backend_with(name, "NURI_GEMM", "sm90");
  ASSERT_TRUE(be) << why;
  struct Restore {
    unsigned align = emu::set_swizzled_map_alignment(128);
    ~Restore() { emu::set_swizzled_map_alignment(align); }
  } restore;
  const auto launches = count_linear_layer(*be);
  ASSERT_EQ(launches.size(), 3u);
  for (const auto& refused : launches) {
    EXPECT_NE(refused.kernel.find("gemm_tc_kernel"), std::string::npos) << refused.kernel;
  }
}

// The sm_90a GEMM's grid is persistent: one block an SM, each walking the tiles w, w + grid, ...
// (kernels/matmul_sm90.cuh). On an emulated device of 2 SMs each product is 2 blocks over its
// 128 × 256 tiles: the forward's 136 × 264 are 4 tiles of 4 K steps, so a block's second tile
// runs on the pipeline's stages in their second phase; dW 264 × 200 is 3 of 3 steps, two for
// block 0 (dx 136 × 200, 2 tiles, is one a block). On 1 SM one block walks every tile: dx's
// second tile starts mid-phase (5 steps a tile). The results are the 132-SM device's, where
// each block has one tile, bit for bit, and every run stores each output element once. With
// NURI_GEMM_SM90_GRID=tiles (for measuring the difference on a GPU) the grid is a block a tile
// on 2 SMs too, with the same results.
TEST(KernelCounters, Sm90MatmulBlocksWalkSeveralTilesWithTheSameResults) {
  const std::string name = backends().front();
  if (name != "cuda-emu") GTEST_SKIP() << "NURI_EMU_SMS sets the SM count of the emulator only";
  auto [be, why] = make_backend_with(name, "NURI_GEMM", "sm90");
  ASSERT_TRUE(be) << why;
  std::unique_ptr<Backend> per_tile;
  {
    ScopedEnv grid("NURI_GEMM_SM90_GRID", "tiles");
    auto [b, why_not] = make_backend_with(name, "NURI_GEMM", "sm90");
    ASSERT_TRUE(b) << why_not;
    per_tile = std::move(b);
  }
  const int64_t m = 136, n = 264, k = 200;
  const Tensor x = on(*be, {m, k}, random_vec(m * k, 91)),
               w = on(*be, {n, k}, random_vec(n * k, 92)), bias = on(*be, {n}, random_vec(n, 93));
  struct Run {
    std::vector<emu::LaunchCounters> launches;
    std::vector<Vec> out;  // y, pre, dx, dW
  };
  auto run = [&](Backend& on_be, const char* sms) {
    ScopedEnv env("NURI_EMU_SMS", sms);
    Tensor y = zeros(on_be, {m, n}), pre = zeros(on_be, {m, n});
    Tensor dx = zeros(on_be, {m, k}), dw = zeros_f32(on_be, {n, k});
    Run r;
    {
      Counting counting;
      on_be.matmul(x, w, bias, y, Activation::gelu, pre, Tensor());
      on_be.matmul_backward_input(y, w, dx, false, Tensor());
      on_be.matmul_backward_weight(y, x, dw, false);
      r.launches = emu::take_counters();
    }
    r.out = {values(on_be, y), values(on_be, pre), values(on_be, dx), values(on_be, dw)};
    return r;
  };
  const Run many = run(*be, "132");
  const unsigned tiles[3] = {2 * 2, 2 * 1, 3 * 1};  // ⌈rows/128⌉ · ⌈cols/256⌉ of y, dx, dW
  const char* names[4] = {"y", "pre", "dx", "dW"};
  ASSERT_EQ(many.launches.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(many.launches[i].grid.x, tiles[i]);
  for (size_t t = 0; t < many.out.size(); ++t) {
    EXPECT_TRUE(std::any_of(many.out[t].begin(), many.out[t].end(), [](double v) { return v != 0; }))
        << names[t];
  }
  struct Few {
    bool persistent;
    const char* sms;
  };
  for (const Few f : {Few{true, "2"}, Few{true, "1"}, Few{false, "2"}}) {
    SCOPED_TRACE(std::string(f.persistent ? "persistent" : "NURI_GEMM_SM90_GRID=tiles") + " on " +
                 f.sms + " SMs");
    const Run few = run(f.persistent ? *be : *per_tile, f.sms);
    ASSERT_EQ(few.launches.size(), 3u);
    for (int i = 0; i < 3; ++i) {
      SCOPED_TRACE(many.launches[i].kernel);
      EXPECT_NE(few.launches[i].kernel.find("gemm_sm90_kernel"), std::string::npos);
      EXPECT_EQ(few.launches[i].grid.x, f.persistent ? unsigned(std::stoi(f.sms)) : tiles[i]);
      EXPECT_EQ(few.launches[i].total[Access::st_global].requests,
                many.launches[i].total[Access::st_global].requests);
    }
    for (size_t t = 0; t < many.out.size(); ++t) {
      ASSERT_EQ(few.out[t].size(), many.out[t].size());
      size_t differ = 0, first = 0;
      for (size_t i = 0; i < many.out[t].size(); ++i) {
        if (few.out[t][i] != many.out[t][i] && differ++ == 0) first = i;
      }
      EXPECT_EQ(differ, 0u) << names[t] << ": " << differ << " elements differ, the first at "
                            << first;
    }
  }
}

// NURI_GEMM_SM90_GRID takes persistent or tiles; anything else is refused, naming both.
TEST(KernelCounters, Sm90GemmGridSettingIsCheckedAndNamesItsChoices) {
  const std::string name = backends().front();
  if (name != "cuda-emu") GTEST_SKIP() << "the emulated backend's constructor is what is tested";
  ScopedEnv grid("NURI_GEMM_SM90_GRID", "blocks");
  const auto [be, why] = make_backend_with(name, "NURI_GEMM", "sm90");
  EXPECT_FALSE(be);
  EXPECT_NE(why.find("NURI_GEMM_SM90_GRID=blocks is not a grid of the sm_90a GEMM; use persistent"),
            std::string::npos)
      << why;
}

// ---- attention_decode: split-K when the rows leave SMs idle ------------------------------------

/// The counted launches of one attention_decode of `rows` new query rows against `keys` keys
/// (causal; random bf16 q [b, rows, h, 64], k, v [b, keys, hkv, 64]).
std::vector<emu::LaunchCounters> decode_launches(Backend& be, int64_t b, int64_t rows,
                                                 int64_t keys, int64_t h, int64_t hkv) {
  const int64_t d = 64;
  Tensor q = on(be, {b, rows, h, d}, random_vec(b * rows * h * d, 74)),
         k = on(be, {b, keys, hkv, d}, random_vec(b * keys * hkv * d, 75)),
         v = on(be, {b, keys, hkv, d}, random_vec(b * keys * hkv * d, 76));
  Tensor out = be.empty({b, rows, h, d}, DType::bf16);
  Counting counting;
  be.attention_decode(q, k, v, out, AttentionOptions{});
  return emu::take_counters();
}

/// The grid of the decoding kernel's launch, and whether the merge kernel ran after it.
std::pair<dim3, bool> decode_grid(const std::vector<emu::LaunchCounters>& launches) {
  dim3 grid(0, 0, 0);
  bool merged = false;
  for (const auto& l : launches) {
    if (l.kernel.find("attention_decode_kernel") != std::string::npos) grid = l.grid;
    if (l.kernel.find("attention_decode_merge_kernel") != std::string::npos) {
      merged = true;
      EXPECT_EQ(l.grid.z, 1u);
    }
  }
  return {grid, merged};
}

// One row of 12 heads (GPT-2 small sampling) is 12 blocks: on the emulated 132 SMs its 1024 keys
// go to 16 blocks a head (64 keys each; about four blocks an SM would take 44), the merge kernel
// weighs them, and every key and value row is read once in whole sectors (the requests: 2 a key
// row of 64 bf16 columns, for K and V, plus each warp's query). Then, on fewer emulated SMs (the
// launches cost less): rows that give every SM two blocks, keys too few for two splits, an SM
// count that asks for fewer splits than the keys allow; NURI_DECODE_SPLITS sets the count.
TEST(KernelCounters, DecodeSplitsTheKeysWhenItsRowsLeaveSmsIdle) {
  const std::string name = backends().front();
  if (name != "cuda-emu") GTEST_SKIP() << "the launch records exist on the emulated backend only";
  auto be = make_backend(name);
  {
    ScopedEnv sms("NURI_EMU_SMS", "132");
    const auto launches = decode_launches(*be, 1, 1, 1024, 12, 12);
    const auto [grid, merged] = decode_grid(launches);
    EXPECT_EQ(grid.x, 12u);
    EXPECT_EQ(grid.z, 16u);
    EXPECT_TRUE(merged);
    const emu::Counters c = expect_efficient(launches, "attention_decode_kernel",
                                             {Access::ld_global, Access::st_global});
    EXPECT_EQ(c[Access::ld_global].requests, 2u * 2 * 1024 * 12 + 2 * 4 * 12 * 16);
    expect_efficient(launches, "attention_decode_merge_kernel",
                     {Access::ld_global, Access::st_global});
  }
  auto splits = [&](int64_t b, int64_t rows, int64_t keys, int64_t h) {
    const auto [grid, merged] = decode_grid(decode_launches(*be, b, rows, keys, h, 1));
    EXPECT_EQ(merged, grid.z > 1);
    return grid.z;
  };
  ScopedEnv sms("NURI_EMU_SMS", "2");
  EXPECT_EQ(splits(1, 2, 512, 2), 1u) << "4 blocks give each of 2 SMs two";
  EXPECT_EQ(splits(1, 1, 100, 2), 1u) << "too few keys for two splits of 64";
  EXPECT_EQ(splits(1, 1, 512, 2), 4u) << "four blocks on each of 2 SMs (the keys allow 8)";
  EXPECT_EQ(splits(1, 1, 256, 1), 4u) << "the keys allow 4 (four blocks on 2 SMs would be 8)";
  ScopedEnv forced("NURI_DECODE_SPLITS", "5");
  EXPECT_EQ(splits(1, 2, 512, 2), 5u);
}

}  // namespace
}  // namespace nuri::test
