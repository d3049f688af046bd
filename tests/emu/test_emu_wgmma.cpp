// The emulator's wgmma against a plain matrix product: D = A·B over K = 64 (four chained k16
// steps, the first without the accumulator), N = 32 and 64, A from shared memory or registers,
// operands in every K-major layout (no swizzle with 8 x 16-byte core matrices, and 32-, 64- and
// 128-byte swizzles) built on the host from the PTX ISA's description, and the 128-byte one also
// loaded by TMA (the two emulated units must agree). Exact: the emulator sums exact products in
// k order, as the reference does. The same with one group per k-step, chained in flight. Then one
// planted bug per check.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "emu/emu_util.h"
#include "ptx.cuh"
#include "sm90.h"

namespace nuri::test {
namespace {

using nuri::kernels::wgmma_commit;
using nuri::kernels::wgmma_desc;
using nuri::kernels::wgmma_fence;
using nuri::kernels::wgmma_rs;
using nuri::kernels::wgmma_ss;
using nuri::kernels::wgmma_wait;

constexpr int kM = 64, kK = 64;

enum class Bug {
  none,
  no_fence,
  read_early,
  write_early,
  no_wait,
  disagree,
  outside,
  small_block,
  operand_overwritten,  // shared memory of an operand written before the wait
  partial_wait,         // ...after a wait_group 1 that leaves a second group reading it in flight
  no_proxy_fence,       // the operands' plain stores never fenced to the async proxy
  store_after_fence,    // one operand byte stored again after the fences
  shape_change,         // (step_groups, N = 64) step 1 as an N = 32 wgmma on step 0's registers
  a_after_fence,        // (A in registers) each step's fragments written over step 0's, after
                        // the one fence
  a_in_flight,          // (A in registers) step 0's fragments written before the wait
  acc_after_fence,      // a second pass on the accumulators, one written after its fence
};

/// Byte offset of element (mn, k) of a bf16 operand with `rows` mn-indices and kK k-indices,
/// relative to a 1024-byte-aligned base, in the layout of `swizzle` (S bytes; 0: none):
///   K-major, none:  8 x 16-byte core matrices, [mn / 8][k / 8][8 rows][8 elements];
///   K-major, S:     k-atoms of S / 2 elements, each a [rows][S bytes] block;
///   MN-major, none: core matrices of 8 k-rows x 8 mn-elements, [k / 8][mn / 8][8][8];
///   MN-major, S:    mn-blocks of S / 2 elements, each a [kK rows][S bytes] block;
/// the swizzled ones then XOR the 16-byte chunk index with the 128-byte row index (S / 16
/// chunks), as the PTX ISA's canonical layouts and CUTLASS's Swizzle<log2(S / 16), 4, 3> do.
size_t layout(int mn, int k, int rows, int swizzle, bool mn_major) {
  size_t a;
  if (swizzle == 0) {
    if (!mn_major) {
      return size_t((mn / 8) * (kK / 8) + k / 8) * 128 + size_t(mn % 8) * 16 + size_t(k % 8) * 2;
    }
    return size_t((k / 8) * (rows / 8) + mn / 8) * 128 + size_t(k % 8) * 16 + size_t(mn % 8) * 2;
  }
  const int per_row = swizzle / 2;
  if (!mn_major) {
    a = size_t(k / per_row) * size_t(rows) * size_t(swizzle) + size_t(mn) * size_t(swizzle) +
        size_t(k % per_row) * 2;
  } else {
    a = size_t(mn / per_row) * size_t(kK) * size_t(swizzle) + size_t(k) * size_t(swizzle) +
        size_t(mn % per_row) * 2;
  }
  return a ^ (((a >> 7) & size_t(swizzle / 16 - 1)) << 4);
}

/// The descriptor of k-step ks (k = 16ks..16ks+15) of an operand at `base` in that layout.
__device__ uint64_t step_desc(const unsigned char* base, int ks, int rows, int swizzle,
                              bool mn_major = false) {
  if (!mn_major) {
    if (swizzle == 0) return wgmma_desc(base + ks * 2 * 128, 128, (kK / 8) * 128, 0);
    const int per_atom = swizzle / 2, k = 16 * ks;
    return wgmma_desc(base + (k / per_atom) * rows * swizzle + (k % per_atom) * 2, 0,
                      8 * swizzle, swizzle);
  }
  // MN-major: LBO steps between mn-chunks (none) or mn-blocks (swizzled), SBO the other way.
  if (swizzle == 0) {
    return wgmma_desc(base + 2 * ks * (rows / 8) * 128, (rows / 8) * 128, 128, 0);
  }
  return wgmma_desc(base + 16 * ks * swizzle, kK * swizzle, 8 * swizzle, swizzle);
}

struct WgParams {
  const unsigned char* image;  // the shared-memory image: A at 0, B at b_offset
  size_t image_bytes, b_offset;
  const __nv_bfloat16* a;      // [64][kK] row-major, for A from registers
  float* out;                  // [64][n]
  int swizzle;
  bool a_in_regs, a_mn, b_mn;  // A from registers; A, B MN-major
  Bug bug;
  bool step_groups;  // one group per k-step, wait_group 1 after each (a GEMM's main loop)
};

template <int N>
__global__ void wgmma_kernel(WgParams p) {
  unsigned char* smem = nuri::kernels::dynamic_smem<unsigned char>();
  for (size_t i = threadIdx.x; i < p.image_bytes; i += blockDim.x) smem[i] = p.image[i];
  // wgmma reads its descriptors' operands through the async proxy.
  if (p.bug != Bug::no_proxy_fence) nuri::kernels::fence_proxy_async();
  if (p.bug == Bug::store_after_fence) {
    __syncthreads();  // after every thread's fence (any fence refreshes the emulator's view)
    if (threadIdx.x == 0) smem[p.b_offset] ^= 0x40;  // the byte this thread stored
  }
  __syncthreads();
  const int tid = int(threadIdx.x), w = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  float d[N / 2];
  for (float& x : d) x = 1e30f;  // scale_d = false on the first step must ignore it
  // A from registers: every step's fragments written before the fence, each in its own
  // registers (the tensor cores may read them until the wait).
  uint32_t a_frag[kK / 16][4];
  const auto fragment = [&](int ks, uint32_t (&a)[4]) {
    for (int r = 0; r < 4; ++r) {
      const int row = 16 * w + g + 8 * (r % 2), col = 16 * ks + 2 * t + 8 * (r / 2);
      uint16_t lo, hi;
      std::memcpy(&lo, p.a + row * kK + col, 2);
      std::memcpy(&hi, p.a + row * kK + col + 1, 2);
      a[r] = uint32_t(lo) | uint32_t(hi) << 16;
    }
  };
  if (p.a_in_regs) {
    for (int ks = 0; ks < kK / 16; ++ks) fragment(ks, a_frag[ks]);
  }
  if (p.bug != Bug::no_fence) wgmma_fence();
  for (int ks = 0; ks < kK / 16; ++ks) {
    // step_groups: the accumulators chain across groups in flight (same shape: no wait needed
    // between them); every wgmma after a wait_group needs a fence.
    if (p.step_groups && ks > 0) wgmma_fence();
    uint64_t b = step_desc(smem + p.b_offset, ks, N, p.swizzle, p.b_mn);
    if constexpr (N == 64) {
      if (p.bug == Bug::shape_change && ks == 1) {
        wgmma_ss<__nv_bfloat16, 32>(reinterpret_cast<float(&)[16]>(d),
                                    step_desc(smem, ks, kM, p.swizzle), b, true);
        continue;
      }
    }
    if (p.bug == Bug::disagree && tid == 5) b += 1;
    if (p.bug == Bug::outside) b = wgmma_desc(smem + p.image_bytes, 0, 1024, 128);
    if (p.a_in_regs) {
      uint32_t(&a)[4] = a_frag[p.bug == Bug::a_after_fence ? 0 : ks];
      if (p.bug == Bug::a_after_fence) fragment(ks, a);  // step 0's registers, after the fence
      if (p.b_mn) {
        wgmma_rs<__nv_bfloat16, N, true>(d, a, b, ks > 0);
      } else {
        wgmma_rs<__nv_bfloat16, N>(d, a, b, ks > 0);
      }
    } else {
      const uint64_t a = step_desc(smem, ks, kM, p.swizzle, p.a_mn);
      if (p.a_mn && p.b_mn) {
        wgmma_ss<__nv_bfloat16, N, true, true>(d, a, b, ks > 0);
      } else if (p.a_mn) {
        wgmma_ss<__nv_bfloat16, N, true, false>(d, a, b, ks > 0);
      } else if (p.b_mn) {
        wgmma_ss<__nv_bfloat16, N, false, true>(d, a, b, ks > 0);
      } else {
        wgmma_ss<__nv_bfloat16, N>(d, a, b, ks > 0);
      }
    }
    if (p.step_groups) {
      wgmma_commit();
      wgmma_wait<1>();
    }
  }
  wgmma_commit();
  if (p.bug == Bug::partial_wait) {
    // A second group reading the same B: wait_group 1 retires the first group only.
    float d2[N / 2];
    wgmma_fence();
    wgmma_ss<__nv_bfloat16, N>(d2, step_desc(smem, 0, kM, p.swizzle),
                               step_desc(smem + p.b_offset, 0, N, p.swizzle), false);
    wgmma_commit();
    wgmma_wait<1>();
    if (tid == 3) smem[p.b_offset] = 0;
    wgmma_wait<0>();
  }
  if (p.bug == Bug::a_in_flight) a_frag[0][2] ^= 1u;
  if (p.bug == Bug::acc_after_fence) {
    // The accumulators again, after the wait: written after the fence, not before it.
    wgmma_wait<0>();
    wgmma_fence();
    d[1] *= 2.f;
    wgmma_ss<__nv_bfloat16, N>(d, step_desc(smem, 0, kM, p.swizzle),
                               step_desc(smem + p.b_offset, 0, N, p.swizzle), true);
    wgmma_commit();
  }
  if (p.bug == Bug::write_early) d[3] = 0.f;
  if (p.bug == Bug::operand_overwritten && tid == 3) smem[p.b_offset] = 0;
  float early = 0.f;
  if (p.bug == Bug::read_early) early = d[0];
  if (p.bug != Bug::no_wait) wgmma_wait<0>();
  if (p.bug == Bug::read_early) d[0] = early;
  for (int j = 0; j < N / 8; ++j)
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < 2; ++i)
        p.out[(16 * w + g + 8 * h) * N + 8 * j + 2 * t + i] = d[4 * j + 2 * h + i];
}

uint16_t bf16_bits(float x) {  // the values below are exact in bf16
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return uint16_t(u >> 16);
}

struct Result {
  std::vector<float> got, want;
};

template <int N>
Result run(int swizzle, bool a_in_regs, Bug bug = Bug::none, bool a_mn = false,
           bool b_mn = false, bool step_groups = false) {
  // Small integers and halves: every product and partial sum is exact in f32.
  std::vector<float> A(size_t(kM) * kK);
  std::vector<float> B(static_cast<size_t>(N * kK));  // stored as [N][kK] (K-major)
  for (size_t i = 0; i < A.size(); ++i) A[i] = float(int(i * 7 % 13) - 6) * 0.5f;
  for (size_t i = 0; i < B.size(); ++i) B[i] = float(int(i * 5 % 11) - 5);
  // Each operand's extent in its layout (an MN-major swizzled row holds S / 2 mn-elements
  // even when the operand has fewer), rounded to the 1024-byte swizzle repeat.
  auto extent = [&](int rows, bool mn_major) {
    size_t most = 0;
    for (int m = 0; m < rows; ++m)
      for (int k = 0; k < kK; ++k) most = std::max(most, layout(m, k, rows, swizzle, mn_major) + 2);
    return (most + 1023) / 1024 * 1024;
  };
  const size_t b_offset = extent(kM, a_mn);
  std::vector<unsigned char> image(b_offset + extent(N, b_mn));
  std::vector<uint16_t> a_rows(A.size());
  for (int r = 0; r < kM; ++r)
    for (int k = 0; k < kK; ++k) {
      const uint16_t h = bf16_bits(A[size_t(r * kK + k)]);
      a_rows[size_t(r * kK + k)] = h;
      std::memcpy(&image[layout(r, k, kM, swizzle, a_mn)], &h, 2);
    }
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < kK; ++k) {
      const uint16_t h = bf16_bits(B[size_t(n * kK + k)]);
      std::memcpy(&image[b_offset + layout(n, k, N, swizzle, b_mn)], &h, 2);
    }
  DeviceBuffer<unsigned char> g_image(image);
  DeviceBuffer<uint16_t> g_a(a_rows);
  DeviceBuffer<float> out(static_cast<size_t>(kM * N));
  WgParams p{g_image.get(), image.size(), b_offset,
             reinterpret_cast<const __nv_bfloat16*>(g_a.get()), out.get(), swizzle, a_in_regs,
             a_mn, b_mn, bug, step_groups};
  NURI_LAUNCH((wgmma_kernel<N>), dim3(1), dim3(bug == Bug::small_block ? 96 : 128), image.size(),
              nullptr, p);
  Result r;
  r.got = out.download();
  r.want.assign(static_cast<size_t>(kM * N), 0.f);
  for (int m = 0; m < kM; ++m)
    for (int n = 0; n < N; ++n) {
      float acc = 0.f;
      for (int k = 0; k < kK; ++k) acc += A[size_t(m * kK + k)] * B[size_t(n * kK + k)];
      r.want[size_t(m * N + n)] = acc;
    }
  return r;
}

template <int N>
void expect_product(int swizzle, bool a_in_regs, bool a_mn = false, bool b_mn = false,
                    bool step_groups = false) {
  SCOPED_TRACE("N " + std::to_string(N) + ", swizzle " + std::to_string(swizzle) +
               (a_in_regs ? ", A in registers" : a_mn ? ", A M-major" : ", A K-major") +
               (b_mn ? ", B N-major" : ", B K-major") +
               (step_groups ? ", a group per k-step" : ""));
  const Result r = run<N>(swizzle, a_in_regs, Bug::none, a_mn, b_mn, step_groups);
  int wrong = 0;
  for (size_t i = 0; i < r.got.size(); ++i) {
    if (r.got[i] != r.want[i] && ++wrong <= 5) {
      ADD_FAILURE() << "D[" << i / N << "][" << i % N << "] = " << r.got[i] << " instead of "
                    << r.want[i];
    }
  }
  EXPECT_EQ(wrong, 0);
}

TEST(EmulatorWgmma, MatchesAPlainProductInEveryLayout) {
  for (int swizzle : {0, 32, 64, 128}) {
    for (bool regs : {false, true}) {
      expect_product<32>(swizzle, regs);
      expect_product<64>(swizzle, regs);
      expect_product<64>(swizzle, regs, false, true);  // B N-major: P·V with V as stored
    }
    expect_product<64>(swizzle, false, true, false);  // A M-major
    expect_product<64>(swizzle, false, true, true);
  }
}

// A GEMM's main loop: one group per k-step, the accumulators chained across the groups in
// flight, wait_group 1 after each commit (the PTX ISA orders accumulator accesses between
// wgmmas of one shape without a wait). Each group's result is left to the next one chained on
// it, and only the last wait writes the registers.
TEST(EmulatorWgmma, AccumulatorsChainAcrossGroupsInFlight) {
  expect_product<64>(128, false, false, false, true);
  expect_product<64>(128, false, true, true, true);  // both MN-major: the weight gradient's
  expect_product<32>(128, true, false, false, true);
}

// ---- with TMA: the operands loaded by tensor maps with the 128-byte swizzle -------------------

struct WgTmaParams {
  CUtensorMap a_map, b_map;  // A [64][kK]; B [N][kK], or [kK][N] as V is stored (b_mn)
  unsigned bytes;            // A's and B's box bytes together
  size_t b_offset;
  float* out;
  bool b_mn;
};

template <int N>
__global__ void wgmma_tma_kernel(const __grid_constant__ WgTmaParams p) {
  unsigned char* smem = nuri::kernels::dynamic_smem<unsigned char>();
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem + p.b_offset + N * kK * 2);
  if (threadIdx.x == 0) {
    nuri::kernels::mbarrier_init(bar, 1);
    nuri::kernels::fence_proxy_async();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    nuri::kernels::mbarrier_arrive_expect_tx(bar, p.bytes);
    const int32_t at[2] = {0, 0};
    nuri::kernels::tma_load<2>(smem, &p.a_map, at, bar);
    nuri::kernels::tma_load<2>(smem + p.b_offset, &p.b_map, at, bar);
  }
  nuri::kernels::mbarrier_wait_parity(bar, 0);
  const int tid = int(threadIdx.x), w = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  float d[N / 2];
  wgmma_fence();
  for (int ks = 0; ks < kK / 16; ++ks) {
    const uint64_t a = step_desc(smem, ks, kM, 128), b = step_desc(smem + p.b_offset, ks, N, 128, p.b_mn);
    if (p.b_mn) {
      wgmma_ss<__nv_bfloat16, N, false, true>(d, a, b, ks > 0);
    } else {
      wgmma_ss<__nv_bfloat16, N>(d, a, b, ks > 0);
    }
  }
  wgmma_commit();
  wgmma_wait<0>();
  for (int j = 0; j < N / 8; ++j)
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < 2; ++i)
        p.out[(16 * w + g + 8 * h) * N + 8 * j + 2 * t + i] = d[4 * j + 2 * h + i];
}

void check_tma_operands(bool b_mn) {
  SCOPED_TRACE(b_mn ? "B stored [K][N] (N-major)" : "B stored [N][K] (K-major)");
  constexpr int N = 64;
  std::vector<float> A(size_t(kM) * kK);
  std::vector<float> B(static_cast<size_t>(N * kK));
  for (size_t i = 0; i < A.size(); ++i) A[i] = float(int(i * 3 % 17) - 8) * 0.25f;
  for (size_t i = 0; i < B.size(); ++i) B[i] = float(int(i * 5 % 9) - 4);
  std::vector<uint16_t> a_bits(A.size()), b_bits(B.size());
  for (size_t i = 0; i < A.size(); ++i) a_bits[i] = bf16_bits(A[i]);
  for (int n = 0; n < N; ++n)  // B[n][k] logically; in memory [N][kK] or [kK][N]
    for (int k = 0; k < kK; ++k) {
      b_bits[b_mn ? size_t(k * N + n) : size_t(n * kK + k)] = bf16_bits(B[size_t(n * kK + k)]);
    }
  DeviceBuffer<uint16_t> ga(a_bits), gb(b_bits);
  DeviceBuffer<float> out(static_cast<size_t>(kM * N));
  WgTmaParams p{};
  auto encode = [](CUtensorMap* m, void* base, cuuint64_t rows) {  // [rows][64] bf16
    const cuuint64_t dim[2] = {64, rows}, stride[1] = {64 * 2};
    const cuuint32_t box[2] = {64, cuuint32_t(rows)}, estride[2] = {1, 1};
    return cuTensorMapEncodeTiled(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, base, dim, stride, box,
                                  estride, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                  CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_NONE,
                                  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  };
  ASSERT_EQ(encode(&p.a_map, ga.get(), kM), CUDA_SUCCESS);
  ASSERT_EQ(encode(&p.b_map, gb.get(), b_mn ? kK : N), CUDA_SUCCESS);
  p.b_mn = b_mn;
  p.b_offset = size_t(kM) * kK * 2;
  p.bytes = unsigned((kM + N) * kK * 2);
  p.out = out.get();
  NURI_LAUNCH((wgmma_tma_kernel<N>), dim3(1), dim3(128), p.b_offset + N * kK * 2 + 8, nullptr, p);
  const std::vector<float> got = out.download();
  int wrong = 0;
  for (int m = 0; m < kM; ++m)
    for (int n = 0; n < N; ++n) {
      float acc = 0.f;
      for (int k = 0; k < kK; ++k) acc += A[size_t(m * kK + k)] * B[size_t(n * kK + k)];
      if (got[size_t(m * N + n)] != acc && ++wrong <= 5) {
        ADD_FAILURE() << "D[" << m << "][" << n << "] = " << got[size_t(m * N + n)]
                      << " instead of " << acc;
      }
    }
  EXPECT_EQ(wrong, 0);
}

TEST(EmulatorWgmma, OperandsLoadedByTmaWithThe128ByteSwizzle) {
  check_tma_operands(false);
  check_tma_operands(true);  // the FlashAttention-3 P·V case: V's rows are keys (k)
}

std::string error_with(Bug bug) {
  return error_of([bug] { run<32>(128, false, bug); });
}

TEST(EmulatorWgmma, MisuseIsAnErrorNamingIt) {
  expect_has(error_with(Bug::no_fence), "without a wgmma.fence");
  expect_has(error_with(Bug::write_early), "was written while that wgmma was in flight");
  expect_has(error_with(Bug::no_wait), "exited with wgmma.mma_async results");
  expect_has(error_with(Bug::disagree), "the threads of a warpgroup disagree");
  expect_has(error_with(Bug::outside), "descriptor reaches byte");
  expect_has(error_with(Bug::small_block), "not a whole number of 128-thread warpgroups");
  expect_has(error_with(Bug::no_proxy_fence),
             "store that no fence.proxy.async has made visible to the async proxy, and this wgmma");
  expect_has(error_with(Bug::store_after_fence), "store that no fence.proxy.async has made");
  expect_has(error_of([] { run<64>(128, false, Bug::shape_change, false, false, true); }),
             "only wgmmas of one shape chain without a wgmma.wait_group");
  // Registers written between the fence and a wgmma reading them, and A's registers written
  // while their wgmma may still read them.
  expect_has(error_of([] { run<32>(128, true, Bug::a_after_fence); }),
             "A-fragment register 0 was written after this thread's last wgmma.fence");
  expect_has(error_with(Bug::acc_after_fence),
             "accumulator register 1 was written after this thread's last wgmma.fence");
  expect_has(error_of([] { run<32>(128, true, Bug::a_in_flight); }),
             "A-fragment register 2 of the wgmma.mma_async issued at");
}

// Two warpgroups, each with its own tensor-core unit: a wgmma of one orders nothing of the
// other's. Thread 0 (warpgroup 0) stores a word before its wgmma; thread 128 (warpgroup 1)
// loads it after its own wgmma's wait, with no barrier between them: a race, which a unit
// shared by the two would hide (the unit takes warpgroup 0's history, and warpgroup 1's wait
// acquires what the unit released).
__global__ void wgmma_two_groups_kernel(WgParams p, int* word) {
  unsigned char* smem = nuri::kernels::dynamic_smem<unsigned char>();
  for (size_t i = threadIdx.x; i < p.image_bytes; i += blockDim.x) smem[i] = p.image[i];
  nuri::kernels::fence_proxy_async();
  __syncthreads();
  if (threadIdx.x == 0) *word = 7;
  float d[16];
  wgmma_fence();
  wgmma_ss<__nv_bfloat16, 32>(d, step_desc(smem, 0, kM, p.swizzle),
                              step_desc(smem + p.b_offset, 0, 32, p.swizzle), false);
  wgmma_commit();
  wgmma_wait<0>();
  if (threadIdx.x == 128) p.out[0] = float(*word) + d[0];
}

TEST(EmulatorWgmmaDeathTest, TwoWarpgroupsWgmmasOrderNothingBetweenThem) {
  if (!kRaceDetection) GTEST_SKIP() << "race detection needs a -DNURI_TSAN=ON build";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const auto two_groups = [] {
    std::vector<unsigned char> image(8192, 0);  // A and B all zero (bf16 0)
    DeviceBuffer<unsigned char> g_image(image);
    DeviceBuffer<float> out(1);
    DeviceBuffer<int> word(1);
    WgParams p{g_image.get(), image.size(), 4096, nullptr, out.get(), 128, false,
               false, false, Bug::none, false};
    NURI_LAUNCH(wgmma_two_groups_kernel, dim3(1), dim3(256), image.size(), nullptr, p,
                word.get());
  };
  EXPECT_DEATH(two_groups(), "ThreadSanitizer: data race(.|\n)*wgmma_two_groups_kernel");
}

TEST(EmulatorWgmmaDeathTest, AnOperandWrittenBeforeTheWaitIsARace) {
  if (!kRaceDetection) GTEST_SKIP() << "race detection needs a -DNURI_TSAN=ON build";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(run<32>(128, false, Bug::operand_overwritten),
               "ThreadSanitizer: data race(.|\n)*wgmma_kernel");
}

// Each wgmma's operand reads are ordered by the wait_group that retires it, not by an earlier
// one: after wait_group 1, the group still in flight may be reading, as on the GPU.
TEST(EmulatorWgmmaDeathTest, AnOperandOfAGroupStillInFlightWrittenIsARace) {
  if (!kRaceDetection) GTEST_SKIP() << "race detection needs a -DNURI_TSAN=ON build";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(run<32>(128, false, Bug::partial_wait),
               "ThreadSanitizer: data race(.|\n)*wgmma_kernel");
}

TEST(EmulatorWgmma, AccumulatorsReadBeforeTheirWaitAreNaN) {
  const Result r = run<32>(128, false, Bug::read_early);
  for (int m = 0; m < kM; ++m) {
    if (m % 16 < 8) {  // column 0 of rows 16w + g is d[0]: read early
      EXPECT_TRUE(std::isnan(r.got[size_t(m * 32)])) << "row " << m;
    } else {           // of rows 16w + g + 8, d[2]: read after the wait
      EXPECT_EQ(r.got[size_t(m * 32)], r.want[size_t(m * 32)]) << "row " << m;
    }
    EXPECT_EQ(r.got[size_t(m * 32 + 1)], r.want[size_t(m * 32 + 1)]) << "row " << m;
  }
}

}  // namespace
}  // namespace nuri::test

namespace nuri::test {
namespace {

// ---- setmaxnreg: accounting, with the block's register pool ------------------------------------

enum class RegBug {
  none,
  producer_last,   // the split of `none`, the producer as warpgroup 2: the .inc may have to wait
  over_budget,     // 32 + 240 + 240: 8 a thread past the pool of a 384-thread block (3 x 168)
  over_budget_last,  // the same, the producer last: a consumer woken by its .dec waits again
  partial_dec,       // only the producer's first warp gives its registers back
  producer_keeps,  // the producer never gives back its 168: 168 + 240 + 240
  disagree,
  inc_lowers,
  dec_raises,  // a first .dec above the 168 the warpgroup was launched with
  bad_count
};

// Three warpgroups as FlashAttention-3 splits them: a producer giving registers back, two
// consumers taking them.
__global__ void setmaxnreg_kernel(RegBug bug) {
  const int wg = int(threadIdx.x) / 128;
  const int producer = bug == RegBug::producer_last || bug == RegBug::over_budget_last ? 2 : 0;
  if (wg == producer) {
    if (bug == RegBug::partial_dec && threadIdx.x % 128 >= 32) return;
    if (bug == RegBug::over_budget || bug == RegBug::over_budget_last) {
      nuri::kernels::setmaxnreg<false, 32>();
    } else if (bug == RegBug::dec_raises) {
      nuri::kernels::setmaxnreg<false, 176>();
    } else if (bug != RegBug::producer_keeps) {
      nuri::kernels::setmaxnreg<false, 24>();
    }
  } else {
    if (bug == RegBug::disagree && threadIdx.x == 200) {
      nuri::kernels::setmaxnreg<true, 232>();
    } else {
      nuri::kernels::setmaxnreg<true, 240>();
    }
    if (bug == RegBug::inc_lowers) nuri::kernels::setmaxnreg<true, 232>();
    if (bug == RegBug::bad_count && wg == 2) ::nuri::emu::setmaxnreg(true, 100, ::nuri::emu::Site::current());
  }
}

std::string reg_error(RegBug bug) {
  return error_of([bug] { NURI_LAUNCH(setmaxnreg_kernel, dim3(2), dim3(384), 0, nullptr, bug); });
}

TEST(EmulatorSetmaxnreg, AProducerAndTwoConsumersFitAndMisuseIsAnError) {
  EXPECT_EQ(::nuri::emu::setmaxnreg_launch_count(384), 168u);  // 65536 / 384, down to 8s
  EXPECT_EQ(::nuri::emu::setmaxnreg_launch_count(512), 128u);
  EXPECT_EQ(::nuri::emu::setmaxnreg_launch_count(128), 256u);
  for (int threads : {128, 256, 384, 512, 640}) {  // the emulator asks the kernels' model
    EXPECT_EQ(int(::nuri::emu::setmaxnreg_launch_count(threads)),
              nuri::kernels::setmaxnreg_launch_count(threads));
  }
  static_assert(nuri::kernels::setmaxnreg_split_fits(384, 24, 240, 2));
  static_assert(!nuri::kernels::setmaxnreg_split_fits(384, 32, 240, 2));  // 512 > 3 x 168
  static_assert(nuri::kernels::setmaxnreg_split_fits(512, 32, 160, 3));   // FA3's 4 warpgroups
  EXPECT_EQ(reg_error(RegBug::none), "no error");  // 24 + 240 + 240 = 504 = 3 x 168
  EXPECT_EQ(reg_error(RegBug::producer_last), "no error");
  // A split the pool cannot supply is not an error at the call: the .inc waits for registers
  // that never come, and the block ends in a deadlock naming it.
  for (RegBug bug : {RegBug::over_budget, RegBug::over_budget_last, RegBug::producer_keeps}) {
    const std::string e = reg_error(bug);
    expect_has(e, "no thread can make progress");
    expect_has(e, "in setmaxnreg.inc 240 at");
    // Over budget, one consumer gets its 240 and the other waits (with the producer last, both
    // wait for its .dec, both wake, and the second to run waits again); beside a producer that
    // keeps its 168, neither can.
    expect_has(e, bug == RegBug::over_budget        ? "hold (32 + 240 + 168)"
                  : bug == RegBug::over_budget_last ? "hold (240 + 168 + 32)"
                                                    : "hold (168 + 168 + 168)");
    expect_has(e, "the block's pool is 168 x 3 (what its 384 threads were launched with)");
  }
  // The consumers get their registers at the first .dec; the block's end finds the warps that
  // never gave theirs back.
  expect_has(reg_error(RegBug::partial_dec),
             "made 0 setmaxnreg calls and its warpgroup 0 made 1 (setmaxnreg is .sync.aligned");
  expect_has(reg_error(RegBug::dec_raises),
             "holds 168 (what a block of 384 threads is launched with), which .dec may not raise");
  expect_has(reg_error(RegBug::disagree), "the warpgroup must agree");
  expect_has(reg_error(RegBug::inc_lowers), "holds 240, which .inc may not lower");
  expect_has(reg_error(RegBug::bad_count), "a multiple of 8 in [24, 256]");
}

}  // namespace
}  // namespace nuri::test
