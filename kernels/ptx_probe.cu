// Not part of the library: scripts/check-kernels.sh compiles this unit with nvcc so that every
// inline-PTX wrapper of ptx.cuh is assembled for sm_80 and sm_90 (the emulated build never sees
// the asm), and checks that the PTX holds the tensor-core and async-copy instructions.
#include "ptx.cuh"

namespace nuri::kernels {

struct PtxProbeParams {
  const __nv_bfloat16* gA;  // [16, 16] row-major
  const __nv_bfloat16* gB;  // [16, 8] row-major
  float* gD;                // [32, 8]: each lane's two results
};

__global__ void __launch_bounds__(32) ptx_probe_kernel(PtxProbeParams p) {
  __shared__ __align__(16) __nv_bfloat16 sA[16 * 16];  // [16, 16]
  __shared__ __align__(16) __nv_bfloat16 sB[16 * 8];   // [16, 8]
  const int lane = threadIdx.x;
  cp_async<16>(sA + lane * 8, p.gA + lane * 8);
  cp_async_16_or_zero(sA + lane * 8, p.gA + lane * 8, lane == 31);  // the ignore-src form
  if (lane < 16) cp_async<16>(sB + lane * 8, p.gB + lane * 8);
  cp_async<4>(sB, p.gB, 0);
  cp_async_commit();
  cp_async_wait<0>();
  named_barrier_arrive<1, 32>();  // a phase of its own (32 arrivals), then bar.sync's
  named_barrier_sync<2, 32>();
  __syncthreads();
  uint32_t rA[4], rB[2], rB1[1], rT[4];
  ldmatrix<4, false>(rA, sA + (lane % 16) * 16 + (lane / 16) * 8);
  ldmatrix<2, true>(rB, sB + (lane % 16) * 8);
  ldmatrix<1, false>(rB1, sB + (lane % 8) * 8);
  ldmatrix<4, true>(rT, sA + (lane % 16) * 16 + (lane / 16) * 8);
  uint32_t rX[4];  // rows XOR-swizzled by 16-byte chunk, as the 32-key attention tiles are
  ldmatrix_at<4, false>(rX, xor_in_place(smem_address(sA + (lane % 16) * 16), (lane / 16) * 16));
  rA[0] ^= rX[0] & 0x80008000u;
  const float c[4] = {0.f, 0.f, 0.f, 0.f};
  float d[4], e[4];
  mma_bf16_m16n8k16(d, rA, rB, c);
  const uint32_t rB2[2] = {rB1[0], rT[0]};
  mma_f16_m16n8k16(e, rT, rB2, d);
  p.gD[lane * 8 + 0] = d[0] + e[0];
  p.gD[lane * 8 + 1] = d[1] + e[1];
  p.gD[lane * 8 + 2] = d[2] + e[2];
  p.gD[lane * 8 + 3] = d[3] + e[3];
}

// The sm_90 wrappers: one producer thread fills a tile with a bulk copy under an mbarrier and
// the block reads it after the phase's wait (assembled for sm_90; on sm_80 the wrappers trap).
__global__ void __launch_bounds__(64) ptx_probe_sm90_kernel(const float* src, float* out) {
  __shared__ __align__(16) uint64_t bar[1];
  __shared__ __align__(16) float tile[256];
  if (threadIdx.x == 0) mbarrier_init(bar, 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    mbarrier_arrive_expect_tx(bar, sizeof(tile));
    cp_async_bulk(tile, src, sizeof(tile), bar);
  }
  mbarrier_wait_parity(bar, 0);
  for (int i = int(threadIdx.x); i < 256; i += 64) out[i] = tile[i];
  __syncthreads();
  if (threadIdx.x == 0) {
    mbarrier_expect_tx(bar, 0);
    mbarrier_arrive(bar, 1);
    mbarrier_inval(bar);
  }
}

// The tensor-map wrappers: a 2-d and a 3-d box loaded under an mbarrier, a 4-d one stored back.
struct PtxProbeTmaParams {
  CUtensorMap map2, map3, map4;
};
__global__ void __launch_bounds__(32) ptx_probe_tma_kernel(const __grid_constant__ PtxProbeTmaParams p) {
  __shared__ __align__(1024) unsigned char box[4096];
  __shared__ __align__(8) uint64_t bar[1];
  if (threadIdx.x == 0) {
    mbarrier_init(bar, 1);
    mbarrier_arrive_expect_tx(bar, 4096);
    const int32_t c2[2] = {0, 1};
    const int32_t c3[3] = {0, 1, 2};
    tma_load<2>(box, &p.map2, c2, bar);
    tma_load<3>(box + 2048, &p.map3, c3, bar);
  }
  mbarrier_wait_parity(bar, 0);
  fence_proxy_async();
  __syncthreads();
  if (threadIdx.x == 0) {
    const int32_t c4[4] = {0, 1, 2, 3};
    tma_store<4>(&p.map4, c4, box);
    cp_async_bulk_commit();
    cp_async_bulk_wait<0>();
  }
}

// The wgmma wrappers (sm_90a): A from shared memory and from registers, chained and waited for.
__global__ void __launch_bounds__(256, 1) ptx_probe_wgmma_kernel(float* out) {
  extern __shared__ __align__(1024) unsigned char tile[];
  float d64[32], d128[64];
  for (float& x : d64) x = 0.f;
  for (float& x : d128) x = 0.f;
  const uint64_t a = wgmma_desc(tile, 0, 1024, 128), b = wgmma_desc(tile + 8192, 0, 1024, 128);
  const uint32_t regs[4] = {threadIdx.x, threadIdx.x + 1, threadIdx.x + 2, threadIdx.x + 3};
  if (threadIdx.x < 128) {
    setmaxnreg<true, 240>();
  } else {
    setmaxnreg<false, 24>();
  }
  wgmma_fence();
  wgmma_ss<__nv_bfloat16, 64>(d64, a, b, false);
  wgmma_rs<__half, 128, true>(d128, regs, b, true);
  wgmma_ss<__nv_bfloat16, 64, true, true>(d64, a, b, true);
  wgmma_ss<__half, 32>(*reinterpret_cast<float(*)[16]>(d64), a, b, true);
  wgmma_commit();
  wgmma_wait<0>();
  float s = 0.f;
  for (float x : d64) s += x;
  for (float x : d128) s += x;
  out[threadIdx.x] = s;
}

}  // namespace nuri::kernels
