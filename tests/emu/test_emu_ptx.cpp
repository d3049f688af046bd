// The tensor-core and async-copy wrappers (kernels/ptx.cuh) under the emulator: mma.sync
// m16n8k16 (bf16 and f16) with fragments filled per the PTX layout and with the usual ldmatrix
// pairings, every ldmatrix variant on every lane, and cp.async's deferred completion.
#include <cuda_fp16.h>

#include <random>

#include "emu/emu_util.h"
#include "nuri/core/dtype.h"
#include "ptx.cuh"

namespace nuri::test {
namespace {

using kernels::cp_async;
using kernels::cp_async_commit;
using kernels::cp_async_wait;
using kernels::ldmatrix;

uint16_t to_bits(float v, bool bf16) {
  if (bf16) return f32_to_bf16(v).bits;
  const __half_raw h = __float2half_rn(v);
  return h.x;
}
float from_bits(uint16_t b, bool bf16) {
  if (bf16) return bf16_to_f32(bf16_t{b});
  __half_raw raw;
  raw.x = b;
  return __half2float(__half(raw));
}

// ---- mma with fragments packed by the documented layout ---------------------------------------

struct MmaParams {
  const uint16_t* a;  // [16, 16] row-major
  const uint16_t* b;  // [16, 8] row-major (K x N)
  const float* c;     // [16, 8]
  float* d;           // [16, 8]
  bool bf16;
};
__device__ uint32_t pack(uint16_t lo, uint16_t hi) { return uint32_t(lo) | uint32_t(hi) << 16; }

__global__ void mma_from_layout(MmaParams p) {
  const int lane = threadIdx.x, g = lane >> 2, t = lane % 4;
  const uint32_t ra[4] = {pack(p.a[g * 16 + 2 * t], p.a[g * 16 + 2 * t + 1]),
                          pack(p.a[(g + 8) * 16 + 2 * t], p.a[(g + 8) * 16 + 2 * t + 1]),
                          pack(p.a[g * 16 + 2 * t + 8], p.a[g * 16 + 2 * t + 9]),
                          pack(p.a[(g + 8) * 16 + 2 * t + 8], p.a[(g + 8) * 16 + 2 * t + 9])};
  const uint32_t rb[2] = {pack(p.b[(2 * t) * 8 + g], p.b[(2 * t + 1) * 8 + g]),
                          pack(p.b[(2 * t + 8) * 8 + g], p.b[(2 * t + 9) * 8 + g])};
  const float rc[4] = {p.c[g * 8 + 2 * t], p.c[g * 8 + 2 * t + 1], p.c[(g + 8) * 8 + 2 * t],
                       p.c[(g + 8) * 8 + 2 * t + 1]};
  float rd[4];
  if (p.bf16) {
    kernels::mma_bf16_m16n8k16(rd, ra, rb, rc);
  } else {
    kernels::mma_f16_m16n8k16(rd, ra, rb, rc);
  }
  p.d[g * 8 + 2 * t] = rd[0];
  p.d[g * 8 + 2 * t + 1] = rd[1];
  p.d[(g + 8) * 8 + 2 * t] = rd[2];
  p.d[(g + 8) * 8 + 2 * t + 1] = rd[3];
}

// The same product with A from ldmatrix.x4 and B from ldmatrix.x2.trans (row-major B).
__global__ void mma_from_ldmatrix(MmaParams p) {
  uint16_t* sA = nuri::kernels::dynamic_smem<uint16_t>();  // [16, 16]
  uint16_t* sB = sA + 256;                                  // [16, 8]
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) sA[i] = p.a[i];
  for (int i = lane; i < 128; i += 32) sB[i] = p.b[i];
  __syncwarp();
  uint32_t ra[4], rb[2];
  ldmatrix<4, false>(ra, sA + (lane % 16) * 16 + (lane / 16) * 8);
  ldmatrix<2, true>(rb, sB + (lane % 16) * 8);
  const int g = lane >> 2, t = lane % 4;
  const float rc[4] = {p.c[g * 8 + 2 * t], p.c[g * 8 + 2 * t + 1], p.c[(g + 8) * 8 + 2 * t],
                       p.c[(g + 8) * 8 + 2 * t + 1]};
  float rd[4];
  kernels::mma_bf16_m16n8k16(rd, ra, rb, rc);
  p.d[g * 8 + 2 * t] = rd[0];
  p.d[g * 8 + 2 * t + 1] = rd[1];
  p.d[(g + 8) * 8 + 2 * t] = rd[2];
  p.d[(g + 8) * 8 + 2 * t + 1] = rd[3];
}

struct MmaData {
  std::vector<uint16_t> a, b;
  std::vector<float> c, d_ref;
};
MmaData mma_data(bool bf16, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  MmaData m;
  std::vector<double> A(256), B(128);
  for (int i = 0; i < 256; ++i) {
    m.a.push_back(to_bits(u(rng), bf16));
    A[size_t(i)] = from_bits(m.a.back(), bf16);
  }
  for (int i = 0; i < 128; ++i) {
    m.b.push_back(to_bits(u(rng), bf16));
    B[size_t(i)] = from_bits(m.b.back(), bf16);
  }
  for (int i = 0; i < 128; ++i) m.c.push_back(u(rng));
  for (int r = 0; r < 16; ++r) {
    for (int n = 0; n < 8; ++n) {
      double acc = m.c[size_t(r * 8 + n)];
      for (int k = 0; k < 16; ++k) acc += A[size_t(r * 16 + k)] * B[size_t(k * 8 + n)];
      m.d_ref.push_back(float(acc));
    }
  }
  return m;
}

void expect_product(const std::vector<float>& d, const MmaData& m, const char* what) {
  for (size_t i = 0; i < d.size(); ++i) {
    // fp32 accumulation of 16 exact products of magnitude <= 4: error well below 1e-5.
    EXPECT_NEAR(d[i], m.d_ref[i], 1e-5) << what << " element (" << i / 8 << ", " << i % 8 << ")";
  }
}

TEST(EmulatorPtx, MmaM16n8k16MatchesAPlainMatrixProduct) {
  for (bool bf16 : {true, false}) {
    const MmaData m = mma_data(bf16, bf16 ? 7 : 8);
    DeviceBuffer<uint16_t> a(m.a), b(m.b);
    DeviceBuffer<float> c(m.c), d(128);
    NURI_LAUNCH(mma_from_layout, dim3(1), dim3(32), 0, nullptr,
                MmaParams{a.get(), b.get(), c.get(), d.get(), bf16});
    expect_product(d.download(), m, bf16 ? "bf16 mma" : "f16 mma");
  }
}

TEST(EmulatorPtx, LdmatrixPairingsFeedMmaCorrectly) {
  const MmaData m = mma_data(true, 9);
  DeviceBuffer<uint16_t> a(m.a), b(m.b);
  DeviceBuffer<float> c(m.c), d(128);
  NURI_LAUNCH(mma_from_ldmatrix, dim3(1), dim3(32), (256 + 128) * 2, nullptr,
              MmaParams{a.get(), b.get(), c.get(), d.get(), true});
  expect_product(d.download(), m, "ldmatrix x4 / x2.trans + mma");
}

// ---- ldmatrix: every variant, every lane, every register ----------------------------------------

struct LdmParams {
  int count;
  bool trans;
  uint32_t* out;  // [32, 4]
};
__global__ void load_matrices(LdmParams p) {
  // Four 8x8 matrices, matrix j's row r at a scattered 16-byte-aligned spot; element value
  // encodes (j, row, col) as j * 64 + row * 8 + col.
  uint16_t* s = nuri::kernels::dynamic_smem<uint16_t>();  // [32 rows, 16 halves], rows permuted
  const int lane = threadIdx.x;
  const int j = lane / 8, r = lane % 8, slot = (lane * 7) % 32;
  for (int c = 0; c < 8; ++c) s[slot * 16 + c] = uint16_t(j * 64 + r * 8 + c);
  __syncwarp();
  uint32_t reg[4] = {0, 0, 0, 0};
  const uint16_t* row = s + slot * 16;
  if (p.count == 1 && !p.trans) ldmatrix<1, false>(reinterpret_cast<uint32_t(&)[1]>(reg), row);
  if (p.count == 1 && p.trans) ldmatrix<1, true>(reinterpret_cast<uint32_t(&)[1]>(reg), row);
  if (p.count == 2 && !p.trans) ldmatrix<2, false>(reinterpret_cast<uint32_t(&)[2]>(reg), row);
  if (p.count == 2 && p.trans) ldmatrix<2, true>(reinterpret_cast<uint32_t(&)[2]>(reg), row);
  if (p.count == 4 && !p.trans) ldmatrix<4, false>(reg, row);
  if (p.count == 4 && p.trans) ldmatrix<4, true>(reg, row);
  for (int i = 0; i < 4; ++i) p.out[lane * 4 + i] = reg[i];
}

TEST(EmulatorPtx, LdmatrixDeliversThePtxFragmentOnEveryLane) {
  DeviceBuffer<uint32_t> out(128);
  for (int count : {1, 2, 4}) {
    for (bool trans : {false, true}) {
      NURI_LAUNCH(load_matrices, dim3(1), dim3(32), 32 * 16 * 2, nullptr,
                  LdmParams{count, trans, out.get()});
      const auto v = out.download();
      for (int lane = 0; lane < 32; ++lane) {
        const int q = lane >> 2, t = lane % 4;
        for (int j = 0; j < count; ++j) {
          // non-trans {M_j[q][2t], M_j[q][2t+1]}; trans {M_j[2t][q], M_j[2t+1][q]}
          const uint32_t lo = trans ? j * 64 + (2 * t) * 8 + q : j * 64 + q * 8 + 2 * t;
          const uint32_t hi = trans ? j * 64 + (2 * t + 1) * 8 + q : j * 64 + q * 8 + 2 * t + 1;
          ASSERT_EQ(v[size_t(lane * 4 + j)], lo | hi << 16)
              << "x" << count << (trans ? ".trans" : "") << " lane " << lane << " register " << j;
        }
      }
    }
  }
}

// ---- cp.async ---------------------------------------------------------------------------------------

struct CopyParams {
  const float* src;  // [n]
  float* out;        // [n + 4 * 64]: copied values, then what was seen before the wait
  int n;
};
__global__ void async_copy(CopyParams p) {
  float* s = nuri::kernels::dynamic_smem<float>();  // [n] then [64]
  const int t = threadIdx.x;
  // Two groups: 16-byte copies of full vectors, then a 4-byte copy with src-size 0 (zero fill).
  for (int i = 4 * t; i < p.n; i += 4 * blockDim.x) cp_async<16>(s + i, p.src + i);
  cp_async_commit();
  cp_async<4>(s + p.n + t, p.src, 0);
  cp_async_commit();
  cp_async_wait<1>();  // the first group is complete, the second may not be
  cp_async_wait<0>();
  __syncthreads();
  for (int i = t; i < p.n + 64; i += blockDim.x) p.out[i] = s[i];
}

TEST(EmulatorPtx, CpAsyncDeliversDataAtTheWaitAndZeroFills) {
  const int n = 1024;
  std::vector<float> src(n);
  for (int i = 0; i < n; ++i) src[size_t(i)] = float(i) * 0.25f - 7.f;
  DeviceBuffer<float> dsrc(src), out(size_t(n + 64));
  NURI_LAUNCH(async_copy, dim3(1), dim3(64), (n + 64) * sizeof(float), nullptr,
              CopyParams{dsrc.get(), out.get(), n});
  const auto v = out.download();
  for (int i = 0; i < n; ++i) ASSERT_EQ(v[size_t(i)], src[size_t(i)]) << i;
  for (int i = n; i < n + 64; ++i) ASSERT_EQ(v[size_t(i)], 0.f) << "zero fill " << i;
}

}  // namespace
}  // namespace nuri::test
