// Tensor-core and async-copy instructions, only ever used through these wrappers: inline PTX
// under nvcc, the emulator's collective under g++ (kernels/emu, self-tested against a plain
// matrix product in tests/emu). Fragment layouts are those of ../shared/EMULATION.md.
#pragma once

#include <cuda.h>  // CUtensorMap

#include <type_traits>

#include "common.cuh"

namespace nuri::kernels {

#if defined(NURI_CUDA_EMULATION)
#define NURI_PTX_SITE , ::nuri::emu::Site site = ::nuri::emu::Site::current()
#define NURI_PTX_SITE_ONLY ::nuri::emu::Site site = ::nuri::emu::Site::current()
#else
#define NURI_PTX_SITE
#define NURI_PTX_SITE_ONLY
#endif

/// d = a·b + c for one m16n8k16 tile, bf16 inputs, f32 accumulate. a: 4 regs (A 16x16, row),
/// b: 2 regs (B 16x8, col), c and d: 4 floats.
__device__ __forceinline__ void mma_bf16_m16n8k16(float (&d)[4], const uint32_t (&a)[4],
                                                  const uint32_t (&b)[2],
                                                  const float (&c)[4] NURI_PTX_SITE) {
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::mma_m16n8k16(true, d, a, b, c, site);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#endif
}

/// As mma_bf16_m16n8k16 with f16 inputs.
__device__ __forceinline__ void mma_f16_m16n8k16(float (&d)[4], const uint32_t (&a)[4],
                                                 const uint32_t (&b)[2],
                                                 const float (&c)[4] NURI_PTX_SITE) {
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::mma_m16n8k16(false, d, a, b, c, site);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#endif
}

/// 2^x with the special-function unit (ex2.approx.ftz.f32: relative error about 2^-22,
/// subnormal inputs and results flushed to zero), as the softmax of attention needs it.
/// Emulated: exact exp2 with the same flush to zero, counted as one `sfu` instruction.
__device__ __forceinline__ float ex2_approx(float x NURI_PTX_SITE) {
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::count_instr(::nuri::emu::Instr::sfu, site);
  const float r = std::exp2(x);
  return r < 1.17549435e-38f ? 0.f : r;  // FLT_MIN: results below it are flushed
#else
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(r) : "f"(x));
  return r;
#endif
}

#if !defined(NURI_CUDA_EMULATION)
__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

#if !defined(NURI_CUDA_EMULATION)
/// ldmatrix.sync.aligned.m8n8.x{N}[.trans].shared.b16 from a shared-memory address `a`
/// (smem_address; 16-byte aligned; lanes 8j..8j+7 give matrix j's rows).
template <int N, bool Trans>
__device__ __forceinline__ void ldmatrix_at(uint32_t (&r)[N], uint32_t a) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
  if constexpr (N == 1 && !Trans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a));
  } else if constexpr (N == 1) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0]) : "r"(a));
  } else if constexpr (N == 2 && !Trans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(a));
  } else if constexpr (N == 2) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(a));
  } else if constexpr (!Trans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  }
}

/// a ^ bits, issued where it is written (xor.b32 in volatile asm): the compiler cannot keep
/// a ^ bits for a loop-invariant `a` in a register across the loop. Swizzled fragment addresses
/// take one XOR a load this way, instead of a register for each constant a kernel XORs with
/// (which spills where registers are short). bits == 0 costs nothing.
__device__ __forceinline__ uint32_t xor_in_place(uint32_t a, uint32_t bits) {
  if (bits == 0) return a;
  uint32_t r;
  asm volatile("xor.b32 %0, %1, %2;\n" : "=r"(r) : "r"(a), "r"(bits));
  return r;
}
#endif

/// ldmatrix.sync.aligned.m8n8.x{N}[.trans].shared.b16: `row` is this lane's row address in
/// shared memory (16-byte aligned; lanes 8j..8j+7 give matrix j's rows).
template <int N, bool Trans>
__device__ __forceinline__ void ldmatrix(uint32_t (&r)[N], const void* row NURI_PTX_SITE) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::ldmatrix(N, Trans, row, r, site);
#else
  ldmatrix_at<N, Trans>(r, smem_address(row));
#endif
}

/// cp.async of Bytes (4, 8: .ca; 16: .cg) from global to shared; only `src_bytes` are read and
/// the rest of the destination is zero-filled (src_bytes = 0 for out-of-range tiles).
template <int Bytes>
__device__ __forceinline__ void cp_async(void* smem_dst, const void* gmem_src,
                                         int src_bytes = Bytes NURI_PTX_SITE) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::cp_async(smem_dst, gmem_src, Bytes, src_bytes, site);
#else
  if constexpr (Bytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem_dst)),
                 "l"(gmem_src), "r"(src_bytes));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_address(smem_dst)),
                 "l"(gmem_src), "n"(Bytes), "r"(src_bytes));
  }
#endif
}

/// cp.async.cg of 16 bytes from global to shared, or 16 zero bytes where `ignore_src` (PTX's
/// operand of that name, sm_80 on): the source is then not read at all, so its address may lie
/// past the end of the tensor, and a tile load needs no per-chunk select of a safe one (with
/// cp_async's src_bytes = 0 it chose `g` for those rows: about 100 SASS instructions in the
/// 64-row forward's main loop at D 128).
__device__ __forceinline__ void cp_async_16_or_zero(void* smem_dst, const void* gmem_src,
                                                    bool ignore_src NURI_PTX_SITE) {
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::cp_async(smem_dst, gmem_src, 16, ignore_src ? 0 : 16, site);
#else
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %2, 0;\n"
      "cp.async.cg.shared.global [%0], [%1], 16, p;\n}\n" ::"r"(smem_address(smem_dst)),
      "l"(gmem_src), "r"(int(ignore_src)));
#endif
}

/// Closes the current group of cp.async copies.
__device__ __forceinline__ void cp_async_commit(NURI_PTX_SITE_ONLY) {
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::cp_async_commit(site);
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

/// Waits until at most N committed groups of this thread are still in flight. Other threads
/// see the data only after a __syncthreads that follows.
template <int N>
__device__ __forceinline__ void cp_async_wait(NURI_PTX_SITE_ONLY) {
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::cp_async_wait(N, site);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// ---- sm_90: mbarrier and bulk asynchronous copies ---------------------------------------------
// Semantics and the emulator's checks: kernels/emu/emu.h. `bar` is an 8-byte-aligned uint64_t in
// dynamic shared memory. Under nvcc they exist only for sm_90 and later; elsewhere they trap.

#if !defined(NURI_CUDA_EMULATION) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define NURI_PTX_SM90 1
#else
#define NURI_PTX_SM90 0
#endif

/// mbarrier.init: the barrier expects `count` arrivals per phase. Other threads may use it only
/// after a __syncthreads that follows.
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, unsigned count NURI_PTX_SITE) {
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::mbarrier_init(bar, count, site);
#elif NURI_PTX_SM90
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)), "r"(count)
               : "memory");
#else
  __trap();
#endif
}

/// mbarrier.inval: the 8 bytes become plain shared memory again.
__device__ __forceinline__ void mbarrier_inval(uint64_t* bar NURI_PTX_SITE) {
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::mbarrier_inval(bar, site);
#elif NURI_PTX_SM90
  asm volatile("mbarrier.inval.shared::cta.b64 [%0];\n" ::"r"(smem_address(bar)) : "memory");
#else
  __trap();
#endif
}

/// mbarrier.arrive (release, CTA scope) `count` times; returns the state token.
__device__ __forceinline__ uint64_t mbarrier_arrive(uint64_t* bar,
                                                    unsigned count = 1 NURI_PTX_SITE) {
#if defined(NURI_CUDA_EMULATION)
  return ::nuri::emu::mbarrier_arrive(bar, count, site);
#elif NURI_PTX_SM90
  uint64_t state;
  asm volatile("mbarrier.arrive.shared::cta.b64 %0, [%1], %2;\n"
               : "=l"(state)
               : "r"(smem_address(bar)), "r"(count)
               : "memory");
  return state;
#else
  __trap();
  return 0;
#endif
}

/// mbarrier.expect_tx: `bytes` more transaction bytes for the current phase.
__device__ __forceinline__ void mbarrier_expect_tx(uint64_t* bar, unsigned bytes NURI_PTX_SITE) {
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::mbarrier_expect_tx(bar, bytes, site);
#elif NURI_PTX_SM90
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(
                   smem_address(bar)),
               "r"(bytes)
               : "memory");
#else
  __trap();
#endif
}

/// mbarrier.arrive.expect_tx: expect_tx(bytes), then one arrival; returns the state token.
__device__ __forceinline__ uint64_t mbarrier_arrive_expect_tx(uint64_t* bar,
                                                              unsigned bytes NURI_PTX_SITE) {
#if defined(NURI_CUDA_EMULATION)
  return ::nuri::emu::mbarrier_arrive_expect_tx(bar, bytes, site);
#elif NURI_PTX_SM90
  uint64_t state;
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 %0, [%1], %2;\n"
               : "=l"(state)
               : "r"(smem_address(bar)), "r"(bytes)
               : "memory");
  return state;
#else
  __trap();
  return 0;
#endif
}

/// Waits (acquire, CTA scope) until the barrier's phase of parity `parity` has completed:
/// mbarrier.try_wait.parity in a loop.
__device__ __forceinline__ void mbarrier_wait_parity(uint64_t* bar, unsigned parity NURI_PTX_SITE) {
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::mbarrier_try_wait_parity(bar, parity, site);
#elif NURI_PTX_SM90
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "NURI_MBAR_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra NURI_MBAR_WAIT;\n"
      "}\n" ::"r"(smem_address(bar)),
      "r"(parity)
      : "memory");
#else
  __trap();
#endif
}

/// cp.async.bulk of `bytes` (a multiple of 16, both addresses 16-byte aligned) from global to
/// shared memory, completing `bytes` transactions on `bar`.
__device__ __forceinline__ void cp_async_bulk(void* smem_dst, const void* gmem_src,
                                              unsigned bytes, uint64_t* bar NURI_PTX_SITE) {
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::cp_async_bulk_global_to_shared(smem_dst, gmem_src, bytes, bar, site);
#elif NURI_PTX_SM90
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
          "r"(smem_address(smem_dst)),
      "l"(gmem_src), "r"(bytes), "r"(smem_address(bar))
      : "memory");
#else
  __trap();
#endif
}

/// cp.async.bulk.tensor load of the box at `coord` (innermost first; Rank 2 to 4) of the
/// tensor map into shared memory at `smem_dst` (128-byte aligned; 1024 for the 128-byte swizzle),
/// completing the box's bytes on `bar`. `map`: a __grid_constant__ kernel parameter.
template <int Rank>
__device__ __forceinline__ void tma_load(void* smem_dst, const CUtensorMap* map,
                                         const int32_t (&coord)[Rank], uint64_t* bar NURI_PTX_SITE) {
  static_assert(Rank >= 2 && Rank <= 4, "tensor maps of rank 2 to 4");
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::cp_async_bulk_tensor_load(smem_dst, map, Rank, coord, bar, site);
#elif NURI_PTX_SM90
  const uint32_t d = smem_address(smem_dst), b = smem_address(bar);
  const uint64_t m = reinterpret_cast<uint64_t>(map);
  if constexpr (Rank == 2) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(d),
        "l"(m), "r"(coord[0]), "r"(coord[1]), "r"(b)
        : "memory");
  } else if constexpr (Rank == 3) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(d),
        "l"(m), "r"(coord[0]), "r"(coord[1]), "r"(coord[2]), "r"(b)
        : "memory");
  } else {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(d),
        "l"(m), "r"(coord[0]), "r"(coord[1]), "r"(coord[2]), "r"(coord[3]), "r"(b)
        : "memory");
  }
#else
  __trap();
#endif
}

/// cp.async.bulk.tensor store of the box in shared memory at `smem_src` (as a load leaves it) to
/// the tensor at `coord`; elements outside the tensor are not written. Joins the open bulk
/// group: commit it, and wait for it before the source is written again or the kernel ends.
/// Generic-proxy writes to the source need fence_proxy_async() (and a barrier) before the issue.
template <int Rank>
__device__ __forceinline__ void tma_store(const CUtensorMap* map, const int32_t (&coord)[Rank],
                                          const void* smem_src NURI_PTX_SITE) {
  static_assert(Rank >= 2 && Rank <= 4, "tensor maps of rank 2 to 4");
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::cp_async_bulk_tensor_store(map, Rank, coord, smem_src, site);
#elif NURI_PTX_SM90
  const uint32_t s = smem_address(smem_src);
  const uint64_t m = reinterpret_cast<uint64_t>(map);
  if constexpr (Rank == 2) {
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.tile.bulk_group [%0, {%1, %2}], [%3];\n"
                 ::"l"(m), "r"(coord[0]), "r"(coord[1]), "r"(s)
                 : "memory");
  } else if constexpr (Rank == 3) {
    asm volatile(
        "cp.async.bulk.tensor.3d.global.shared::cta.tile.bulk_group [%0, {%1, %2, %3}], [%4];\n" ::
            "l"(m),
        "r"(coord[0]), "r"(coord[1]), "r"(coord[2]), "r"(s)
        : "memory");
  } else {
    asm volatile(
        "cp.async.bulk.tensor.4d.global.shared::cta.tile.bulk_group [%0, {%1, %2, %3, %4}], [%5];\n" ::
            "l"(m),
        "r"(coord[0]), "r"(coord[1]), "r"(coord[2]), "r"(coord[3]), "r"(s)
        : "memory");
  }
#else
  __trap();
#endif
}

/// cp.async.bulk.commit_group: closes this thread's open group of tensor stores.
__device__ __forceinline__ void cp_async_bulk_commit(NURI_PTX_SITE_ONLY) {
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::cp_async_bulk_commit(site);
#elif NURI_PTX_SM90
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#else
  __trap();
#endif
}

/// cp.async.bulk.wait_group N: at most N of this thread's committed store groups still pending
/// (their writes done). The emulator completes them whole (reads and writes) at this wait.
template <int N>
__device__ __forceinline__ void cp_async_bulk_wait(NURI_PTX_SITE_ONLY) {
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::cp_async_bulk_wait(N, site);
#elif NURI_PTX_SM90
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
#else
  __trap();
#endif
}

/// fence.proxy.async.shared::cta: orders this thread's generic-proxy shared-memory accesses
/// (plain stores, mbarrier.init) before later async-proxy ones (a tensor store or a wgmma
/// reading what threads wrote, a bulk copy completing on the barrier). The emulator checks for
/// a missing one (kernels/emu/emu.h).
__device__ __forceinline__ void fence_proxy_async(NURI_PTX_SITE_ONLY) {
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::fence_proxy_async(site);
#elif NURI_PTX_SM90
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#else
  __trap();
#endif
}

// ---- named barriers ----------------------------------------------------------------------------
// Barriers 1 to 15 of the block, each over `count` threads (a multiple of 32; 0 is
// __syncthreads'): a phase completes once `count` arrivals have come. Warp-wide: every thread of
// a warp executes them together. Semantics and the emulator's checks: kernels/emu/emu.h.

/// bar.sync Id, Count: arrives, then waits for the phase to complete. Id and Count are
/// immediates, so ptxas reserves only the barriers a kernel names.
template <unsigned Id, unsigned Count>
__device__ __forceinline__ void named_barrier_sync(NURI_PTX_SITE_ONLY) {
  static_assert(Id >= 1 && Id <= 15 && Count % 32 == 0 && Count > 0, "barriers 1..15, whole warps");
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::named_barrier(Id, Count, true, site);
#else
  asm volatile("bar.sync %0, %1;\n" ::"n"(Id), "n"(Count) : "memory");
#endif
}

/// bar.arrive Id, Count: arrives without waiting (what precedes it happens before the phase's
/// end, for the threads that wait at it).
template <unsigned Id, unsigned Count>
__device__ __forceinline__ void named_barrier_arrive(NURI_PTX_SITE_ONLY) {
  static_assert(Id >= 1 && Id <= 15 && Count % 32 == 0 && Count > 0, "barriers 1..15, whole warps");
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::named_barrier(Id, Count, false, site);
#else
  asm volatile("bar.arrive %0, %1;\n" ::"n"(Id), "n"(Count) : "memory");
#endif
}

// ---- sm_90a: warpgroup matrix multiply-accumulate (wgmma) -------------------------------------
// Semantics and the emulator's checks: kernels/emu/emu.h. Issued by all 128 threads of a
// warpgroup; D is m64 x N f32 (this thread: N / 2 floats, d[4j + 2h + i] = D[16w + g + 8h][8j +
// 2t + i]); A is 64 x 16 from a shared-memory descriptor (wgmma_ss) or this thread's m16n8k16 A
// fragment of its warp's 16 rows (wgmma_rs); B is 16 x N from a descriptor; both K-major. The
// operand lists below are written out per N (32, 64, 128) and type. Under nvcc they need
// sm_90a; elsewhere they trap.

#if !defined(NURI_CUDA_EMULATION) && defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define NURI_PTX_SM90A 1
#else
#define NURI_PTX_SM90A 0
#endif

/// A K-major shared-memory matrix descriptor: `start` (16-byte aligned), the leading and stride
/// byte offsets (k-neighbouring 8 x 16-byte core matrices, and 8-row groups), and the swizzle
/// (0 none, 32, 64 or 128 bytes).
__device__ __forceinline__ uint64_t wgmma_desc(const void* start, uint32_t lbo, uint32_t sbo,
                                               int swizzle_bytes) {
#if defined(NURI_CUDA_EMULATION)
  const uint64_t addr = ::nuri::emu::shared_address(start);
#else
  const uint64_t addr = smem_address(start);
#endif
  const uint64_t mode = swizzle_bytes == 128 ? 1 : swizzle_bytes == 64 ? 2 : swizzle_bytes == 32 ? 3 : 0;
  return ((addr >> 4) & 0x3fff) | (uint64_t((lbo >> 4) & 0x3fff) << 16) |
         (uint64_t((sbo >> 4) & 0x3fff) << 32) | (mode << 62);
}

/// wgmma.fence: this thread's accumulator and A registers are ready for the next wgmmas.
__device__ __forceinline__ void wgmma_fence(NURI_PTX_SITE_ONLY) {
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::wgmma_fence(site);
#elif NURI_PTX_SM90A
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}

/// wgmma.commit_group: closes the group of this thread's wgmmas issued since the last commit.
__device__ __forceinline__ void wgmma_commit(NURI_PTX_SITE_ONLY) {
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::wgmma_commit(site);
#elif NURI_PTX_SM90A
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}

/// wgmma.wait_group N: at most N committed groups still in flight; their results are in the
/// registers.
template <int N>
__device__ __forceinline__ void wgmma_wait(NURI_PTX_SITE_ONLY) {
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::wgmma_wait(N, site);
#elif NURI_PTX_SM90A
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#else
  __trap();
#endif
}

/// setmaxnreg: this warpgroup's registers per thread become Count (Inc: a consumer taking
/// registers, from 24 up to 256; else a producer giving them back). Every thread of the
/// warpgroup executes it.
template <bool Inc, int Count>
__device__ __forceinline__ void setmaxnreg(NURI_PTX_SITE_ONLY) {
  static_assert(Count >= 24 && Count <= 256 && Count % 8 == 0, "24..256 in steps of 8");
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::setmaxnreg(Inc, Count, site);
#elif NURI_PTX_SM90A
  if constexpr (Inc) {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(Count));
  } else {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(Count));
  }
#else
  __trap();
#endif
}

/// D = A·B + (scale_d ? D : 0) with A and B from descriptors; TransA / TransB: the operand is
/// MN-major (imm-trans-a / imm-trans-b) rather than K-major.
template <class T, int N, bool TransA = false, bool TransB = false>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t a_desc, uint64_t b_desc,
                                         bool scale_d NURI_PTX_SITE) {
  static_assert(N == 32 || N == 64 || N == 128 || N == 256,
                "wgmma_ss wrappers exist for N = 32, 64, 128, 256");
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::wgmma_mma_async(std::is_same_v<T, __nv_bfloat16>, N, d, nullptr, a_desc, TransA,
                               b_desc, TransB, scale_d, site);
#elif NURI_PTX_SM90A
    if constexpr (N == 32 && std::is_same_v<T, __nv_bfloat16>) {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, %19, %20;\n}\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
          : "l"(a_desc), "l"(b_desc), "r"(int(scale_d)), "n"(int(TransA)), "n"(int(TransB)));
    } else if constexpr (N == 32 && std::is_same_v<T, __half>) {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, %19, %20;\n}\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
          : "l"(a_desc), "l"(b_desc), "r"(int(scale_d)), "n"(int(TransA)), "n"(int(TransB)));
    } else if constexpr (N == 64 && std::is_same_v<T, __nv_bfloat16>) {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, %35, %36;\n}\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
          : "l"(a_desc), "l"(b_desc), "r"(int(scale_d)), "n"(int(TransA)), "n"(int(TransB)));
    } else if constexpr (N == 64 && std::is_same_v<T, __half>) {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, %35, %36;\n}\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
          : "l"(a_desc), "l"(b_desc), "r"(int(scale_d)), "n"(int(TransA)), "n"(int(TransB)));
    } else if constexpr (N == 128 && std::is_same_v<T, __nv_bfloat16>) {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, %67, %68;\n}\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
          : "l"(a_desc), "l"(b_desc), "r"(int(scale_d)), "n"(int(TransA)), "n"(int(TransB)));
    } else if constexpr (N == 128 && std::is_same_v<T, __half>) {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, %67, %68;\n}\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
          : "l"(a_desc), "l"(b_desc), "r"(int(scale_d)), "n"(int(TransA)), "n"(int(TransB)));
    } else if constexpr (N == 256 && std::is_same_v<T, __nv_bfloat16>) {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, %131, %132;\n}\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
          : "l"(a_desc), "l"(b_desc), "r"(int(scale_d)), "n"(int(TransA)), "n"(int(TransB)));
    } else if constexpr (N == 256 && std::is_same_v<T, __half>) {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, %131, %132;\n}\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
          : "l"(a_desc), "l"(b_desc), "r"(int(scale_d)), "n"(int(TransA)), "n"(int(TransB)));
    }
#else
  __trap();
#endif
}

/// D = A·B + (scale_d ? D : 0) with A from this thread's registers (the m16n8k16 A fragment of
/// its warp's rows 16w..16w+15) and B from a descriptor (TransB: N-major).
template <class T, int N, bool TransB = false>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b_desc,
                                         bool scale_d NURI_PTX_SITE) {
  static_assert(N == 32 || N == 64 || N == 128, "wgmma wrappers exist for N = 32, 64, 128");
#if defined(NURI_CUDA_EMULATION)
  ::nuri::emu::wgmma_mma_async(std::is_same_v<T, __nv_bfloat16>, N, d, a, 0, false, b_desc, TransB,
                               scale_d, site);
#elif NURI_PTX_SM90A
    if constexpr (N == 32 && std::is_same_v<T, __nv_bfloat16>) {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, %22;\n}\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(int(scale_d)), "n"(int(TransB)));
    } else if constexpr (N == 32 && std::is_same_v<T, __half>) {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, %22;\n}\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(int(scale_d)), "n"(int(TransB)));
    } else if constexpr (N == 64 && std::is_same_v<T, __nv_bfloat16>) {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(int(scale_d)), "n"(int(TransB)));
    } else if constexpr (N == 64 && std::is_same_v<T, __half>) {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(int(scale_d)), "n"(int(TransB)));
    } else if constexpr (N == 128 && std::is_same_v<T, __nv_bfloat16>) {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(int(scale_d)), "n"(int(TransB)));
    } else if constexpr (N == 128 && std::is_same_v<T, __half>) {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(int(scale_d)), "n"(int(TransB)));
    }
#else
  __trap();
#endif
}

}  // namespace nuri::kernels
