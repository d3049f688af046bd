// The emulator's performance counters (emu.h, kernels/emu/counters.cpp) against planted kernels
// whose answers are known from the hardware's rules: 32 lanes storing down one column of a
// 32-float row-major tile hit one bank 32 times (32 wavefronts where 1 would do), padding or an
// XOR swizzle removes every conflict; ldmatrix from an unpadded 128-byte-row tile is an 8-way
// conflict per matrix; a warp loading 4-byte words 128 bytes apart touches 32 sectors where
// a contiguous one touches the minimum 4; instruction counts are per warp.
#include <cuda_fp16.h>

#include <string>

#include "emu/emu_util.h"
#include "ptx.cuh"

namespace nuri::test {
namespace {

using emu::Access;
using emu::Instr;
using kernels::ld_global;
using kernels::ld_shared;
using kernels::st_global;
using kernels::st_shared;

/// Turns counting on for one test and hands back what its launches counted.
class Counting {
 public:
  Counting() {
    emu::set_counters(true);
    emu::take_counters();  // nothing from before
  }
  ~Counting() { emu::set_counters(false); }
  std::vector<emu::LaunchCounters> take() { return emu::take_counters(); }
};

// ---- shared memory: bank conflicts --------------------------------------------------------------

enum class Layout { column, padded, swizzled, row };
struct SharedParams {
  float* out;
  Layout layout;
};
// One warp stores a 32 × 32 float tile column by column (lane l writes row l), then reads it
// back row by row. Row-major with 32 floats a row, a column is one bank: 32-way conflicts.
__global__ void shared_column_store(SharedParams p) {
  float* s = kernels::dynamic_smem<float>();
  const int l = int(threadIdx.x);
  auto at = [&](int row, int col) {
    switch (p.layout) {
      case Layout::padded: return row * 33 + col;
      case Layout::swizzled: return row * 32 + (col ^ row);
      default: return row * 32 + col;
    }
  };
  for (int c = 0; c < 32; ++c) {
    if (p.layout == Layout::row) {
      st_shared(s + at(c, l), float(c * 32 + l));  // lane l writes column l of row c
    } else {
      st_shared(s + at(l, c), float(l * 32 + c));
    }
  }
  __syncwarp();
  float sum = 0.f;
  for (int r = 0; r < 32; ++r) sum += ld_shared(s + at(r, l));  // row r, lane l's column
  p.out[l] = sum;
}

TEST(EmuCounters, ColumnStoresToAFloatTileConflict32WaysAndPaddingOrSwizzleFixesThem) {
  Counting counting;
  DeviceBuffer<float> out(32);
  for (Layout layout : {Layout::column, Layout::padded, Layout::swizzled, Layout::row}) {
    NURI_LAUNCH(shared_column_store, dim3(1), dim3(32), 33 * 32 * 4, nullptr,
                SharedParams{out.get(), layout});
    const auto v = out.download();
    float want = 0.f;  // column l's sum is the same in every layout
    for (int r = 0; r < 32; ++r) want += float(r * 32 + 0);
    EXPECT_EQ(v[0], want);
  }
  const auto launches = counting.take();
  ASSERT_EQ(launches.size(), 4u);
  const emu::MemCounter& col = launches[0].total[Access::st_shared];
  EXPECT_EQ(col.requests, 32u);
  EXPECT_EQ(col.actual, 32u * 32u);  // every store: 32 words in one bank
  EXPECT_EQ(col.minimum, 32u);
  EXPECT_EQ(col.excess(), 32u * 31u);
  // The reads of the column layout (row r, lanes' columns) are conflict-free.
  EXPECT_EQ(launches[0].total[Access::ld_shared].requests, 32u);
  EXPECT_EQ(launches[0].total[Access::ld_shared].excess(), 0u);
  for (int i = 1; i < 4; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(launches[size_t(i)].total[Access::st_shared].actual, 32u);
    EXPECT_EQ(launches[size_t(i)].total[Access::st_shared].excess(), 0u);
    EXPECT_EQ(launches[size_t(i)].total[Access::ld_shared].excess(), 0u);
  }
  // The report names the conflicting line.
  ASSERT_FALSE(launches[0].sites.empty());
  EXPECT_EQ(launches[0].sites[0].access, Access::st_shared);
  EXPECT_EQ(launches[0].sites[0].mem.excess(), 32u * 31u);
  EXPECT_NE(launches[0].sites[0].site.find("test_emu_counters.cpp:"), std::string::npos);
  EXPECT_NE(emu::format_counters(launches[0]).find("excess at test_emu_counters.cpp:"),
            std::string::npos);
  EXPECT_EQ(emu::format_counters(launches[1]).find("excess at"), std::string::npos);
  // Each launch's record holds its dynamic shared memory, and the report says it.
  EXPECT_EQ(launches[0].smem, size_t(33 * 32 * 4));
  EXPECT_NE(emu::format_counters(launches[0]).find("block 32x1x1 smem 4224 B"), std::string::npos);
}

struct WideParams {
  float* out;
  int stride;  // in elements of the access width
  int mode;    // 0: 4-byte words, 1: 8-byte, 2: 16-byte, 3: every lane reads word 0
};
__global__ void shared_widths(WideParams p) {
  unsigned char* s = kernels::dynamic_smem<unsigned char>();
  const int l = int(threadIdx.x);
  float r = 0.f;
  if (p.mode == 0) {
    float* f = reinterpret_cast<float*>(s);
    st_shared(f + l * p.stride, 1.f);
    __syncwarp();
    r = ld_shared(f + l * p.stride);
  } else if (p.mode == 1) {
    float2* f = reinterpret_cast<float2*>(s);
    st_shared(f + l * p.stride, make_float2(1.f, 2.f));
    __syncwarp();
    r = ld_shared(f + l * p.stride).y;
  } else if (p.mode == 2) {
    float4* f = reinterpret_cast<float4*>(s);
    st_shared(f + l * p.stride, make_float4(1.f, 2.f, 3.f, 4.f));
    __syncwarp();
    r = ld_shared(f + l * p.stride).w;
  } else {
    float* f = reinterpret_cast<float*>(s);
    if (l == 0) st_shared(f, 5.f);
    __syncwarp();
    r = ld_shared(f);  // a broadcast
  }
  p.out[l] = r;
}

TEST(EmuCounters, WiderAccessesGoInPhasesAndABroadcastIsOneWavefront) {
  Counting counting;
  DeviceBuffer<float> out(32);
  struct Case {
    int mode, stride;
    uint64_t wavefronts, minimum;
  };
  const Case cases[] = {
      {0, 1, 1, 1},    // 32 consecutive words
      {0, 2, 2, 1},    // stride 2 words: 2-way
      {1, 1, 2, 2},    // 8-byte lanes, consecutive: two half-warp phases of 128 bytes
      {1, 2, 4, 2},    // 8-byte lanes 16 bytes apart: 2-way in each phase
      {2, 1, 4, 4},    // 16-byte lanes, consecutive: four quarter-warp phases
      {2, 8, 32, 4},   // 16-byte lanes 128 bytes apart: 8-way in each phase
      {3, 0, 1, 1},    // every lane reads one word
  };
  for (const Case& c : cases) {
    NURI_LAUNCH(shared_widths, dim3(1), dim3(32), 32 * 8 * 16, nullptr,
                WideParams{out.get(), c.stride, c.mode});
  }
  const auto launches = counting.take();
  ASSERT_EQ(launches.size(), std::size(cases));
  for (size_t i = 0; i < std::size(cases); ++i) {
    SCOPED_TRACE(i);
    const emu::MemCounter& ld = launches[i].total[Access::ld_shared];
    EXPECT_EQ(ld.requests, 1u);
    EXPECT_EQ(ld.actual, cases[i].wavefronts);
    EXPECT_EQ(ld.minimum, cases[i].minimum);
  }
}

// ---- ldmatrix and cp.async into shared memory ---------------------------------------------------

struct TileParams {
  const uint16_t* g;  // [16][64] bf16 bits
  uint32_t* out;      // [32][4]
  int layout;         // 0: rows of 128 bytes; 1: padded to 144; 2: 16-byte chunks XOR-swizzled
};
/// Element offset of (row, col) of a [16][64] 16-bit tile in each layout.
__device__ int tile_at(int layout, int row, int col) {
  if (layout == 1) return row * 72 + col;
  if (layout == 2) return row * 64 + (((col / 8) ^ (row % 8)) * 8) + col % 8;
  return row * 64 + col;
}
// The tile arrives by cp.async (16 bytes a lane, 8 lanes a row), then one ldmatrix.x4 reads the
// 16 × 16 A fragment at column 16: lanes 0-15 give rows 0-15 at column 16, lanes 16-31 at 24.
__global__ void tile_loads(TileParams p) {
  uint16_t* s = kernels::dynamic_smem<uint16_t>();
  const int l = int(threadIdx.x);
  for (int i = l; i < 16 * 8; i += 32) {
    const int r = i / 8, c = (i % 8) * 8;
    kernels::cp_async<16>(s + tile_at(p.layout, r, c), p.g + r * 64 + c);
  }
  kernels::cp_async_commit();
  kernels::cp_async_wait<0>();
  __syncwarp();
  uint32_t a[4];
  kernels::ldmatrix<4, false>(a, s + tile_at(p.layout, l % 16, 16 + (l / 16) * 8));
  for (int j = 0; j < 4; ++j) p.out[l * 4 + j] = a[j];
}

TEST(EmuCounters, LdmatrixFromUnpaddedRowsConflicts8WaysPaddingAndSwizzleDoNot) {
  Counting counting;
  std::vector<uint16_t> tile(16 * 64);
  for (size_t i = 0; i < tile.size(); ++i) tile[i] = uint16_t(i);
  DeviceBuffer<uint16_t> g(tile);
  DeviceBuffer<uint32_t> out(128);
  std::vector<uint32_t> first;
  for (int layout = 0; layout < 3; ++layout) {
    NURI_LAUNCH(tile_loads, dim3(1), dim3(32), 16 * 72 * 2, nullptr,
                TileParams{g.get(), out.get(), layout});
    const auto v = out.download();
    if (layout == 0) {
      first = v;
      // Lane 0's register 0 is matrix 0's row 0, columns 16, 17.
      EXPECT_EQ(v[0], uint32_t(16) | uint32_t(17) << 16);
    } else {
      EXPECT_EQ(v, first) << "layout " << layout << " changed the fragment";
    }
  }
  const auto launches = counting.take();
  ASSERT_EQ(launches.size(), 3u);
  const emu::MemCounter& plain = launches[0].total[Access::ldmatrix];
  EXPECT_EQ(plain.requests, 1u);
  EXPECT_EQ(plain.actual, 32u);  // 4 matrices, each 8 rows in the same 4 banks
  EXPECT_EQ(plain.minimum, 4u);
  for (int layout = 1; layout < 3; ++layout) {
    SCOPED_TRACE(layout);
    EXPECT_EQ(launches[size_t(layout)].total[Access::ldmatrix].actual, 4u);
    EXPECT_EQ(launches[size_t(layout)].total[Access::ldmatrix].excess(), 0u);
  }
  // The cp.async stores: 8 lanes fill one 128-byte row (or a swizzled one) per phase, so no
  // layout conflicts; 4 requests of 4 phases each.
  for (const auto& l : launches) {
    EXPECT_EQ(l.total[Access::cp_async_shared].requests, 4u);
    EXPECT_EQ(l.total[Access::cp_async_shared].actual, 16u);
    EXPECT_EQ(l.total[Access::cp_async_shared].excess(), 0u);
    // The global side: each request reads 4 whole rows of 128 bytes, 16 sectors.
    EXPECT_EQ(l.total[Access::cp_async_global].actual, 4u * 16u);
    EXPECT_EQ(l.total[Access::cp_async_global].excess(), 0u);
    EXPECT_EQ(l.total[Instr::cp_async], 4u);
    EXPECT_EQ(l.total[Instr::cp_async_commit], 1u);
    EXPECT_EQ(l.total[Instr::cp_async_wait], 1u);
    EXPECT_EQ(l.total[Instr::ldmatrix], 1u);
  }
}

// ---- global memory: sectors ---------------------------------------------------------------------

struct GlobalParams {
  const float* in;
  float* out;
  int stride, offset;
};
__global__ void global_strided(GlobalParams p) {
  const int l = int(threadIdx.x);
  const float v = ld_global(p.in + p.offset + l * p.stride);
  st_global(p.out + l, v);  // contiguous: 4 sectors
}

TEST(EmuCounters, AStridedLoadTakes32SectorsAContiguousOneTheMinimum) {
  Counting counting;
  std::vector<float> in(32 * 32 + 8);
  for (size_t i = 0; i < in.size(); ++i) in[i] = float(i);
  DeviceBuffer<float> g(in);
  DeviceBuffer<float> out(32);
  struct Case {
    int stride, offset;
    uint64_t sectors;
  };
  const Case cases[] = {{1, 0, 4}, {1, 1, 5}, {2, 0, 8}, {32, 0, 32}, {0, 3, 1}};
  for (const Case& c : cases) {
    NURI_LAUNCH(global_strided, dim3(1), dim3(32), 0, nullptr,
                GlobalParams{g.get(), out.get(), c.stride, c.offset});
    EXPECT_EQ(out.download()[31], float(c.offset + 31 * c.stride));
  }
  const auto launches = counting.take();
  ASSERT_EQ(launches.size(), std::size(cases));
  for (size_t i = 0; i < std::size(cases); ++i) {
    SCOPED_TRACE(i);
    const emu::MemCounter& ld = launches[i].total[Access::ld_global];
    EXPECT_EQ(ld.requests, 1u);
    EXPECT_EQ(ld.actual, cases[i].sectors);
    EXPECT_EQ(ld.minimum, cases[i].stride == 0 ? 1u : 4u);  // distinct bytes over 32
    EXPECT_EQ(launches[i].total[Access::st_global].actual, 4u);
    EXPECT_EQ(launches[i].total[Access::st_global].excess(), 0u);
  }
}

// ---- instruction counts -------------------------------------------------------------------------

struct InstrParams {
  float* out;
  float* acc;
};
// Two warps, each: 3 shuffles (one 64-bit, which is two), 1 barrier, 1 mma, 4 ex2, and an atomic
// executed by half the lanes (one warp instruction all the same), twice in a loop.
__global__ void instruction_mix(InstrParams p) {
  const int l = int(threadIdx.x) % 32;
  float v = float(l);
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  const double d = __shfl_down_sync(0xffffffffu, double(v), 2);
  __syncthreads();
  const uint32_t a[4] = {0x3f803f80u, 0, 0, 0}, b[2] = {0x3f803f80u, 0};
  float c[4] = {0, 0, 0, 0};
  kernels::mma_bf16_m16n8k16(c, a, b, c);
  for (int i = 0; i < 4; ++i) v += kernels::ex2_approx(float(i));
  for (int i = 0; i < 2; ++i) {
    if (l < 16) atomicAdd(p.acc, 1.f);
  }
  p.out[blockIdx.x * blockDim.x + threadIdx.x] = v + float(d) + c[0];
}

TEST(EmuCounters, InstructionsAreCountedOncePerWarp) {
  Counting counting;
  DeviceBuffer<float> out(3 * 64), acc(std::vector<float>{0.f});
  NURI_LAUNCH(instruction_mix, dim3(3), dim3(64), 0, nullptr, InstrParams{out.get(), acc.get()});
  EXPECT_EQ(acc.download()[0], 3.f * 2 * 2 * 16);
  const auto launches = counting.take();
  ASSERT_EQ(launches.size(), 1u);
  const emu::Counters& c = launches[0].total;
  const uint64_t warps = 3 * 2;
  EXPECT_EQ(c[Instr::shfl], 3 * warps);
  EXPECT_EQ(c[Instr::barrier], warps);
  EXPECT_EQ(c[Instr::mma], warps);
  EXPECT_EQ(c[Instr::sfu], 4 * warps);
  EXPECT_EQ(c[Instr::atomic], 2 * warps);
  EXPECT_EQ(c[Instr::st_global], 0u);  // a plain store is not counted
  EXPECT_EQ(c[Instr::ldmatrix], 0u);
  EXPECT_EQ(emu::sum_counters(launches, "instruction_mix")[Instr::mma], warps);
  EXPECT_EQ(emu::sum_counters(launches, "something_else")[Instr::mma], 0u);
}

TEST(EmuCounters, NothingIsCountedWhileOff) {
  emu::set_counters(false);
  emu::take_counters();
  DeviceBuffer<float> out(64), acc(std::vector<float>{0.f});
  NURI_LAUNCH(instruction_mix, dim3(1), dim3(64), 0, nullptr, InstrParams{out.get(), acc.get()});
  EXPECT_TRUE(emu::take_counters().empty());
  EXPECT_FALSE(emu::counters_enabled());
}

}  // namespace
}  // namespace nuri::test
