// The emulator's tensor maps and tensor tile copies (TMA) against a plain reference: the driver's
// requirements on cuTensorMapEncodeTiled, loads of boxes inside, across and before the tensor's
// edges with every swizzle the emulator supports (the shared-memory image compared byte for
// byte with the documented 16-byte-chunk XOR), the NaN fill, a 3-d box, stores that leave the
// outside of the tensor alone, and one planted bug per strictness check.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "emu/emu_util.h"
#include "ptx.cuh"

namespace nuri::test {
namespace {

using nuri::kernels::cp_async_bulk_commit;
using nuri::kernels::cp_async_bulk_wait;
using nuri::kernels::fence_proxy_async;
using nuri::kernels::mbarrier_arrive_expect_tx;
using nuri::kernels::mbarrier_init;
using nuri::kernels::mbarrier_wait_parity;
using nuri::kernels::tma_load;
using nuri::kernels::tma_store;

// A [40][72] tensor of 16-bit values in rows of 80 (160 bytes): padded rows, as strided views.
constexpr int kRows = 40, kCols = 72, kLd = 80;
constexpr int kBoxRows = 16;
constexpr size_t kBoxOffset = 1024;  // the box's place in shared memory (1024-byte aligned)

struct Encoding {
  CUtensorMapDataType dtype = CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  cuuint32_t rank = 2;
  size_t addr_offset = 0;
  cuuint64_t dim[3] = {kCols, kRows, 1};
  cuuint64_t stride[2] = {kLd * 2, kLd * 2 * kRows};
  cuuint32_t box[3] = {64, kBoxRows, 1};
  cuuint32_t estride[3] = {1, 1, 1};
  CUtensorMapInterleave interleave = CU_TENSOR_MAP_INTERLEAVE_NONE;
  CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_128B;
  CUtensorMapFloatOOBfill oob = CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE;
};

CUresult encode(CUtensorMap* map, void* base, const Encoding& e) {
  return cuTensorMapEncodeTiled(map, e.dtype, e.rank, static_cast<char*>(base) + e.addr_offset,
                                e.dim, e.stride, e.box, e.estride, e.interleave, e.swizzle,
                                CU_TENSOR_MAP_L2_PROMOTION_NONE, e.oob);
}

TEST(EmulatorTma, EncodingFollowsTheDriversRequirements) {
  DeviceBuffer<uint16_t> g(size_t(kLd) * kRows);
  CUtensorMap map;
  const Encoding ok;
  EXPECT_EQ(encode(&map, g.get(), ok), CUDA_SUCCESS);
  auto with = [&](auto change) {
    Encoding e = ok;
    change(e);
    return encode(&map, g.get(), e);
  };
  EXPECT_EQ(with([](Encoding& e) { e.addr_offset = 2; }), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(with([](Encoding& e) { e.stride[0] = 152; }), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(with([](Encoding& e) { e.box[1] = 257; }), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(with([](Encoding& e) { e.dim[0] = 0; }), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(with([](Encoding& e) { e.rank = 0; }), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(with([](Encoding& e) { e.rank = 6; }), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(with([](Encoding& e) {  // an inner box of 8 bytes
              e.swizzle = CU_TENSOR_MAP_SWIZZLE_NONE;
              e.box[0] = 4;
            }),
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(with([](Encoding& e) { e.swizzle = CU_TENSOR_MAP_SWIZZLE_64B; }),  // 128 > 64 bytes
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(with([](Encoding& e) {
              e.dtype = CU_TENSOR_MAP_DATA_TYPE_UINT16;  // the NaN fill needs a float type
              e.oob = CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA;
            }),
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(with([](Encoding& e) { e.estride[1] = 9; }), CUDA_ERROR_INVALID_VALUE);
  alignas(128) unsigned char raw[sizeof(CUtensorMap) + 64];
  EXPECT_EQ(encode(reinterpret_cast<CUtensorMap*>(raw + 32), g.get(), ok),  // not 64-aligned
            CUDA_ERROR_INVALID_VALUE);
  // What the driver accepts and the emulator does not model says so.
  EXPECT_EQ(with([](Encoding& e) { e.interleave = CU_TENSOR_MAP_INTERLEAVE_16B; }),
            CUDA_ERROR_NOT_SUPPORTED);
  EXPECT_EQ(with([](Encoding& e) { e.box[0] = 32; }),  // 64 bytes under a 128-byte swizzle
            CUDA_ERROR_NOT_SUPPORTED);
  EXPECT_EQ(with([](Encoding& e) { e.estride[1] = 2; }), CUDA_ERROR_NOT_SUPPORTED);
}

// cuda.h asks 16-byte alignment of a map's address and strides; the Programming Guide's TMA
// table asks 128 of a swizzled map's. The emulator keeps the first unless told to model the
// second (for testing code that declines refused maps); either way the rest holds.
TEST(EmulatorTma, TheStricterAlignmentOfSwizzledMapsCanBeModelled) {
  DeviceBuffer<uint16_t> g(size_t(128) * kRows);
  CUtensorMap map;
  auto with = [&](auto change) {
    Encoding e;  // rows 160 bytes apart
    change(e);
    return encode(&map, g.get(), e);
  };
  const auto as_is = [](Encoding&) {};
  const auto offset_32 = [](Encoding& e) { e.addr_offset = 32; };
  const auto rows_256 = [](Encoding& e) {
    e.stride[0] = 256;
    e.stride[1] = 256 * kRows;
  };
  const auto unswizzled = [](Encoding& e) { e.swizzle = CU_TENSOR_MAP_SWIZZLE_NONE; };
  EXPECT_EQ(with(as_is), CUDA_SUCCESS);
  EXPECT_EQ(with(offset_32), CUDA_SUCCESS);
  struct Restore {
    unsigned align = nuri::emu::set_swizzled_map_alignment(16);
    ~Restore() { nuri::emu::set_swizzled_map_alignment(align); }
  } restore;
  EXPECT_EQ(nuri::emu::set_swizzled_map_alignment(128), 16u);
  EXPECT_EQ(with(as_is), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(with(rows_256), CUDA_SUCCESS);
  EXPECT_EQ(with([&](Encoding& e) {
              rows_256(e);
              offset_32(e);
            }),
            CUDA_ERROR_INVALID_VALUE);
  // Rank 3: the second stride (of a single slice) is held to it too.
  EXPECT_EQ(with([&](Encoding& e) {
              rows_256(e);
              e.rank = 3;
            }),
            CUDA_SUCCESS);
  EXPECT_EQ(with([&](Encoding& e) {
              rows_256(e);
              e.rank = 3;
              e.stride[1] += 16;
            }),
            CUDA_ERROR_INVALID_VALUE);
  // Unswizzled maps keep cuda.h's rule.
  EXPECT_EQ(with(unswizzled), CUDA_SUCCESS);
  EXPECT_EQ(with([&](Encoding& e) {
              unswizzled(e);
              offset_32(e);
            }),
            CUDA_SUCCESS);
  EXPECT_EQ(nuri::emu::set_swizzled_map_alignment(16), 128u);
  EXPECT_EQ(with(as_is), CUDA_SUCCESS);
  EXPECT_THROW(nuri::emu::set_swizzled_map_alignment(48), nuri::Error);
  EXPECT_THROW(nuri::emu::set_swizzled_map_alignment(8), nuri::Error);
}

// ---- loads ---------------------------------------------------------------------------------------

enum class Bug {
  none,
  garbage_map,
  rank_mismatch,
  misaligned,
  store_not_waited,
  store_source_race,
  init_not_fenced,   // mbarrier.init with no fence.proxy.async before the copy completes on it
  source_not_fenced  // a tensor store's source written by plain stores with no fence after them
};

struct TmaParams {
  CUtensorMap map;
  int32_t coord[3];
  int rank;
  unsigned box_bytes;
  void* out;  // loads: the box's shared-memory image, byte for byte
  Bug bug;
};

// Thread 0 loads the box under an mbarrier; after the wait every thread copies the image out.
__global__ void tma_load_kernel(const __grid_constant__ TmaParams p) {
  unsigned char* smem = nuri::kernels::dynamic_smem<unsigned char>();
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem);
  unsigned char* box = smem + kBoxOffset + (p.bug == Bug::misaligned ? 16 : 0);
  if (threadIdx.x == 0) {
    mbarrier_init(bar, 1);
    if (p.bug != Bug::init_not_fenced) fence_proxy_async();  // the init, visible to the copy
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    mbarrier_arrive_expect_tx(bar, p.box_bytes);
    if (p.rank == 2 && p.bug != Bug::rank_mismatch) {
      const int32_t c[2] = {p.coord[0], p.coord[1]};
      tma_load<2>(box, &p.map, c, bar);
    } else {
      const int32_t c[3] = {p.coord[0], p.coord[1], p.coord[2]};
      tma_load<3>(box, &p.map, c, bar);
    }
  }
  mbarrier_wait_parity(bar, 0);
  unsigned char* out = static_cast<unsigned char*>(p.out);
  for (unsigned i = threadIdx.x; i < p.box_bytes; i += blockDim.x) out[i] = box[i];
}

/// Byte offset of box byte `off` in shared memory after a swizzle of `span` bytes, from the
/// start of dynamic shared memory: the 16-byte chunk index XOR the 128-byte row index (as many
/// low bits of each as the span has 16-byte chunks), which is the PTX ISA's and CUTLASS's
/// Swizzle<log2(span/16), 4, 3>.
size_t swizzle_of(size_t off, size_t span) {
  const size_t a = kBoxOffset + off;
  if (span == 0) return off;
  return (a ^ (((a >> 7) & (span / 16 - 1)) << 4)) - kBoxOffset;
}

struct LoadCase {
  CUtensorMapSwizzle swizzle;
  size_t span;  // bytes; 0: none
  int32_t c0, c1;
};

std::vector<uint16_t> tensor_values() {
  std::vector<uint16_t> v(size_t(kLd) * kRows, 0xdead);  // the row padding holds 0xdead
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kCols; ++c) v[size_t(r * kLd + c)] = uint16_t(1 + r * 1000 + c);
  return v;
}

void check_load(const LoadCase& lc) {
  SCOPED_TRACE("swizzle span " + std::to_string(lc.span) + ", box at (" + std::to_string(lc.c0) +
               ", " + std::to_string(lc.c1) + ")");
  const std::vector<uint16_t> host = tensor_values();
  DeviceBuffer<uint16_t> g(host);
  Encoding e;
  e.swizzle = lc.swizzle;
  e.box[0] = lc.span ? cuuint32_t(lc.span / 2) : 64;
  const int box0 = int(e.box[0]);
  const unsigned bytes = unsigned(box0 * kBoxRows * 2);
  DeviceBuffer<unsigned char> out(bytes);
  TmaParams p{};
  ASSERT_EQ(encode(&p.map, g.get(), e), CUDA_SUCCESS);
  p.coord[0] = lc.c0;
  p.coord[1] = lc.c1;
  p.rank = 2;
  p.box_bytes = bytes;
  p.out = out.get();
  NURI_LAUNCH(tma_load_kernel, dim3(1), dim3(64), kBoxOffset + bytes, nullptr, p);
  const std::vector<unsigned char> image = out.download();
  int wrong = 0;
  for (int r = 0; r < kBoxRows; ++r) {
    for (int c = 0; c < box0; ++c) {
      const int gr = lc.c1 + r, gc = lc.c0 + c;
      const bool inside = gr >= 0 && gr < kRows && gc >= 0 && gc < kCols;
      const uint16_t want = inside ? host[size_t(gr * kLd + gc)] : 0;
      uint16_t got;
      std::memcpy(&got, &image[swizzle_of(size_t(r * box0 + c) * 2, lc.span)], 2);
      if (got != want && ++wrong <= 5) {
        ADD_FAILURE() << "box element (" << r << ", " << c << "): " << got << " instead of "
                      << want;
      }
    }
  }
  EXPECT_EQ(wrong, 0);
}

TEST(EmulatorTma, LoadsMatchTheReferenceWithEverySwizzleAtEveryEdge) {
  const LoadCase swizzles[] = {{CU_TENSOR_MAP_SWIZZLE_NONE, 0, 0, 0},
                               {CU_TENSOR_MAP_SWIZZLE_32B, 32, 0, 0},
                               {CU_TENSOR_MAP_SWIZZLE_64B, 64, 0, 0},
                               {CU_TENSOR_MAP_SWIZZLE_128B, 128, 0, 0}};
  const int32_t corners[][2] = {{0, 0}, {8, 3}, {40, 30}, {-8, -3}, {60, 36}};
  for (const LoadCase& s : swizzles) {
    for (const auto& at : corners) check_load({s.swizzle, s.span, at[0], at[1]});
  }
}

TEST(EmulatorTma, NanFillAndAThreeDimensionalBox) {
  // f32 [3][5][8] (row stride 8 floats = 32 bytes; planes 5 rows apart), box [2][4][8] at
  // (0, 3, 1): rows 3..6 of planes 1..2, rows 5, 6 outside and NaN-filled.
  std::vector<float> host(3 * 5 * 8);
  for (size_t i = 0; i < host.size(); ++i) host[i] = float(i) + 0.5f;
  DeviceBuffer<float> g(host);
  Encoding e;
  e.dtype = CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
  e.rank = 3;
  e.dim[0] = 8;
  e.dim[1] = 5;
  e.dim[2] = 3;
  e.stride[0] = 32;
  e.stride[1] = 160;
  e.box[0] = 8;
  e.box[1] = 4;
  e.box[2] = 2;
  e.swizzle = CU_TENSOR_MAP_SWIZZLE_NONE;
  e.oob = CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA;
  const unsigned bytes = 8 * 4 * 2 * 4;
  DeviceBuffer<float> out(bytes / 4);
  TmaParams p{};
  ASSERT_EQ(encode(&p.map, g.get(), e), CUDA_SUCCESS);
  p.coord[0] = 0;
  p.coord[1] = 3;
  p.coord[2] = 1;
  p.rank = 3;
  p.box_bytes = bytes;
  p.out = out.get();
  NURI_LAUNCH(tma_load_kernel, dim3(1), dim3(64), kBoxOffset + bytes, nullptr, p);
  const std::vector<float> v = out.download();
  for (int z = 0; z < 2; ++z)
    for (int y = 0; y < 4; ++y)
      for (int x = 0; x < 8; ++x) {
        const float got = v[size_t((z * 4 + y) * 8 + x)];
        const int gy = 3 + y, gz = 1 + z;
        if (gy >= 5) {
          EXPECT_TRUE(std::isnan(got)) << z << "," << y << "," << x << ": " << got;
        } else {
          EXPECT_EQ(got, host[size_t((gz * 5 + gy) * 8 + x)]) << z << "," << y << "," << x;
        }
      }
}

// ---- stores --------------------------------------------------------------------------------------

// The block writes the box's logical element e (value 7000 + e) at its swizzled place, fences,
// and thread 0 stores the box to the tensor at p.coord.
__global__ void tma_store_kernel(const __grid_constant__ TmaParams p) {
  unsigned char* smem = nuri::kernels::dynamic_smem<unsigned char>();
  unsigned char* box = smem + kBoxOffset;
  const unsigned n = p.box_bytes / 2;
  for (unsigned e = threadIdx.x; e < n; e += blockDim.x) {
    const size_t a = kBoxOffset + 2 * size_t(e);
    const size_t s = a ^ (((a >> 7) & 7) << 4);  // the 128-byte swizzle
    const uint16_t v = uint16_t(7000 + e);
    std::memcpy(smem + s, &v, 2);
  }
  if (p.bug != Bug::source_not_fenced) fence_proxy_async();
  __syncthreads();
  if (threadIdx.x == 0) {
    const int32_t c[2] = {p.coord[0], p.coord[1]};
    tma_store<2>(&p.map, c, box);
    cp_async_bulk_commit();
    if (p.bug == Bug::store_source_race) box[0] = 1;  // the store may not have read it yet
    if (p.bug != Bug::store_not_waited) cp_async_bulk_wait<0>();
  }
}

void run_store(Bug bug, int32_t c0, int32_t c1) {
  const std::vector<uint16_t> sentinel(size_t(kLd) * kRows, 0xdead);
  DeviceBuffer<uint16_t> g(sentinel);
  Encoding e;  // 128-byte swizzle, box 64 × 16
  TmaParams p{};
  NURI_CHECK(encode(&p.map, g.get(), e) == CUDA_SUCCESS, "encode");
  p.coord[0] = c0;
  p.coord[1] = c1;
  p.rank = 2;
  p.box_bytes = 64 * kBoxRows * 2;
  p.bug = bug;
  NURI_LAUNCH(tma_store_kernel, dim3(1), dim3(64), kBoxOffset + p.box_bytes, nullptr, p);
  const std::vector<uint16_t> v = g.download();
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kLd; ++c) {
      const int br = r - c1, bc = c - c0;
      const bool in_box = br >= 0 && br < kBoxRows && bc >= 0 && bc < 64 && c < kCols;
      const uint16_t want = in_box ? uint16_t(7000 + br * 64 + bc) : 0xdead;
      NURI_CHECK(v[size_t(r * kLd + c)] == want, "tensor (", r, ", ", c, "): ",
                 v[size_t(r * kLd + c)], " instead of ", want);
    }
  }
}

TEST(EmulatorTma, StoresWriteOnlyInsideTheTensor) {
  run_store(Bug::none, 0, 0);
  run_store(Bug::none, 40, 30);  // the box's right and bottom edges outside
  run_store(Bug::none, -8, -3);  // its left and top edges outside
}

// ---- misuse ----------------------------------------------------------------------------------

std::string load_error(Bug bug) {
  DeviceBuffer<uint16_t> g(tensor_values());
  DeviceBuffer<unsigned char> out(2048);
  TmaParams p{};
  if (bug != Bug::garbage_map) NURI_CHECK(encode(&p.map, g.get(), Encoding{}) == CUDA_SUCCESS, "");
  p.rank = 2;
  p.box_bytes = 2048;
  p.out = out.get();
  p.bug = bug;
  return error_of([&] { NURI_LAUNCH(tma_load_kernel, dim3(1), dim3(64), kBoxOffset + 2048 + 16, nullptr, p); });
}

TEST(EmulatorTma, MisuseIsAnErrorNamingIt) {
  expect_has(load_error(Bug::garbage_map), "was not made by cuTensorMapEncodeTiled");
  expect_has(load_error(Bug::rank_mismatch), "a 3d copy with a tensor map of rank 2");
  expect_has(load_error(Bug::misaligned), "not 128-byte aligned");
  expect_has(error_of([] { run_store(Bug::store_not_waited, 0, 0); }), "exited with tensor stores");
}

// Plain stores and the async proxy meet only through fence.proxy.async: an mbarrier's init
// before a bulk copy completes on it, and a tensor store's source before its issue.
TEST(EmulatorTma, AMissingProxyFenceIsAnError) {
  expect_has(load_error(Bug::init_not_fenced), "was not followed by a fence.proxy.async");
  expect_has(error_of([] { run_store(Bug::source_not_fenced, 0, 0); }),
             "was written by a plain (generic-proxy) store that no fence.proxy.async has made "
             "visible to the async proxy, and this tensor store (its source) reads it");
}

TEST(EmulatorTma, WritingAStoresSourceBeforeItsWaitIsAnError) {
  // Found without the race detector: the wait compares the source with what it held at the
  // issue.
  expect_has(error_of([] { run_store(Bug::store_source_race, 0, 0); }),
             "was written after the issue and before this wait");
}

}  // namespace
}  // namespace nuri::test
