// Building blocks of nuri's sm_90a kernels (attention_*_sm90.cuh, matmul_sm90.cuh): wgmma
// descriptors of tiles TMA stored with the 128-byte swizzle, the aligned start of shared memory,
// the mbarrier pipeline between a TMA producer and two consumer warpgroups, and the driver's
// tensor-map call (host side).
#pragma once

#include "common.cuh"
#include "ptx.cuh"

namespace nuri::kernels::sm90 {

/// Descriptor of k-step ks (k = 16ks..16ks+15) of a K-major operand: the rows from `row0` of a
/// tile of kTileRows rows, stored as 128-byte swizzle atoms of 64 columns. Written as the step-0
/// descriptor plus a constant: the start address sits in the low 14 bits in 16-byte units and
/// never carries out (shared memory is under 256 KiB), so after unrolling the k-steps share one
/// descriptor computation and each adds an immediate.
template <int kTileRows>
__device__ __forceinline__ uint64_t kmajor_desc(const unsigned char* tile, int row0, int ks) {
  return wgmma_desc(tile + row0 * 128, 0, 1024, 128) +
         uint64_t(((ks / 4) * kTileRows * 128 + (ks % 4) * 32) >> 4);
}

/// Descriptor of k-step kb (rows 16kb..16kb+15) of a tile read MN-major (the row index is k):
/// 64-column atoms kTileRows · 128 bytes apart (LBO), 8-row groups 1024 bytes apart (SBO).
template <int kTileRows>
__device__ __forceinline__ uint64_t mnmajor_desc(const unsigned char* tile, int kb) {
  return wgmma_desc(tile, kTileRows * 128, 1024, 128) + uint64_t((kb * 16 * 128) >> 4);
}

/// The start of dynamic shared memory rounded up to 1024 bytes (the 128-byte swizzle repeats
/// every 1024 bytes of the shared address, and the tiles must start on a repeat).
__device__ __forceinline__ unsigned char* aligned_smem() {
  unsigned char* raw = dynamic_smem<unsigned char>();
#if defined(NURI_CUDA_EMULATION)
  const uint32_t addr = uint32_t(::nuri::emu::shared_address(raw));
#else
  const uint32_t addr = smem_address(raw);
#endif
  return raw + ((1024 - addr % 1024) % 1024);
}

/// The mbarriers of a block's TMA pipeline, in shared memory at `bars` (Words() of them): one
/// barrier for the tiles the block loads once, and per stage kParts "full" barriers (each part of
/// a stage's tiles may be waited for on its own) and one "empty" barrier on which every consumer
/// thread arrives when done with the stage. Tile `it` goes to stage it % kStages; its phases
/// follow from `it` alone, so producer and consumers need no other state.
template <int kStages, int kParts = 1>
struct Pipeline {
  static constexpr int kConsumerThreads = 256;  // two consumer warpgroups
  static constexpr int words() { return 1 + kStages * (kParts + 1); }
  uint64_t* bars;

  __device__ uint64_t* once() const { return bars; }
  __device__ uint64_t* full(int it, int part = 0) const {
    return bars + 1 + part * kStages + it % kStages;
  }
  __device__ uint64_t* empty(int it) const { return bars + 1 + kParts * kStages + it % kStages; }
  __device__ static unsigned phase(int it) { return unsigned((it / kStages) & 1); }

  /// Thread 0 initializes every barrier and makes the inits visible to the async proxy (the
  /// TMA units complete transactions on them); the whole block then meets at a barrier. A full
  /// barrier expects `full_arrivals`: the TMA-issuing thread's, plus those of producer threads
  /// that stage data into the stage with plain stores.
  __device__ void init(unsigned full_arrivals = 1) const {
    if (threadIdx.x == 0) {
      mbarrier_init(once(), 1);
      for (int s = 0; s < kStages; ++s) {
        for (int part = 0; part < kParts; ++part) mbarrier_init(full(s, part), full_arrivals);
        mbarrier_init(empty(s), kConsumerThreads);
      }
      fence_proxy_async();
    }
    __syncthreads();
  }
  /// Producer, before loading tile `it` (as the first part): waits until the consumers released
  /// the stage's previous tile (it - kStages, which completed phase it / kStages - 1).
  __device__ void wait_empty(int it) const {
    if (it >= kStages) mbarrier_wait_parity(empty(it), unsigned((it / kStages - 1) & 1));
  }
  /// Producer: `bytes` of TMA loads of part `part` of tile `it` will complete on the returned
  /// barrier.
  __device__ uint64_t* expect(int it, int part, unsigned bytes) const {
    mbarrier_arrive_expect_tx(full(it, part), bytes);
    return full(it, part);
  }
  /// Consumer: part `part` of tile `it` has landed.
  __device__ void wait_full(int it, int part = 0) const {
    mbarrier_wait_parity(full(it, part), phase(it));
  }
  /// Consumer thread: done with tile `it`'s stage.
  __device__ void release(int it) const { mbarrier_arrive(empty(it)); }
  /// Producer thread staging with plain stores: its part of tile `it` is in shared memory.
  __device__ void arrive_full(int it, int part = 0) const { mbarrier_arrive(full(it, part)); }
};

// ---- host side: the tensor maps -------------------------------------------------------------
// The driver's cuTensorMapEncodeTiled is looked up at run time (cudaGetDriverEntryPointByVersion),
// so nothing links libcuda and a build still loads on machines without a driver; the emulator
// provides the call itself.

using EncodeTiled = decltype(&cuTensorMapEncodeTiled);

inline EncodeTiled encode_tiled() {
#if defined(NURI_CUDA_EMULATION)
  return &cuTensorMapEncodeTiled;
#else
  static const EncodeTiled fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000,
                                                             cudaEnableDefault, &found);
    NURI_CHECK(err == cudaSuccess && found == cudaDriverEntryPointSuccess && f,
               "the sm_90a kernels need the driver's cuTensorMapEncodeTiled (CUDA 12 or later), "
               "which this driver does not provide; use NURI_ATTENTION=nuri and NURI_GEMM=nuri");
    return reinterpret_cast<EncodeTiled>(f);
  }();
  return fn;
#endif
}

}  // namespace nuri::kernels::sm90
