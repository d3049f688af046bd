// The emulator's internal state, shared by scheduler.cpp (launches, blocks, barriers),
// collectives.cpp (warp collectives and tensor-core instructions) and async_copy.cpp
// (cp.async). Internal to kernels/emu.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "emu/emu.h"
#include "emu/fiber.h"
#include "emu/internal.h"
#include "emu/tsan.h"

namespace nuri::emu::detail {

class FiberPool;

// ---- state of a launch ----------------------------------------------------------------------------

enum class Wait { none, barrier, warp, mbarrier, warpgroup, named, maxnreg, done };

enum class OpKind { shfl, vote, syncwarp, mma, ldmatrix };

/// What a lane brings to a warp collective.
struct Arrival {
  OpKind kind = OpKind::shfl;
  int mode = 0;  // Shfl / Vote value, mma dtype, ldmatrix count*2+trans
  unsigned mask = 0;
  int arg = 0, width = 32;
  uint32_t in[12] = {};
  const void* addr = nullptr;  // ldmatrix: this lane's row address (performance counters)
  Site site;
};

struct AsyncCopy {
  void* dst;
  const void* src;
  int bytes, src_bytes;
};

/// A tensor map as the emulator encodes it into CUtensorMap's opaque bytes (tensor_map.cpp).
struct TensorMap {
  uint64_t magic = 0;
  uint64_t addr = 0;
  uint64_t dim[5] = {};     // elements; dim[0] innermost
  uint64_t stride[4] = {};  // bytes, of dims 1.. (dim 0's is the element size)
  uint32_t box[5] = {};     // elements
  uint8_t rank = 0, esize = 0, swizzle = 0;  // swizzle: its span in bytes, 0 for none
  uint8_t oob_nan = 0;                       // out-of-bounds elements read as NaN, not 0
};

/// One tensor tile copy (cp.async.bulk.tensor): the map, the box's first coordinates and the
/// shared-memory side.
struct TensorCopy {
  TensorMap map;
  int64_t coord[5] = {};
  unsigned char* smem_base = nullptr;  // the block's dynamic shared memory (swizzle origin)
  size_t smem_off = 0;                 // the box's offset in it
  bool load = true;  // global -> shared; else shared -> global (in-bounds elements only)
  // A store's source bytes at the issue, and where it was issued: a write to the source before
  // the bulk wait (the hardware may read either value) is caught when the wait finds them
  // changed.
  std::vector<unsigned char> source;
  Site site;
};

/// A thread's part of a wgmma.mma_async (wgmma.cpp): its arguments, the accumulator input it
/// brings (its registers, or the pending result of an earlier wgmma on the same registers), and
/// the result the rendezvous computes for it.
struct WgmmaArrival {
  bool bf16 = true;
  int n = 0;
  float* d = nullptr;
  bool a_in_regs = false;
  uint32_t a[4] = {};
  uint64_t a_desc = 0, b_desc = 0;
  bool a_mn_major = false, b_mn_major = false;  // imm-trans-a, imm-trans-b
  bool scale_d = true;
  std::vector<float> input, result;
  Site site;
  // Released by the tensor-core unit after it read this wgmma's shared-memory operands, acquired
  // by the wait_group that retires it (and only that one: a wait that leaves the wgmma in flight
  // does not order its reads).
  std::shared_ptr<char> done;
};

/// A wgmma result not yet written to its registers: written by the wait_group that completes
/// its group, when the registers must still hold the poison written at the issue.
struct WgmmaPending {
  float* d = nullptr;
  std::vector<float> value;
  Site site;
  std::shared_ptr<char> done;  // WgmmaArrival::done
  // A from registers: where they are and what they held at the issue (the tensor cores may read
  // them until the wait that retires this wgmma, so they must still hold it there).
  const uint32_t* a_regs = nullptr;
  uint32_t a_held[4] = {};
};

/// Registers a thread's wgmmas used (accumulators, A fragments), with their bytes as of its last
/// wgmma.fence or the issue that used them since: a wgmma finding other bytes in them was given
/// registers written after the fence, which the tensor cores may not see (wgmma.cpp).
struct WgmmaRegs {
  const unsigned char* at = nullptr;
  std::vector<unsigned char> bytes;
};

struct Launch;
struct CounterState;  // counters.cpp

struct Thread {
  fiber::Fiber* fiber = nullptr;
  Launch* launch = nullptr;
  void* tsan = nullptr;
  uint3 tid{};
  int linear = 0;
  bool started = false, ended = false;
  Wait wait = Wait::none;
  Site site;  // where it waits
  Arrival op;
  uint32_t out[4] = {};
  std::shared_ptr<char> sync;  // the rendezvous it acquires when released
  // cp.async: copies of the open group, committed groups (oldest first), and the TSan fiber of
  // this thread's asynchronous copy unit.
  std::vector<AsyncCopy> open_copies;
  std::vector<std::vector<AsyncCopy>> groups;
  void* engine = nullptr;
  char engine_sync = 0, engine_done = 0;
  // Tensor stores (cp.async.bulk.tensor to global): the open bulk group and the committed ones.
  std::vector<TensorCopy> open_stores;
  std::vector<std::vector<TensorCopy>> store_groups;
  // wgmma: a wgmma.fence since the last wait_group (or the start), the results of the open
  // group and of the committed ones (oldest first), and this thread's part of a rendezvous.
  bool wg_fenced = false;
  std::vector<WgmmaRegs> wg_regs;
  std::vector<WgmmaPending> wg_open;
  std::vector<std::vector<WgmmaPending>> wg_groups;
  WgmmaArrival wg;
  int maxnreg_calls = 0;      // setmaxnreg calls this thread made
  unsigned maxnreg_want = 0;  // setmaxnreg.inc: the count it waits for the pool to supply
  // mbarrier.try_wait.parity: the barrier and the parity of the phase it waits for.
  const void* mbar = nullptr;
  unsigned parity = 0;
  unsigned named = 0;  // bar.sync: the named barrier it waits at
};

/// A named barrier (bar.sync / bar.arrive with ids 1 to 15; scheduler.cpp). A phase completes
/// when `expected` arrivals (bar.sync and bar.arrive alike, a thread each) have come; syncs[k] is
/// what phase k's arrivals release and its bar.sync waiters acquire.
struct NamedBarrier {
  unsigned expected = 0, arrived = 0;  // of the phase in progress (arrived 0: none begun)
  uint64_t phase = 0;                  // phases completed
  std::vector<std::shared_ptr<char>> syncs;
  std::vector<uint16_t> per_thread;  // this phase's arrivals by linear thread index
  Site site;                         // the phase's first arrival
};

/// An mbarrier object's state (mbarrier.cpp), kept beside the 8 bytes of shared memory that
/// name it. Phase k completes when its pending arrivals and its transaction count are both 0;
/// syncs[k] is what the arrivals and copies of phase k release and its waiters acquire.
struct MBarrier {
  unsigned expected = 0, pending = 0;
  int64_t tx = 0;      // bytes expected (expect_tx) minus bytes completed (complete_tx)
  uint64_t phase = 0;  // phases completed so far: the current phase's parity is phase % 2
  std::vector<std::shared_ptr<char>> syncs;
  Site init_site;
  // The async proxy (the bulk copies completing transactions on it) sees the init only after a
  // fence.proxy.async by the thread that made it.
  const Thread* init_thread = nullptr;
  bool async_visible = false;
};

/// A cp.async.bulk copy in flight: done by the issuing thread's copy unit when the scheduler
/// next finds every thread parked, then it completes `bytes` of the barrier's transactions.
/// `tensor`: a tensor tile load (dst/src unused), else a plain copy.
struct BulkCopy {
  void* dst;
  const void* src;
  unsigned bytes;
  const void* bar;
  Thread* issuer;
  Site site;
  std::shared_ptr<TensorCopy> tensor;
};

/// Copies one tensor tile, in the calling context (the copy unit's): only the element copies
/// are its accesses, the bookkeeping is ignored. tensor_map.cpp.
void tensor_copy(const TensorCopy& c);

/// A bulk copy's issue (mbarrier.cpp): checks, the barrier, poisoning of the destination by the
/// issuing thread's copy unit; `tensor` makes it a tensor tile load (src unused).
void cp_async_bulk_enqueue(void* dst, const void* src, unsigned bytes, void* bar,
                           std::shared_ptr<TensorCopy> tensor, Site site);

struct Launch {
  const char* name = "";
  dim3 grid, block;
  size_t smem = 0;
  const std::function<void()>* body = nullptr;
  uint64_t seed = 0;
  int threads_per_block = 0;
  fiber::Stacks* stacks = nullptr;
  FiberPool* fibers = nullptr;
  void* sched_tsan = nullptr;
  // The launch's two sync objects (launch -> thread start, thread end -> launch end), on the
  // heap and freed with the launch: at a stack address the next launch reuses, their clocks
  // would carry one launch's (one stream's) history into the next (another's).
  std::unique_ptr<char[]> syncs{new char[2]()};
  char* launch_sync = syncs.get();
  char* done_sync = syncs.get() + 1;
  uint3 block_idx{};
  unsigned char* smem_buf = nullptr;
  std::vector<Thread>* threads = nullptr;
  Thread* cur = nullptr;
  std::string error;  // set by a fiber that found misuse
  std::vector<std::unique_ptr<unsigned char, void (*)(void*)>> smem_blocks;  // freed at the end
  std::vector<std::unique_ptr<std::vector<Thread>>> thread_blocks;           // freed at the end
  std::shared_ptr<CounterState> counters;  // null unless performance counters are on
  // wgmma's tensor-core units, one per warpgroup of this block: a TSan context that reads the
  // operands in shared memory after taking its warpgroup's history, and releases the wgmma's own
  // sync (WgmmaArrival::done) for the wait_group that retires it. One per warpgroup: a unit
  // shared by two would carry one warpgroup's history into the other's waits, hiding races
  // between them.
  std::vector<void*> tensor_units;
  bool wgmma_used = false;  // a thread of this block issued a wgmma (the scheduler looks only then)
  // setmaxnreg: per warpgroup of this block, the register count of each of its calls so far
  // (a warpgroup without calls holds what the block was launched with, setmaxnreg_launch_count).
  std::vector<std::vector<unsigned>> maxnreg;
  // This block's mbarriers by shared-memory address, and its bulk copies in flight.
  std::map<const void*, MBarrier> mbarriers;
  std::vector<BulkCopy> bulk;
  NamedBarrier named[16];  // [0] unused: barrier 0 is __syncthreads'
  // The async proxy's view of this block's dynamic shared memory: what the last
  // fence.proxy.async (by any thread) found there, with the async proxy's own writes since (bulk
  // copies and their poisoning). A wgmma operand or tensor-store source that differs from it was
  // written by a plain store the async proxy was never fenced to see.
  std::vector<unsigned char> async_view;
  // The live allocations at the launch's start (memory_ranges, internal.h), for the checks of
  // the addresses async copies and ldmatrix are given.
  std::vector<MemoryRange> ranges;
};

/// The allocation of L.ranges holding [p, p + n), or null.
const MemoryRange* range_of(const Launch& L, const void* p, size_t n);

/// The launch running on this OS thread (a builtin used outside a kernel is a bug).
Launch& launch_state();

std::string str(const uint3& v);
std::string str(const Site& s);

/// Returns control to the scheduler; called inside an ignore region, which stays open until
/// the caller ends it after being resumed.
void park(Launch& L, Thread& t);

/// Records misuse found by the running thread and never returns to the kernel: the scheduler
/// stops the launch and throws. Called inside an ignore region.
[[noreturn]] void fail(Launch& L, Thread& t, const std::string& what);

/// Computes a completed collective's results for the lanes of one warp (null where a lane does
/// not exist); returns "" or what was wrong (a shuffle reading a lane outside the mask).
std::string compute(const Arrival& op, Thread* const lanes[32]);

// ---- performance counters (counters.cpp) ----------------------------------------------------

/// Starts counting for a launch when counters are on (sets L.counters).
void counters_begin(Launch& L);
/// A completed warp collective (lanes as for compute) and a completed barrier.
void counters_collective(Launch& L, const Arrival& op, Thread* const lanes[32]);
void counters_barrier(Launch& L, const std::vector<Thread*>& waiting);
/// Folds the finished block's per-lane records into warp-wide requests.
void counters_block_end(Launch& L);
/// Publishes the launch's counters (and prints them under NURI_EMU_COUNTERS).
void counters_end(Launch& L);

/// Runs `f`, from the thread's own context, as its asynchronous copy unit (cp.async and the
/// bulk copies): a separate TSan context, so an access by the thread (or by others) to a
/// destination before the wait that completes it is a race. acquire_thread: the unit first
/// takes the thread's history (at issue).
template <class F>
void as_copy_unit(Thread& t, bool acquire_thread, F&& f) {
  if (!t.engine) {
    tsan::Ignore ig;
    t.engine = tsan::create("cp.async unit");
  }
  void* self = t.tsan;
  if (acquire_thread) tsan::release(&t.engine_sync);
  tsan::switch_to(t.engine);
  if (acquire_thread) tsan::acquire(&t.engine_sync);
  f();
  tsan::release(&t.engine_done);
  tsan::switch_to(self);
}

/// Releases the parked threads `ts` of a completed collective: each acquires what all of them
/// did before arriving when it resumes (scheduler.cpp).
void rendezvous(Launch& L, const std::vector<Thread*>& ts);
/// Resumes the parked threads `ts` of a completed collective that orders no memory between them
/// (shuffles, votes, mma, ldmatrix: only their registers are exchanged).
void resume_unordered(const std::vector<Thread*>& ts);

// ---- wgmma (wgmma.cpp) --------------------------------------------------------------------------

/// Completes the wgmma rendezvous of every warpgroup whose 128 threads have all arrived (the
/// products, each thread's result into its Thread::wg.result). Throws on misuse; returns
/// whether any completed.
bool wgmma_progress(Launch& L);
/// Lets the threads waiting in setmaxnreg.inc go on where the block's register pool now has
/// their count. Returns whether any may.
bool maxnreg_progress(Launch& L);
/// Why a thread waits in setmaxnreg.inc, for the deadlock report.
std::string maxnreg_wait_report(const Launch& L, const Thread& t);
/// At a block's end: every thread made each setmaxnreg call of its warpgroup (the account moves
/// a warpgroup's registers at the first thread's call, which the GPU does only for all 128).
void maxnreg_block_end(const Launch& L);

// ---- mbarrier and bulk copies (mbarrier.cpp) -------------------------------------------------

/// Does what the async units can do while every thread is parked: the bulk copies in flight
/// (each completing its barrier's transactions) and the release of threads waiting for a phase
/// that has completed. Returns whether anything happened. Throws on misuse.
bool mbarrier_progress(Launch& L);
/// " waits on the mbarrier at shared offset N for phase parity p (...)" for a deadlock report.
std::string mbarrier_wait_report(const Launch& L, const Thread& t);
/// At a block's start (forget the last block's barriers, setmaxnreg counts and wgmma use) and
/// end (no copy may be in flight).
void mbarrier_block_begin(Launch& L);
void mbarrier_block_end(Launch& L);

/// The async proxy wrote `bytes` of shared memory at offset `off` (a bulk copy, its poisoning):
/// its view of them is what is there now. Call inside an ignore region.
void async_view_wrote(Launch& L, size_t off, size_t bytes);
/// The first byte where the async proxy's view differs from shared memory among the `count`
/// ranges of `width` bytes at the offsets `offs`, or -1. Call inside an ignore region.
int64_t async_view_stale(const Launch& L, const uint32_t* offs, size_t count, size_t width);
/// "shared memory byte N was written by a plain (generic-proxy) store ..." for an error naming
/// the async `reader`.
std::string async_view_report(int64_t off, const std::string& reader);

/// What is wrong with `bytes` of shared memory at `p` for an instruction that must read or
/// write shared memory (ldmatrix, cp.async's destination): "" when nothing is found, else e.g.
/// "reaches byte 4100 of the block's 4096-byte dynamic shared memory" or "is in global memory".
/// (A static __shared__ array is a thread_local here, so an address that is neither is taken.)
std::string shared_address_problem(const Launch& L, const void* p, size_t bytes);

/// Deposits this lane's part of a warp collective, waits for the others, and returns with the
/// lane's Thread::out holding its result.
void warp_collective(const Arrival& a);

}  // namespace nuri::emu::detail
