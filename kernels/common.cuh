// What every kernel file includes: the CUDA types, the device builtins (real under nvcc, emulated
// under g++ with NURI_CUDA_EMULATION), the launch helper and small device utilities.
//
// The one rule a reader must know: kernels are launched only through NURI_LAUNCH, never with raw
// <<<>>>, so that the same source runs on a GPU and on the emulator (../shared/EMULATION.md).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_check.h"
#include "nuri/core/error.h"

#if defined(NURI_CUDA_EMULATION)
#include "emu/emu.h"
#endif

namespace nuri::kernels {

/// The block's dynamic shared memory (the launch's `smem` bytes), 128-byte aligned: the swizzled
/// tile layouts XOR the shared-memory address (tc::Swizzle128B), so their tiles must start on a
/// 128-byte line.
#if defined(NURI_CUDA_EMULATION)
template <class T>
__device__ __forceinline__ T* dynamic_smem() {
  return reinterpret_cast<T*>(::nuri::emu::dynamic_shared_memory());
}
#else
template <class T>
__device__ __forceinline__ T* dynamic_smem() {
  extern __shared__ __align__(128) unsigned char nuri_dynamic_smem_[];
  return reinterpret_cast<T*>(nuri_dynamic_smem_);
}
#endif

/// Launches `kernel<<<grid, block, smem, stream>>>(args...)` (nvcc) or runs it on the emulator
/// (g++), then checks the launch error, naming the kernel. The only launch site in nuri.
template <class... Params, class... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
            cudaStream_t stream, Args&&... args) {
  NURI_CHECK(grid.x > 0 && grid.y > 0 && grid.z > 0, "launch of ", name,
             ": empty grid (a caller must skip empty work before launching)");
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::launch(name, grid, block, smem, stream,
                      [kernel, args...]() { kernel(args...); });
#else
  if (smem > 48 * 1024) {
    NURI_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  }
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
#endif
  const cudaError_t err = cudaGetLastError();
  NURI_CHECK(err == cudaSuccess, "launch of ", name, " (grid ", grid.x, "x", grid.y, "x", grid.z,
             ", block ", block.x, "x", block.y, "x", block.z, ", ", smem,
             " bytes of shared memory) failed: ", cudaGetErrorString(err));
}

#define NURI_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::nuri::kernels::launch(#kernel, kernel, grid, block, smem, stream, __VA_ARGS__)

// ---- counted memory accesses -----------------------------------------------------------------
//
// Plain loads and stores, which the emulator's performance counters (NURI_EMU_COUNTERS, emu.h)
// see as warp-wide requests: bank wavefronts for shared memory, 32-byte sectors for global. A
// plain C++ access compiles to the same instruction but is not counted; hot paths whose access
// pattern matters use these.

#if defined(NURI_CUDA_EMULATION)
#define NURI_MEM_SITE , ::nuri::emu::Site site = ::nuri::emu::Site::current()
#define NURI_MEM_COUNT(kind, p) \
  ::nuri::emu::count_access(::nuri::emu::Access::kind, p, int(sizeof(T)), site)
// The reductions below take their caller's site and pass it to the emulated calls inside
// them, so the emulator's errors and counters name the kernel's line, not the helper's.
#define NURI_CALLER_SITE , ::nuri::emu::Site site = ::nuri::emu::Site::current()
#define NURI_AT_SITE , site
#define NURI_SHFL_AT_SITE , 32, site
#else
#define NURI_MEM_SITE
#define NURI_MEM_COUNT(kind, p)
#define NURI_CALLER_SITE
#define NURI_AT_SITE
#define NURI_SHFL_AT_SITE
#endif

template <class T>
__device__ __forceinline__ T ld_shared(const T* p NURI_MEM_SITE) {
  NURI_MEM_COUNT(ld_shared, p);
  return *p;
}
template <class T>
__device__ __forceinline__ void st_shared(T* p, const T& v NURI_MEM_SITE) {
  NURI_MEM_COUNT(st_shared, p);
  *p = v;
}
template <class T>
__device__ __forceinline__ T ld_global(const T* p NURI_MEM_SITE) {
  NURI_MEM_COUNT(ld_global, p);
  return *p;
}
template <class T>
__device__ __forceinline__ void st_global(T* p, const T& v NURI_MEM_SITE) {
  NURI_MEM_COUNT(st_global, p);
  *p = v;
}
#undef NURI_MEM_SITE
#undef NURI_MEM_COUNT

// ---- storage types: bf16, f16 or f32 in memory, f32 in registers ------------------------------------

template <class T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}

template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}

// ---- reductions ---------------------------------------------------------------------------------

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpSize = 32;

/// Sum over the 32 lanes of a warp; every lane gets the total (float, or double).
template <class T>
__device__ __forceinline__ T warp_sum(T v NURI_CALLER_SITE) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(kFullMask, v, offset NURI_SHFL_AT_SITE);
  }
  return v;
}

/// Max over the 32 lanes of a warp; every lane gets it.
__device__ __forceinline__ float warp_max(float v NURI_CALLER_SITE) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset NURI_SHFL_AT_SITE) NURI_AT_SITE);
  }
  return v;
}

/// Sum over a 1-D block whose size is a multiple of 32 (at most 1024); every thread gets the
/// total. `scratch` is 32 values (float, or double) of shared memory that no other code uses
/// during the call. Contains two __syncthreads: every thread of the block must call it.
template <class T>
__device__ __forceinline__ T block_sum(T v, T* scratch NURI_CALLER_SITE) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  v = warp_sum(v NURI_AT_SITE);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();  // (its own line: two barriers of one site could not be told apart)
  T total = lane < warps ? scratch[lane] : T(0);
  total = warp_sum(total NURI_AT_SITE);
  __syncthreads();  // scratch may be reused by the caller right after
  return total;
}

#undef NURI_CALLER_SITE
#undef NURI_AT_SITE
#undef NURI_SHFL_AT_SITE

// ---- vector access and launch sizing --------------------------------------------------------------

/// N consecutive elements moved as one load/store (16 bytes when N = 16 / sizeof(T)).
template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

/// Whether ptr is a multiple of `bytes` (vector accesses need it).
inline bool aligned(const void* ptr, size_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

/// Threads that fill the device: grid-stride loops never need more. Emulated, a deliberately
/// small "device" (4 blocks of 256), so the tests' shapes make every grid-stride loop go round
/// more than once.
inline int64_t resident_threads() {
#if defined(NURI_CUDA_EMULATION)
  return 4 * 256;
#else
  static const int64_t threads = [] {
    int device = 0;
    NURI_CUDA_CHECK(cudaGetDevice(&device));
    cudaDeviceProp prop{};
    NURI_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    return int64_t(prop.multiProcessorCount) * prop.maxThreadsPerMultiProcessor;
  }();
  return threads;
#endif
}

/// Rounds a count up to a multiple of m.
__host__ __device__ constexpr int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }
__host__ __device__ constexpr int64_t ceil_div(int64_t n, int64_t m) { return (n + m - 1) / m; }

}  // namespace nuri::kernels
