// The CUDA execution model on the CPU, as kernel code compiled by g++ sees it (the device
// builtins). Included by kernels/common.cuh when NURI_CUDA_EMULATION is defined; the scheduler,
// the race-detection hooks and the runtime subset are in scheduler.cpp and runtime.cpp.
//
// A block's threads are fibers on one OS thread; a fiber runs until a barrier or a warp
// collective, where it waits until every participant has arrived (../shared/EMULATION.md).
// Collectives follow the PTX ISA's definitions exactly; misuse (a lane missing from the mask,
// lanes disagreeing, barrier divergence) is an error that names the kernel, block, thread and
// source line, never undefined behaviour.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <source_location>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

// g++ already sees __global__/__device__/__host__/__forceinline__ as nothing (host_defines.h).
// A static __shared__ array is block-private because one OS thread runs one block at a time.
#undef __shared__
#define __shared__ static thread_local
// A kernel parameter in constant space (a CUtensorMap) is an ordinary by-value parameter here.
#undef __grid_constant__
#define __grid_constant__
// Launch bounds only guide nvcc's register allocation.
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace nuri::emu {

using Site = std::source_location;

// ---- launch ---------------------------------------------------------------------------------------

/// Runs `body` once per thread of every block of `grid` (in a seeded random block order) and
/// returns when all have finished. Throws nuri::Error on any misuse the emulator detects.
void launch(const char* name, dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t stream,
            const std::function<void()>& body);

/// Seed of the block order: NURI_EMU_SEED from the environment, else fixed; each launch mixes in
/// its launch number (counted from the start of the process, or from the last set_base_seed),
/// and errors print the launch's seed.
uint64_t base_seed();
/// Sets the base seed and restarts the launch count, so the same sequence of launches replays.
void set_base_seed(uint64_t seed);

// ---- per-thread state ---------------------------------------------------------------------------

// By value: the scheduler writes these, and a reference read later would look like a race.
uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();
void* dynamic_shared_memory();

// ---- barriers and warp collectives --------------------------------------------------------------

void syncthreads(Site site);
void syncwarp(unsigned mask, Site site);

enum class Shfl { idx, up, down, bfly };
uint32_t shfl(Shfl mode, unsigned mask, uint32_t value, int lane_arg, int width, Site site);

enum class Vote { ballot, any, all };
unsigned vote(Vote mode, unsigned mask, bool predicate, Site site);

/// D = A·B + C for one m16n8k16 tile with fp32 accumulation; a, b hold the packed 16-bit inputs
/// of this lane (bf16 when `bf16`, else f16) in the PTX fragment layout.
void mma_m16n8k16(bool bf16, float d[4], const uint32_t a[4], const uint32_t b[2],
                  const float c[4], Site site);

/// ldmatrix.sync.aligned.m8n8.x{count}[.trans].shared.b16: `row` is this lane's row address
/// (used by lanes < 8·count), `out` receives `count` registers.
void ldmatrix(int count, bool trans, const void* row, uint32_t* out, Site site);

/// cp.async of `bytes` (4, 8 or 16) with `src_bytes` <= bytes read (the rest zero-filled).
void cp_async(void* dst, const void* src, int bytes, int src_bytes, Site site);
void cp_async_commit(Site site);
/// Completes every committed group of this thread except the newest `pending` ones.
void cp_async_wait(int pending, Site site);

// ---- named barriers --------------------------------------------------------------------------
//
// bar.sync id, count and bar.arrive id, count (barrier.sync.aligned / barrier.arrive.aligned) on
// the named barriers 1 to 15 (0 is __syncthreads'). A phase completes once `count` arrivals have
// come, each thread's bar.sync or bar.arrive counting one (the hardware counts whole warps: a
// thread that both arrives and syncs in one phase counts twice, as FlashAttention-3's warpgroup
// scheduler does); bar.sync then waits for its phase, bar.arrive does not. An arrival releases,
// the completed phase's waiters acquire. Arrivals may be left over when the block ends. Errors:
// an id outside 1..15, a count that is not a positive multiple of 32 within the block, arrivals
// of one phase disagreeing on the count, a phase completing with the threads of some warp
// arriving different numbers of times (the instructions are warp-wide), and a bar.sync that can
// never complete (the deadlock report names it and its arrivals).
void named_barrier(unsigned id, unsigned count, bool wait, Site site);

// ---- mbarrier and bulk asynchronous copies (sm_90) ------------------------------------------
//
// An mbarrier is 8 bytes of (dynamic) shared memory, 8-byte aligned. Phase k completes when
// every expected arrival has arrived and the transaction count (bytes announced with expect_tx
// minus bytes the bulk copies completed) is back at 0; the barrier then starts phase k + 1 with
// the same expected count. try_wait.parity(p) returns once the phase of parity p has completed
// (the current phase's parity is no longer p); the emulator parks the thread until then, and a
// phase that can no longer complete (every thread waits or has exited, no copy in flight) is an
// error naming the barrier, its pending arrivals and bytes. Arrivals and copies happen before
// the waits they release (release / acquire at CTA scope). Misuse is an error: an address that
// is not this block's shared memory or not 8-byte aligned, use before init or after inval, init
// of a live barrier, more arrivals than a phase expects, the 8 bytes overwritten by a plain
// store, a block ending with bulk copies in flight. Under TSan, using a barrier without a
// happens-before edge from its init (no __syncthreads after it) is a race on its 8 bytes.

void mbarrier_init(void* bar, unsigned count, Site site);
void mbarrier_inval(void* bar, Site site);
/// Arrives `count` times; returns the state token (the phase it arrived in).
uint64_t mbarrier_arrive(void* bar, unsigned count, Site site);
/// Announces `bytes` more transaction bytes for the current phase.
void mbarrier_expect_tx(void* bar, unsigned bytes, Site site);
/// expect_tx(bytes), then one arrival.
uint64_t mbarrier_arrive_expect_tx(void* bar, unsigned bytes, Site site);
/// Waits until the phase of parity `parity` has completed; returns true (never times out).
bool mbarrier_try_wait_parity(void* bar, unsigned parity, Site site);
/// cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes: `bytes` (a multiple of
/// 16; both addresses 16-byte aligned) from global to this block's shared memory, completing
/// `bytes` transactions on `bar`. The destination is poisoned at issue and written when the copy
/// completes, by the issuing thread's copy unit: reading it before the phase's wait is a race.
void cp_async_bulk_global_to_shared(void* dst, const void* src, unsigned bytes, void* bar,
                                    Site site);

/// cp.async.bulk.tensor.{rank}d.shared::cluster.global.tile.mbarrier::complete_tx::bytes: the box
/// of the tensor map `tmap` (made by the emulated cuTensorMapEncodeTiled) whose first element is
/// at `coord` (innermost first; may lie outside the tensor) into shared memory at `dst` (128-byte
/// aligned), densely, innermost dimension contiguous, with the map's swizzle applied to the
/// byte offsets from the start of dynamic shared memory (16-byte chunk index XOR the 128-byte
/// row index, over the swizzle's span); elements outside the tensor are 0 (or NaN with the
/// NaN fill). Completes the box's bytes on `bar` when the copy lands, as cp_async_bulk does.
void cp_async_bulk_tensor_load(void* dst, const void* tmap, int rank, const int32_t* coord,
                               void* bar, Site site);
/// cp.async.bulk.tensor.{rank}d.global.shared::cta.tile.bulk_group: the box at `src` (laid out
/// as a load would leave it) to the tensor at `coord`; elements outside the tensor are not
/// written. Joins this thread's open bulk group; the copy reads shared memory and writes global
/// memory when a bulk wait completes its group, which fails if the source changed since the
/// issue (a GPU may read it any time in between).
void cp_async_bulk_tensor_store(const void* tmap, int rank, const int32_t* coord, const void* src,
                                Site site);
/// cp.async.bulk.commit_group and cp.async.bulk.wait_group[.read] N: completes every committed
/// group of this thread's tensor stores except the newest `pending`.
void cp_async_bulk_commit(Site site);
void cp_async_bulk_wait(int pending, Site site);
/// The alignment in bytes the emulated cuTensorMapEncodeTiled asks of the global address and
/// the strides of a swizzled map; returns the one it replaces. 16 (the default) is cuda.h's
/// rule. The CUDA Programming Guide's TMA table asks 128 for swizzled maps; set 128 to model a
/// driver that holds to that (a refusal is CUDA_ERROR_INVALID_VALUE, as for any other rule), so
/// that code declining such maps can be tested. Which rule an H100's driver keeps, only an H100
/// shows.
unsigned set_swizzled_map_alignment(unsigned bytes);

/// fence.proxy.async.shared::cta. Shared memory has two proxies: plain loads and stores (the
/// generic proxy) and the asynchronous units (the bulk copies, tensor stores, wgmma's operand
/// reads). A plain store becomes visible to the async proxy only through a fence.proxy.async
/// after it (then the barrier that orders the fence before the async operation's issue). The
/// emulator keeps the async proxy's view of shared memory: it is refreshed from shared memory
/// at each fence (by any thread of the block, so it cannot tell which thread's stores a fence
/// covers) and by the async proxy's own writes. Errors: a wgmma operand or a tensor store's
/// source whose bytes differ from that view (a plain store with no fence after it), and a bulk
/// copy on an mbarrier whose init was not followed by a fence.proxy.async of the initializing
/// thread (the CUDA guide's rule for making the init visible to the copy's complete_tx).
void fence_proxy_async(Site site);

// ---- wgmma (sm_90a warpgroup matrix multiply-accumulate) -------------------------------------
//
// wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{bf16,f16}, issued by the 128 threads of a
// warpgroup (threads 128w..128w+127 of the block) together: D (64 x n, f32) = A (64 x 16) · B
// (16 x n) + (scale_d ? D : 0). A comes from registers (each warp's 16 rows in the m16n8k16 A
// fragment) or a shared-memory descriptor, B from a descriptor; a descriptor's operand is
// K-major (consecutive k of a row are consecutive in memory) or, with the transpose flag
// (imm-trans-a / imm-trans-b), MN-major, in the PTX ISA's canonical layouts (wgmma.cpp spells
// them out): start, the leading and stride byte offsets, and swizzle none / 32 / 64 / 128 bytes
// (the same address XOR as the tensor maps', from the start of dynamic shared memory). Thread (warp w, lane 4g + t)
// holds D[16w + g + 8h][8j + 2t + i] in d[4j + 2h + i]. The products are exact and summed in
// order over k in f32, as mma.sync's. Asynchronous as on the GPU: the results reach the
// registers at the wgmma.wait_group that completes their group; until then the registers hold
// NaN (a read before the wait shows), and a later wgmma on the same registers chains on the
// pending result. Errors: a wgmma.mma_async with no wgmma.fence since the thread's last
// wait_group (or the start), accumulator or A-fragment registers written while their wgmma is
// in flight, a register a wgmma reads written after the last fence (for registers an earlier
// wgmma of the thread used: the emulator remembers their bytes at each fence and issue), a
// warpgroup whose threads disagree (shape, type, descriptors, site), a block whose size is not
// a whole number of warpgroups, a descriptor reaching outside shared memory, and a thread exiting
// with results it never waited for.

void wgmma_fence(Site site);
void wgmma_commit(Site site);
void wgmma_wait(int pending, Site site);
void wgmma_mma_async(bool bf16, int n, float* d, const uint32_t* a_regs, uint64_t a_desc,
                     bool a_mn_major, uint64_t b_desc, bool b_mn_major, bool scale_d, Site site);
/// The shared-memory address a descriptor holds for `p` (its offset from the start of dynamic
/// shared memory).
uint32_t shared_address(const void* p);

/// setmaxnreg.{inc,dec}.sync.aligned.u32 count: the account of registers (the emulator has no
/// register file to move): count in [24, 256] and a multiple of 8; the 128 threads of a
/// warpgroup make every call, and agree on it (a thread that made fewer calls than its
/// warpgroup is an error at the block's end); .inc never lowers and .dec never raises the
/// warpgroup's count. The registers come from the block's pool, what it was launched with:
/// setmaxnreg_launch_count a thread (a warpgroup holds that until its first call). .dec returns
/// registers to the pool; .inc waits, as on the GPU, until the pool has them, so a split the
/// pool cannot supply (24 + 240 + 240 fits a 384-thread block's 3 x 168 exactly; 32 + 240 + 240
/// does not, nor 240 + 240 beside a warpgroup that keeps its 168) ends in the emulator's
/// deadlock report naming the .inc.
void setmaxnreg(bool inc, unsigned count, Site site);
/// The registers a thread of a block of `threads_per_block` holds at launch in a kernel that
/// uses setmaxnreg: the most that block size allows (65536 / threads, down to a multiple of 8,
/// at most 256), which ptxas gives a kernel with __launch_bounds__(threads, 1) and setmaxnreg
/// (168 for 384 threads; kernels/sm90.h's setmaxnreg_launch_count, which this returns;
/// scripts/check-kernels.sh fails a kernel compiled to fewer, whose pool would be smaller).
unsigned setmaxnreg_launch_count(int threads_per_block);

// ---- performance counters (opt-in: NURI_EMU_COUNTERS=1, or set_counters(true)) ---------------
//
// What a GPU profiler would call shared-memory wavefronts, global-memory sectors and executed
// warp instructions, counted from the accesses and instructions the kernel makes here. Accesses
// of the lanes of one warp are grouped into one warp-wide request by (warp, source site, the
// lane's how-many-th execution of that site), which is the instruction a GPU would issue once
// for the warp. Counted: ldmatrix, cp.async and mma through kernels/ptx.cuh, shuffles, votes,
// barriers and atomics, and the loads and stores kernels make through the ld_shared / st_shared /
// ld_global / st_global helpers of kernels/common.cuh (a plain C++ access is not seen).

/// Memory accesses with a cost model. Shared: bank wavefronts of a warp-wide request (32 banks of
/// 4 bytes; a request of 8-byte lanes goes in two half-warp phases, 16-byte lanes and ldmatrix
/// in four quarter-warp phases; a phase takes as many wavefronts as the most distinct words any
/// one bank holds). Global: distinct 32-byte sectors a warp-wide request touches.
enum class Access : uint8_t {
  ld_shared, st_shared, ldmatrix, cp_async_shared,  // shared memory: wavefronts
  ld_global, st_global, cp_async_global,            // global memory: 32-byte sectors
  count
};
/// Warp-wide instructions (one per warp that executes it, as a GPU counts issued instructions).
enum class Instr : uint8_t {
  mma, ldmatrix, shfl, vote, syncwarp, barrier, atomic, sfu, cp_async, cp_async_commit,
  cp_async_wait, ld_shared, st_shared, ld_global, st_global, count
};
constexpr int kAccessKinds = int(Access::count);
constexpr int kInstrKinds = int(Instr::count);
const char* name(Access a);
const char* name(Instr i);
inline bool is_shared(Access a) { return a <= Access::cp_async_shared; }

/// Warp-wide requests of one kind, the wavefronts (shared) or sectors (global) they took, and
/// the fewest the same bytes could have taken (a conflict-free, fully coalesced request).
struct MemCounter {
  uint64_t requests = 0, actual = 0, minimum = 0;
  uint64_t excess() const { return actual - minimum; }
  MemCounter& operator+=(const MemCounter& o) {
    requests += o.requests;
    actual += o.actual;
    minimum += o.minimum;
    return *this;
  }
};

struct Counters {
  MemCounter mem[kAccessKinds];
  uint64_t instr[kInstrKinds] = {};
  const MemCounter& operator[](Access a) const { return mem[int(a)]; }
  uint64_t operator[](Instr i) const { return instr[int(i)]; }
  Counters& operator+=(const Counters& o);
};

/// One source line's requests of one kind within a launch (where the conflicts are).
struct SiteCounter {
  std::string site;  // file:line
  Access access;
  MemCounter mem;
};

struct LaunchCounters {
  std::string kernel;
  dim3 grid, block;  // grid.x == 0: a sum over launches
  size_t smem = 0;   // dynamic shared memory a block, bytes
  Counters total;
  std::vector<SiteCounter> sites;  // every site with memory requests, most excess first
};

/// Turns counting on or off for later launches. Off by default unless NURI_EMU_COUNTERS is set
/// (to anything but 0), which also prints each launch's counters to stderr.
void set_counters(bool on);
bool counters_enabled();
/// The counted launches since the last call, oldest first (at most the newest 100000 are kept).
std::vector<LaunchCounters> take_counters();
/// The sum over launches whose kernel name contains `kernel` (all when empty).
Counters sum_counters(const std::vector<LaunchCounters>& launches, std::string_view kernel = {});
/// A few lines for a person: requests, wavefronts and sectors against their minimum, the
/// instruction counts, and the sites with excess.
std::string format_counters(const LaunchCounters& c);

/// Hooks for the wrappers (kernels/ptx.cuh, kernels/common.cuh); no-ops while counting is off.
void count_access(Access kind, const void* addr, int bytes, Site site);
void count_instr(Instr kind, Site site);

// ---- max and min of unwritten memory --------------------------------------------------------

/// Whether `v` is unwritten memory's poison (0xff bytes) read as f32, or read as bf16 or f16 and
/// widened, with either sign (a negation or a negative scale flips it); arithmetic keeps a NaN's
/// payload, so values computed from the poison are it too. No computation makes these NaNs
/// otherwise (an invalid operation's NaN is 0xffc00000).
inline bool is_unwritten_poison(float v) {
  const uint32_t u = std::bit_cast<uint32_t>(v) & 0x7fffffffu;
  return u == 0x7fffffffu || u == 0x7fff0000u || u == 0x7fffe000u;
}
/// fmaxf and fminf (max and min of floats) return the other operand for a NaN, so unwritten
/// memory in a reduction would vanish instead of poisoning its result: an operand that is the
/// poison is an error naming the call, in a kernel (returns in host code, where the bytes mean
/// nothing).
void unwritten_min_max(bool is_max, float a, float b, Site site);
inline float checked_max(float a, float b, Site site) {
  if (is_unwritten_poison(a) || is_unwritten_poison(b)) [[unlikely]] {
    unwritten_min_max(true, a, b, site);
  }
  return std::fmax(a, b);
}
inline float checked_min(float a, float b, Site site) {
  if (is_unwritten_poison(a) || is_unwritten_poison(b)) [[unlikely]] {
    unwritten_min_max(false, a, b, site);
  }
  return std::fmin(a, b);
}

// ---- helpers for the builtins below ---------------------------------------------------------

template <class T>
T shfl_any(Shfl mode, unsigned mask, T value, int arg, int width, Site site) {
  static_assert(std::is_trivially_copyable_v<T> && (sizeof(T) == 4 || sizeof(T) == 8 ||
                                                    sizeof(T) == 2),
                "shuffles move 16-, 32- or 64-bit values");
  if constexpr (sizeof(T) == 8) {  // two 32-bit shuffles, as the CUDA headers do
    uint32_t w[2];
    std::memcpy(w, &value, 8);
    w[0] = shfl(mode, mask, w[0], arg, width, site);
    w[1] = shfl(mode, mask, w[1], arg, width, site);
    std::memcpy(&value, w, 8);
  } else {
    uint32_t w = 0;
    std::memcpy(&w, &value, sizeof(T));
    w = shfl(mode, mask, w, arg, width, site);
    std::memcpy(&value, &w, sizeof(T));
  }
  return value;
}

}  // namespace nuri::emu

// ---- the builtins kernels use -------------------------------------------------------------------

#define threadIdx (::nuri::emu::thread_idx())
#define blockIdx (::nuri::emu::block_idx())
#define blockDim (::nuri::emu::block_dim())
#define gridDim (::nuri::emu::grid_dim())

inline void __syncthreads(::nuri::emu::Site site = ::nuri::emu::Site::current()) {
  ::nuri::emu::syncthreads(site);
}
inline void __syncwarp(unsigned mask = 0xffffffffu,
                       ::nuri::emu::Site site = ::nuri::emu::Site::current()) {
  ::nuri::emu::syncwarp(mask, site);
}

template <class T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32,
              ::nuri::emu::Site site = ::nuri::emu::Site::current()) {
  return ::nuri::emu::shfl_any(::nuri::emu::Shfl::idx, mask, v, src_lane, width, site);
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32,
                 ::nuri::emu::Site site = ::nuri::emu::Site::current()) {
  return ::nuri::emu::shfl_any(::nuri::emu::Shfl::up, mask, v, int(delta), width, site);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                   ::nuri::emu::Site site = ::nuri::emu::Site::current()) {
  return ::nuri::emu::shfl_any(::nuri::emu::Shfl::down, mask, v, int(delta), width, site);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                  ::nuri::emu::Site site = ::nuri::emu::Site::current()) {
  return ::nuri::emu::shfl_any(::nuri::emu::Shfl::bfly, mask, v, lane_mask, width, site);
}
inline unsigned __ballot_sync(unsigned mask, int pred,
                              ::nuri::emu::Site site = ::nuri::emu::Site::current()) {
  return ::nuri::emu::vote(::nuri::emu::Vote::ballot, mask, pred != 0, site);
}
inline int __any_sync(unsigned mask, int pred,
                      ::nuri::emu::Site site = ::nuri::emu::Site::current()) {
  return int(::nuri::emu::vote(::nuri::emu::Vote::any, mask, pred != 0, site));
}
inline int __all_sync(unsigned mask, int pred,
                      ::nuri::emu::Site site = ::nuri::emu::Site::current()) {
  return int(::nuri::emu::vote(::nuri::emu::Vote::all, mask, pred != 0, site));
}

// Atomics: real (relaxed) atomics, because blocks could run on several OS threads and because
// ThreadSanitizer must see them as atomic; relaxed, because CUDA's atomics order nothing.
template <class T>
inline T __nuri_atomic_fetch_add(T* p, T v) {
  if constexpr (std::is_floating_point_v<T>) {
    // A compare-and-swap loop on the bit pattern: ThreadSanitizer sees integer atomics as
    // atomic, but not libstdc++'s generic floating-point ones.
    using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    U* u = reinterpret_cast<U*>(p);
    U old = __atomic_load_n(u, __ATOMIC_RELAXED);
    for (;;) {
      T f;
      std::memcpy(&f, &old, sizeof f);
      const T sum = f + v;
      U next;
      std::memcpy(&next, &sum, sizeof next);
      if (__atomic_compare_exchange_n(u, &old, next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
        return f;
      }
    }
  } else {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
  }
}
// Each atomic counts as one `atomic` instruction (performance counters), then does its work.
inline auto __nuri_counted(::nuri::emu::Site site, auto result) {
  ::nuri::emu::count_instr(::nuri::emu::Instr::atomic, site);
  return result;
}
#define NURI_EMU_SITE ::nuri::emu::Site site = ::nuri::emu::Site::current()
inline float atomicAdd(float* p, float v, NURI_EMU_SITE) {
  return __nuri_counted(site, __nuri_atomic_fetch_add(p, v));
}
inline double atomicAdd(double* p, double v, NURI_EMU_SITE) {
  return __nuri_counted(site, __nuri_atomic_fetch_add(p, v));
}
inline int atomicAdd(int* p, int v, NURI_EMU_SITE) {
  return __nuri_counted(site, __nuri_atomic_fetch_add(p, v));
}
inline unsigned atomicAdd(unsigned* p, unsigned v, NURI_EMU_SITE) {
  return __nuri_counted(site, __nuri_atomic_fetch_add(p, v));
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v, NURI_EMU_SITE) {
  return __nuri_counted(site, __nuri_atomic_fetch_add(p, v));
}
template <class T>
inline T __nuri_atomic_cas(T* p, T compare, T value) {
  std::atomic_ref<T>(*p).compare_exchange_strong(compare, value, std::memory_order_relaxed);
  return compare;  // the old value either way
}
inline int atomicCAS(int* p, int c, int v, NURI_EMU_SITE) {
  return __nuri_counted(site, __nuri_atomic_cas(p, c, v));
}
inline unsigned atomicCAS(unsigned* p, unsigned c, unsigned v, NURI_EMU_SITE) {
  return __nuri_counted(site, __nuri_atomic_cas(p, c, v));
}
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long c,
                                    unsigned long long v, NURI_EMU_SITE) {
  return __nuri_counted(site, __nuri_atomic_cas(p, c, v));
}
template <class T>
inline T __nuri_atomic_max(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load(std::memory_order_relaxed);
  while (old < v && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {
  }
  return old;
}
inline int atomicMax(int* p, int v, NURI_EMU_SITE) {
  return __nuri_counted(site, __nuri_atomic_max(p, v));
}
inline unsigned atomicMax(unsigned* p, unsigned v, NURI_EMU_SITE) {
  return __nuri_counted(site, __nuri_atomic_max(p, v));
}
inline int atomicExch(int* p, int v, NURI_EMU_SITE) {
  return __nuri_counted(site, std::atomic_ref<int>(*p).exchange(v, std::memory_order_relaxed));
}
#undef NURI_EMU_SITE

// Math intrinsics with their CUDA names (the fast variants computed exactly here). Those that
// are one special-function-unit instruction on a GPU count as `sfu`.
inline float rsqrtf(float x, ::nuri::emu::Site site = ::nuri::emu::Site::current()) {
  ::nuri::emu::count_instr(::nuri::emu::Instr::sfu, site);
  return 1.0f / std::sqrt(x);
}
inline float __expf(float x, ::nuri::emu::Site site = ::nuri::emu::Site::current()) {
  ::nuri::emu::count_instr(::nuri::emu::Instr::sfu, site);
  return std::exp(x);
}
inline float __logf(float x, ::nuri::emu::Site site = ::nuri::emu::Site::current()) {
  ::nuri::emu::count_instr(::nuri::emu::Instr::sfu, site);
  return std::log(x);
}
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
template <class T>
inline T __ldg(const T* p) { return *p; }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
// Device min/max overloads of the CUDA math library (integer and floating).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a < b ? b : a; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a < b ? b : a; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a < b ? b : a; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a < b ? b : a; }
inline float min(float a, float b, ::nuri::emu::Site site = ::nuri::emu::Site::current()) {
  return ::nuri::emu::checked_min(a, b, site);
}
inline float max(float a, float b, ::nuri::emu::Site site = ::nuri::emu::Site::current()) {
  return ::nuri::emu::checked_max(a, b, site);
}
// fmaxf and fminf are the C library's (global, two arguments): the kernels' namespace gets
// checked ones of its own, which unqualified calls there find first.
namespace nuri::kernels {
inline float fmaxf(float a, float b, ::nuri::emu::Site site = ::nuri::emu::Site::current()) {
  return ::nuri::emu::checked_max(a, b, site);
}
inline float fminf(float a, float b, ::nuri::emu::Site site = ::nuri::emu::Site::current()) {
  return ::nuri::emu::checked_min(a, b, site);
}
}  // namespace nuri::kernels
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
