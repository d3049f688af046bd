// The emulator's scheduler: runs each block's threads as fibers (fiber.h) on the calling OS
// thread, blocks in a seeded random order; implements barriers, and completes the rendezvous of
// warp collectives (collectives.cpp) and barriers. Under ThreadSanitizer every emulated thread is
// a TSan fiber and happens-before edges are added exactly where CUDA has them (launch -> thread
// start, __syncthreads, __syncwarp, the async units' completions, thread end -> launch
// completion; not shuffles, votes, mma or ldmatrix); switching itself orders nothing, and the
// scheduler's own bookkeeping is hidden from the detector, so the races it reports are the
// kernel's.
#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <vector>

#include "emu/state.h"
#include "emu/internal.h"
#include "emu/tsan.h"
#include "nuri/core/error.h"

namespace nuri::emu {
namespace detail {

// ---- fiber stacks (fiber.cpp) and TSan fibers: reused across launches, never within one ---------
//
// Under TSan, memory or a TSan fiber that served one block and then another of the same launch
// would carry the first block's accesses or clock into the second: a stack slot reused by the
// next block looks like a race (AnnotateNewMemory, which would forget them, is a no-op in GCC 12's
// TSan), and a reused fiber would order the two blocks. Between launches both are harmless: the
// launcher acquires every thread's release at the end of a launch, and the next launch's fibers
// are ordered after it anyway (stream order). So resources go back to the pool at launch end.
//
// Large launches run in waves: one TSan fiber and one stack per emulated thread of a whole
// launch (a row per block over a batch, an elementwise pass over the parameters) would exhaust
// TSan's thread slots and the process's mappings, and TSan's memory and work grow with the
// fibers in use. So a launch's blocks (in their random order) form waves of kWaveThreads
// threads, or kMinWaveBlocks blocks where those are more. (With waves of 4096 threads a
// process that had run one training step under TSan ran what came after it several times
// slower; kernels/README.md has the suite's time before and after.) Between two
// waves the scheduler acquires what every thread of the first released at
// its end, so the next wave's threads (which start by acquiring the scheduler's release) are
// ordered after it, and the first wave's fibers, stacks and shared memory serve the next. Races
// between blocks of one wave are found; blocks of different waves are ordered, as if the device
// had run them one after the other (which it may). The random block order mixes the waves from
// launch to launch.
constexpr uint64_t kWaveThreads = 1024;
constexpr size_t kMinWaveBlocks = 4;  // so the largest blocks (1024 threads) still race in a wave
constexpr size_t kSmemGuard = 1024;   // poisoned bytes on each side of a block's shared memory

/// What a block's dynamic shared memory is allocated as: the launch's size (at least 16 bytes)
/// rounded up to 128; the guard bands lie before it and after the rounding.
size_t smem_rounded(size_t smem) { return (std::max<size_t>(smem, 16) + 127) / 128 * 128; }

class FiberPool {
 public:
  void* get() {
    void* f;
    if (!free_.empty()) {
      f = free_.back();
      free_.pop_back();
    } else {
      f = tsan::create("emulated CUDA thread");
    }
    used_.push_back(f);
    return f;
  }
  void recycle() {
    free_.insert(free_.end(), used_.begin(), used_.end());
    used_.clear();
  }
  /// A fiber unwound by an exception: its shadow call stack is off, so it is not reused.
  void discard(void* f) {
    used_.erase(std::find(used_.begin(), used_.end(), f));
    tsan::destroy(f);
  }
  ~FiberPool() {
    for (void* f : free_) tsan::destroy(f);
    for (void* f : used_) tsan::destroy(f);
  }

 private:
  std::vector<void*> free_, used_;
};

/// A stream's fibers and their stacks. Each stream has its own: the emulated threads of a
/// kernel reuse the fibers (and stacks) of earlier kernels of their stream, which happened
/// before them, never those of another stream's kernels, which may not have (a fiber's
/// history would order them; a stack's reuse would be a race between them).
struct Pools {
  fiber::Stacks* stacks = fiber::new_stacks();
  FiberPool fibers;
  ~Pools() { fiber::delete_stacks(stacks); }
};

tsan::QuietMutex g_pools_mu;
std::map<const void*, std::unique_ptr<Pools>>& pools_by_stream() {
  static auto* m = new std::map<const void*, std::unique_ptr<Pools>>;
  return *m;
}

Pools& pools_of(cudaStream_t stream) {
  const void* key = is_legacy_stream(stream) ? nullptr : stream;
  std::lock_guard<tsan::QuietMutex> lock(g_pools_mu);
  std::unique_ptr<Pools>& p = pools_by_stream()[key];
  if (!p) p = std::make_unique<Pools>();
  return *p;
}

thread_local Launch* g_launch = nullptr;
// Relaxed atomics: host threads launching on different streams share them, and an atomic
// with ordering would be a happens-before edge between every launch and the next, whatever
// their streams (the detector models atomics).
std::atomic<uint64_t> g_base_seed{0};
std::atomic<bool> g_seed_set{false};
std::atomic<uint64_t> g_launch_count{0};

std::string str(const uint3& v) {
  std::ostringstream os;
  os << "(" << v.x << "," << v.y << "," << v.z << ")";
  return os.str();
}
std::string str(const Site& s) {
  std::ostringstream os;
  const char* f = s.file_name();
  const char* slash = std::strrchr(f, '/');
  os << (slash ? slash + 1 : f) << ":" << s.line();
  return os.str();
}

Launch& launch_state() {
  NURI_ASSERT(g_launch != nullptr, "a device builtin was used outside a kernel launch");
  return *g_launch;
}

std::string where(const Launch& L, const Thread& t) {
  return std::string("kernel ") + L.name + ", block " + str(L.block_idx) + ", thread " +
         str(t.tid) + " (block-order seed " + std::to_string(L.seed) + ")";
}

/// Returns control to the scheduler; called inside an ignore region, which stays open until
/// the caller ends it after being resumed.
void park(Launch& L, Thread& t) { fiber::suspend(t.fiber, L.sched_tsan); }

/// Records misuse found by the running thread and never returns to the kernel: the scheduler
/// stops the launch and throws. Called inside an ignore region.
[[noreturn]] void fail(Launch& L, Thread& t, const std::string& what) {
  if (L.error.empty()) L.error = what + " [" + where(L, t) + "]";
  t.wait = Wait::done;
  park(L, t);
  std::abort();  // a failed launch never resumes this thread
}

}  // namespace detail

using namespace detail;

// ---- scheduler ------------------------------------------------------------------------------------

namespace detail {

/// Every thread of `ts` that takes part releases `sync` from its own TSan context (they are all
/// parked, so this is the release each made on arrival), then each will acquire it on resuming.
void rendezvous(Launch& L, const std::vector<Thread*>& ts) {
  auto sync = std::shared_ptr<char>(new char(0));
  // Only the release runs in t's context; every value it needs is loaded before (locals that
  // are never address-taken are not instrumented).
  void* const sched = L.sched_tsan;
  char* const obj = sync.get();
  for (Thread* t : ts) {
    void* const fiber = t->tsan;
    tsan::switch_to(fiber);
    tsan::release(obj);
    tsan::switch_to(sched);
  }
  for (Thread* t : ts) {
    t->sync = sync;
    t->wait = Wait::none;
  }
}

std::string shared_address_problem(const Launch& L, const void* p, size_t bytes) {
  const auto* c = static_cast<const unsigned char*>(p);
  const unsigned char* const s = L.smem_buf;
  const size_t rounded = smem_rounded(L.smem);
  if (c + bytes > s - kSmemGuard && c < s + rounded + kSmemGuard &&
      (c < s || c + bytes > s + L.smem)) {
    std::ostringstream os;
    if (c < s) {
      os << "starts " << (s - c) << " bytes before the start of";
    } else {
      os << "reaches byte " << (c + bytes - s - 1) << " of";
    }
    os << " the block's " << L.smem << "-byte dynamic shared memory";
    return os.str();
  }
  const MemoryRange* r = range_of(L, p, 1);
  if (r && r->device) return "is in global memory (a cudaMalloc allocation)";
  return "";
}

const MemoryRange* range_of(const Launch& L, const void* p, size_t n) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = std::upper_bound(L.ranges.begin(), L.ranges.end(), a,
                             [](uintptr_t x, const MemoryRange& r) { return x < r.lo; });
  if (it == L.ranges.begin()) return nullptr;
  --it;
  return a + n <= it->hi ? &*it : nullptr;
}

void resume_unordered(const std::vector<Thread*>& ts) {
  // Each lane its own object, released by nobody: acquiring it orders nothing (and one shared
  // between the lanes would order them through its reference count, an atomic the detector
  // sees).
  for (Thread* t : ts) {
    t->sync = std::make_shared<char>(0);
    t->wait = Wait::none;
  }
}

}  // namespace detail

namespace {

/// Completes what can be completed: warp collectives whose lanes have all arrived, and the
/// barrier once every live thread waits at it. Throws on misuse. Returns whether any completed.
bool complete_waits(Launch& L) {
  std::vector<Thread>& ts = *L.threads;
  const int n = int(ts.size());
  bool progress = mbarrier_progress(L);
  progress = wgmma_progress(L) || progress;
  progress = maxnreg_progress(L) || progress;
  for (int base = 0; base < n; base += 32) {
    Thread* lanes[32] = {};
    for (int l = 0; l < 32 && base + l < n; ++l) lanes[l] = &ts[size_t(base + l)];
    for (int l = 0; l < 32; ++l) {
      Thread* t = lanes[l];
      if (!t || t->wait != Wait::warp) continue;
      const Arrival& op = t->op;
      bool ready = true;
      std::vector<Thread*> group;
      for (int j = 0; j < 32; ++j) {
        if (!(op.mask >> j & 1u)) continue;
        Thread* u = lanes[j];
        if (u->wait == Wait::none || u->wait == Wait::mbarrier || u->wait == Wait::warpgroup ||
            u->wait == Wait::named || u->wait == Wait::maxnreg) {  // it may still come
          ready = false;
          continue;
        }
        if (u->wait == Wait::done) {
          NURI_CHECK(false, "emulated ", L.name, ": lane ", j, " (thread ", str(u->tid),
                     ") exited, but lane ", l, " waits for it in a warp collective at ",
                     str(op.site), " with mask 0x", std::hex, op.mask, std::dec, " [block ",
                     str(L.block_idx), ", block-order seed ", L.seed, "]");
        }
        if (u->wait == Wait::barrier || u->op.kind != op.kind || u->op.mask != op.mask ||
            u->op.mode != op.mode || u->op.width != op.width ||
            std::strcmp(u->op.site.file_name(), op.site.file_name()) != 0 ||
            u->op.site.line() != op.site.line()) {
          NURI_CHECK(false, "emulated ", L.name, ": lanes of one warp disagree: lane ", l,
                     " (thread ", str(t->tid), ") waits in a warp collective at ", str(op.site),
                     " with mask 0x", std::hex, op.mask, ", lane ", std::dec, j, " (thread ",
                     str(u->tid), ") waits ",
                     u->wait == Wait::barrier ? "at __syncthreads at " : "in a collective at ",
                     str(u->site), " [block ", str(L.block_idx), ", block-order seed ", L.seed,
                     "]");
        }
        group.push_back(u);
      }
      if (!ready) continue;
      const std::string bad = compute(op, lanes);
      NURI_CHECK(bad.empty(), "emulated ", L.name, ": ", bad, " [block ", str(L.block_idx),
                 ", block-order seed ", L.seed, "]");
      counters_collective(L, op, lanes);
      // Of the warp collectives only bar.warp.sync (__syncwarp) orders memory between the lanes
      // (the PTX memory model's barriers); shfl.sync, vote.sync, mma.sync and ldmatrix.sync
      // exchange registers, so shared memory one lane wrote and another reads after only
      // those is a race, as on the GPU.
      if (op.kind == OpKind::syncwarp) {
        rendezvous(L, group);
      } else {
        resume_unordered(group);
      }
      progress = true;
    }
  }
  // The barrier: every live thread at the same __syncthreads.
  std::vector<Thread*> waiting;
  Thread* exited = nullptr;
  for (Thread& t : ts) {
    if (t.wait == Wait::none || t.wait == Wait::warp || t.wait == Wait::mbarrier ||
        t.wait == Wait::warpgroup || t.wait == Wait::named || t.wait == Wait::maxnreg) {
      return progress;
    }
    if (t.wait == Wait::done) {
      exited = &t;
    } else {
      waiting.push_back(&t);
    }
  }
  if (waiting.empty()) return progress;
  NURI_CHECK(!exited, "emulated ", L.name, ": barrier divergence: thread ", str(exited->tid),
             " exited while thread ", str(waiting[0]->tid), " waits at __syncthreads at ",
             str(waiting[0]->site), " (every thread of a block must reach every barrier) [block ",
             str(L.block_idx), ", block-order seed ", L.seed, "]");
  for (Thread* t : waiting) {
    const Site& a = waiting[0]->site;
    NURI_CHECK(std::strcmp(t->site.file_name(), a.file_name()) == 0 && t->site.line() == a.line(),
               "emulated ", L.name, ": barrier divergence: thread ", str(waiting[0]->tid),
               " waits at __syncthreads at ", str(a), ", thread ", str(t->tid), " at ",
               str(t->site), " [block ", str(L.block_idx), ", block-order seed ", L.seed, "]");
  }
  counters_barrier(L, waiting);
  rendezvous(L, waiting);
  return true;
}

std::string deadlock_report(const Launch& L) {
  std::ostringstream os;
  os << "emulated " << L.name << ": no thread can make progress [block " << str(L.block_idx)
     << ", block-order seed " << L.seed << "]:";
  int shown = 0;
  for (const Thread& t : *L.threads) {
    if (t.wait == Wait::done || shown >= 6) continue;
    os << " thread " << str(t.tid) << " waits ";
    if (t.wait == Wait::mbarrier) {
      os << mbarrier_wait_report(L, t) << ";";
    } else if (t.wait == Wait::named) {
      const NamedBarrier& nb = L.named[t.named];
      os << "at bar.sync " << t.named << ", " << nb.expected << " at " << str(t.site) << " ("
         << nb.arrived << " of its " << nb.expected << " arrivals have come);";
    } else if (t.wait == Wait::maxnreg) {
      os << maxnreg_wait_report(L, t) << ";";
    } else if (t.wait == Wait::warpgroup) {
      os << "in a wgmma.mma_async at " << str(t.site) << " for the rest of its warpgroup;";
    } else {
      os << (t.wait == Wait::barrier ? "at __syncthreads at " : "in a warp collective at ")
         << str(t.site) << ";";
    }
    ++shown;
  }
  return os.str();
}

void resume(Launch& L, Thread& t) {
  L.cur = &t;
  const bool first = !t.started;
  t.started = true;
  t.ended = fiber::resume(t.fiber, t.tsan, first);
}

/// Unwinds the fibers of a failed block (their stacks hold only kernel frames).
void abandon(Launch& L) {
  void* const sched = L.sched_tsan;
  char* const done = L.done_sync;
  for (Thread& t : *L.threads) {
    if (t.started && !t.ended) {
      void* const f = t.tsan;
      tsan::switch_to(f);
      tsan::release(done);  // its accesses so far happen before the launch's end
      tsan::switch_to(sched);
    }
    if (t.fiber) fiber::destroy(t.fiber, t.tsan, sched);
    t.fiber = nullptr;
  }
}

/// Retires a finished (or abandoned) block's threads. A thread that ran holds the one ignore it
/// opened before its last switch to the scheduler; it is closed in its own context. A fiber
/// unwound by an exception is not reused.
void retire(Launch& L, std::vector<Thread>& threads) {
  void* const sched = L.sched_tsan;
  for (Thread& t : threads) {
    if (t.started) {
      void* const f = t.tsan;
      tsan::switch_to(f);
      tsan::ignore_end();
      tsan::switch_to(sched);
    }
    if (t.fiber) fiber::destroy(t.fiber, t.tsan, sched);
    t.fiber = nullptr;
    if (t.engine) tsan::destroy(t.engine);
    if (t.started && !t.ended) L.fibers->discard(t.tsan);
  }
  for (void* unit : L.tensor_units) {
    if (unit) tsan::destroy(unit);
  }
  L.tensor_units.clear();
  L.threads = nullptr;
  L.cur = nullptr;
}

/// The life of one emulated thread, on its fiber.
void thread_main(void* arg) {
  Thread& self = *static_cast<Thread*>(arg);
  Launch& launch = *self.launch;  // read before the ignore region ends
  // (The launch's state is on the host's stack, read by the threads only in ignore regions.)
  const std::function<void()>& body = *launch.body;
  char* const launch_sync = launch.launch_sync;
  char* const done_sync = launch.done_sync;
  tsan::ignore_end();  // opened by the scheduler's first switch to this fiber
  tsan::acquire(launch_sync);
  body();
  tsan::release(done_sync);
  tsan::ignore_begin();
  if (!self.open_copies.empty() || !self.groups.empty()) {
    fail(launch, self, "a thread exited with cp.async copies it never waited for (cp_async_wait)");
  }
  if (!self.wg_open.empty() || !self.wg_groups.empty()) {
    fail(launch, self,
         "a thread exited with wgmma.mma_async results it never committed and waited for "
         "(wgmma_commit, wgmma_wait)");
  }
  if (!self.open_stores.empty() || !self.store_groups.empty()) {
    fail(launch, self,
         "a thread exited with tensor stores (cp.async.bulk.tensor) it never committed and waited "
         "for (cp_async_bulk_commit, cp_async_bulk_wait)");
  }
  self.wait = Wait::done;
}

/// Whether the guard bands around the block's dynamic shared memory still hold their poison;
/// an error naming the launch's size and the first byte written outside it otherwise.
void smem_guard_check(const Launch& L) {
  const size_t rounded = smem_rounded(L.smem);
  tsan::Ignore ig;
  const unsigned char* const s = L.smem_buf;
  for (size_t i = 0; i < kSmemGuard; ++i) {
    NURI_CHECK(s[-1 - std::ptrdiff_t(i)] == 0xff, "emulated ", L.name, ": a thread wrote ",
               "the byte ", i + 1, " bytes before the start of the block's dynamic shared memory (",
               L.smem, " bytes) [block ", str(L.block_idx), ", block-order seed ", L.seed, "]");
  }
  for (size_t i = L.smem; i < rounded + kSmemGuard; ++i) {
    NURI_CHECK(s[i] == 0xff, "emulated ", L.name, ": a thread wrote byte ", i - L.smem,
               " past the end of the block's dynamic shared memory (", L.smem,
               " bytes, what the launch asked for) [block ", str(L.block_idx),
               ", block-order seed ", L.seed, "]");
  }
}

void run_block(Launch& L, const uint3& bid) {
  L.block_idx = bid;
  // Kept until the wave ends, like the shared memory below (freeing needs an edge from the
  // threads to the scheduler; see kWaveThreads).
  L.thread_blocks.push_back(std::make_unique<std::vector<Thread>>(size_t(L.threads_per_block)));
  std::vector<Thread>& threads = *L.thread_blocks.back();
  L.threads = &threads;
  // Fresh, poisoned dynamic shared memory (NaN bytes): reads of unwritten bytes show up.
  // A fresh allocation per block, freed only when the wave ends: TSan treats new heap memory
  // as unaccessed, and freeing it earlier would need an edge from this block's threads to the
  // scheduler, whose clock flows into every fiber it creates afterwards (hiding races between
  // blocks). AnnotateNewMemory is a no-op in GCC 12's TSan, so memory cannot be declared new in
  // place.
  // Guard bands of kSmemGuard poisoned bytes before and after it (with the rounding past the
  // launch's size) are checked at the block's end: a plain store outside the launch's dynamic
  // shared memory is an error, and a load there reads NaN, like unwritten memory.
  const size_t smem_bytes = smem_rounded(L.smem);
  const size_t total = smem_bytes + 2 * kSmemGuard;
  L.smem_blocks.emplace_back(static_cast<unsigned char*>(std::aligned_alloc(128, total)),
                             std::free);
  unsigned char* smem = L.smem_blocks.back().get() + kSmemGuard;
  L.smem_buf = smem;
  {
    tsan::Ignore ig;
    std::memset(smem - kSmemGuard, 0xff, total);
  }
  mbarrier_block_begin(L);
  for (NamedBarrier& nb : L.named) nb = NamedBarrier{};

  const dim3& b = L.block;
  int i = 0;
  for (unsigned z = 0; z < b.z; ++z) {
    for (unsigned y = 0; y < b.y; ++y) {
      for (unsigned x = 0; x < b.x; ++x, ++i) {
        Thread& t = threads[size_t(i)];
        t.tid = uint3{x, y, z};
        t.linear = i;
        t.tsan = L.fibers->get();
        t.launch = &L;
        t.fiber = fiber::create(L.stacks, thread_main, &t, L.sched_tsan);
      }
    }
  }
  // Launch -> thread start: this block's threads start after everything the launcher did,
  // including this block's set-up (its fibers may be pooled ones, created long before). The
  // launcher's clock holds nothing of this launch's other blocks, so this orders no blocks.
  tsan::release(L.launch_sync);
  try {
    for (;;) {
      bool ran = false;
      for (Thread& t : threads) {
        if (t.wait != Wait::none) continue;
        resume(L, t);
        ran = true;
        if (!L.error.empty()) NURI_CHECK(false, "emulated ", L.name, ": ", L.error);
      }
      const bool completed = complete_waits(L);
      bool all_done = true;
      for (const Thread& t : threads) all_done = all_done && t.wait == Wait::done;
      if (all_done) break;
      NURI_CHECK(ran || completed, deadlock_report(L));
    }
  } catch (...) {
    abandon(L);
    retire(L, threads);
    throw;
  }
  try {
    mbarrier_block_end(L);
    maxnreg_block_end(L);
    smem_guard_check(L);
  } catch (...) {
    retire(L, threads);
    throw;
  }
  counters_block_end(L);
  retire(L, threads);
}

uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

uint64_t base_seed() {
  if (!g_seed_set.load(std::memory_order_relaxed)) {
    const char* env = std::getenv("NURI_EMU_SEED");
    g_base_seed.store(env ? std::strtoull(env, nullptr, 0) : 0x6e757269ull,
                      std::memory_order_relaxed);
    g_seed_set.store(true, std::memory_order_relaxed);
  }
  return g_base_seed.load(std::memory_order_relaxed);
}
void set_base_seed(uint64_t seed) {
  g_base_seed.store(seed, std::memory_order_relaxed);
  g_seed_set.store(true, std::memory_order_relaxed);
  // So the same seed replays the same sequence of launches.
  g_launch_count.store(0, std::memory_order_relaxed);
}

namespace {

void launch_here(const char* name, dim3 grid, dim3 block, size_t smem_bytes,
                 const std::function<void()>& body, std::vector<MemoryRange> ranges,
                 Pools& pools);

}  // namespace

void forget_stream(const void* stream) {
  std::unique_ptr<Pools> gone;
  {
    std::lock_guard<tsan::QuietMutex> lock(g_pools_mu);
    auto it = pools_by_stream().find(stream);
    if (it == pools_by_stream().end()) return;
    gone = std::move(it->second);
    pools_by_stream().erase(it);
  }
}

void launch(const char* name, dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t stream,
            const std::function<void()>& body) {
  NURI_CHECK(g_launch == nullptr, "emulated ", name, ": a kernel launched from inside a kernel");
  // A GPU refuses a launch into a stream of another device than the calling thread's current
  // one (each thread has its own, device 0 until it calls cudaSetDevice).
  NURI_CHECK(stream_device(stream) == current_device(), "emulated ", name, ": launched into a "
             "stream of device ", stream_device(stream), " from a thread whose current device is ",
             current_device(), " (cudaSetDevice(", stream_device(stream), ") on this thread "
             "first): a GPU refuses it (cudaErrorInvalidResourceHandle)");
  // The whole launch (the scheduler and, through it, the block's threads) runs in the stream's
  // context: after what the stream and the host did before it, before what waits for the stream.
  // What takes the allocation table's lock runs on the host before and after: a lock taken in
  // the stream's context would carry its work's history to the host's next allocation.
  std::vector<MemoryRange> ranges = memory_ranges();
  Pools& pools = pools_of(stream);
  // One-time set-ups whose synchronization (call_once, a release-store) would otherwise be made
  // by the first launch's stream and acquired by every later launch's: made here, on the host.
  install_fault_handler();
  (void)counters_enabled();
  on_stream(stream, [&] {
    launch_here(name, grid, block, smem_bytes, body, std::move(ranges), pools);
  });
  const std::string canary = check_canaries();
  NURI_CHECK(canary.empty(), "emulated ", name, ": ", canary);
}

namespace {

void launch_here(const char* name, dim3 grid, dim3 block, size_t smem_bytes,
                 const std::function<void()>& caller_body, std::vector<MemoryRange> ranges,
                 Pools& pools) {
  // The kernel's threads read the body (the kernel's arguments) from a copy on the heap that the
  // stream's context frees: the caller's is on the host's stack, which the host reuses without
  // waiting for the stream.
  const auto owned_body = std::make_unique<const std::function<void()>>(caller_body);
  const std::function<void()>& body = *owned_body;
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  NURI_CHECK(threads >= 1 && threads <= 1024 && block.z <= 64, "emulated ", name, ": block ",
             block.x, "x", block.y, "x", block.z, " is not a valid CUDA block (1 to 1024 threads, z <= 64)");
  NURI_CHECK(grid.y <= 65535 && grid.z <= 65535, "emulated ", name, ": grid ", grid.x, "x",
             grid.y, "x", grid.z, " exceeds CUDA's limits (y, z <= 65535)");
  // The emulated device's opt-in maximum a block: 227 KiB (sm_90), less under
  // NURI_EMU_SMEM_PER_SM.
  const size_t max_smem = emulated_smem_per_sm() - 1024;
  NURI_CHECK(smem_bytes <= max_smem, "emulated ", name, ": ", smem_bytes,
             " bytes of dynamic shared memory exceed the ", max_smem, " a block may have");
  fiber::Stacks* const stacks = pools.stacks;
  FiberPool& fibers = pools.fibers;

  Launch L;
  L.name = name;
  L.grid = grid;
  L.block = block;
  L.smem = smem_bytes;
  L.body = &body;
  L.seed = splitmix(base_seed() + g_launch_count.fetch_add(1, std::memory_order_relaxed));
  L.ranges = std::move(ranges);
  L.threads_per_block = int(threads);
  L.stacks = stacks;
  L.fibers = &fibers;
  L.sched_tsan = tsan::current();
  counters_begin(L);

  std::vector<uint3> order;
  order.reserve(size_t(grid.x) * grid.y * grid.z);
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) order.push_back(uint3{x, y, z});
    }
  }
  std::mt19937_64 rng(L.seed);
  std::shuffle(order.begin(), order.end(), rng);

  tsan::release(L.launch_sync);
  g_launch = &L;
  const size_t blocks_per_wave = std::max<size_t>(kMinWaveBlocks, kWaveThreads / threads);
  try {
    for (size_t i = 0; i < order.size(); ++i) {
      if (i > 0 && i % blocks_per_wave == 0) {  // a new wave (see kWaveThreads)
        tsan::acquire(L.done_sync);
        L.smem_blocks.clear();
        L.thread_blocks.clear();
        fiber::recycle(stacks);
        fibers.recycle();
      }
      run_block(L, order[i]);
    }
  } catch (...) {
    g_launch = nullptr;
    tsan::acquire(L.done_sync);
    fiber::recycle(stacks);
    fibers.recycle();
    throw;
  }
  g_launch = nullptr;
  tsan::acquire(L.done_sync);
  L.smem_blocks.clear();
  L.thread_blocks.clear();
  fiber::recycle(stacks);
  fibers.recycle();
  counters_end(L);
}

}  // namespace

void describe_launch(char* buf, size_t n) {
  const Launch* L = g_launch;
  if (!L) {
    std::snprintf(buf, n, "host code, outside any kernel launch");
    return;
  }
  const uint3 b = L->block_idx;
  if (L->cur) {
    const uint3 t = L->cur->tid;
    std::snprintf(buf, n, "kernel %s, block (%u,%u,%u), thread (%u,%u,%u), block-order seed %llu",
                  L->name, b.x, b.y, b.z, t.x, t.y, t.z, (unsigned long long)L->seed);
  } else {
    std::snprintf(buf, n, "kernel %s, block (%u,%u,%u), block-order seed %llu", L->name, b.x, b.y,
                  b.z, (unsigned long long)L->seed);
  }
}

// ---- builtins -------------------------------------------------------------------------------------

uint3 thread_idx() {
  tsan::Ignore ig;
  return launch_state().cur->tid;
}
uint3 block_idx() {
  tsan::Ignore ig;
  return launch_state().block_idx;
}
dim3 block_dim() {
  tsan::Ignore ig;
  return launch_state().block;
}
dim3 grid_dim() {
  tsan::Ignore ig;
  return launch_state().grid;
}
void* dynamic_shared_memory() {
  tsan::Ignore ig;
  return launch_state().smem_buf;
}

void unwritten_min_max(bool is_max, float a, float b, Site site) {
  tsan::ignore_begin();  // not RAII: fail() parks inside it
  if (g_launch == nullptr || g_launch->cur == nullptr) {  // host code: no launch to stop
    tsan::ignore_end();
    return;
  }
  Launch& L = *g_launch;
  const auto bits = [](float v) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%08x", std::bit_cast<uint32_t>(v));
    return std::string(hex);
  };
  fail(L, *L.cur, std::string(is_max ? "max" : "min") + " at " + str(site) + " of " + bits(a) +
                      " and " + bits(b) + ": an operand is unwritten memory's poison (or a " +
                      "value computed from it), which max and min would drop for the other " +
                      "operand; the data it came from was never written");
}

void syncthreads(Site site) {
  tsan::ignore_begin();
  Launch& L = launch_state();
  Thread& t = *L.cur;
  t.wait = Wait::barrier;
  t.site = site;
  park(L, t);
  tsan::acquire(t.sync.get());  // sync ops still count inside an ignore region
  t.sync.reset();
  tsan::ignore_end();
}

void named_barrier(unsigned id, unsigned count, bool wait, Site site) {
  tsan::ignore_begin();  // not RAII: fail() parks inside it
  Launch& L = launch_state();
  Thread& t = *L.cur;
  const auto what = [&] {
    return std::string(wait ? "bar.sync " : "bar.arrive ") + std::to_string(id) + ", " +
           std::to_string(count) + " at " + str(site);
  };
  if (id == 0 || id > 15) {
    fail(L, t, what() + ": the named barriers are 1 to 15 (barrier 0 is __syncthreads')");
  }
  if (count == 0 || count % 32 || count > unsigned(L.threads_per_block)) {
    fail(L, t, what() + ": the thread count must be a positive multiple of 32 (whole warps) " +
                   "no larger than the block's " + std::to_string(L.threads_per_block));
  }
  NamedBarrier& nb = L.named[id];
  if (nb.syncs.empty()) nb.syncs.push_back(std::make_shared<char>(0));
  if (nb.arrived == 0) {
    nb.expected = count;
    nb.site = site;
    nb.per_thread.assign(size_t(L.threads_per_block), 0);
  } else if (count != nb.expected) {
    fail(L, t, what() + ": the phase in progress of barrier " + std::to_string(id) + " counts " +
                   std::to_string(nb.expected) + " threads (its first arrival at " +
                   str(nb.site) + ")");
  }
  tsan::release(nb.syncs.back().get());  // what this thread did happens before the phase's end
  ++nb.arrived;
  ++nb.per_thread[size_t(t.linear)];
  const uint64_t mine = nb.phase;
  if (nb.arrived == nb.expected) {
    // Warp-wide instructions: every thread of a warp arrived as often as its first thread.
    const std::vector<Thread>& ts = *L.threads;
    for (size_t i = 0; i < ts.size(); ++i) {
      const size_t first = i / 32 * 32;
      if (nb.per_thread[i] != nb.per_thread[first]) {
        fail(L, t, what() + " completes a phase of barrier " + std::to_string(id) +
                       " in which thread " + str(ts[i].tid) + " arrived " +
                       std::to_string(nb.per_thread[i]) + " time(s) and thread " +
                       str(ts[first].tid) + " of the same warp " +
                       std::to_string(nb.per_thread[first]) +
                       ": bar.sync and bar.arrive are warp-wide, every thread of a warp must "
                       "execute them together");
      }
    }
    ++nb.phase;
    nb.arrived = 0;
    nb.syncs.push_back(std::make_shared<char>(0));
    for (Thread& u : *L.threads) {
      if (u.wait != Wait::named || u.named != id) continue;
      u.sync = nb.syncs[size_t(mine)];
      u.wait = Wait::none;
    }
  }
  if (wait) {
    if (nb.phase > mine) {
      tsan::acquire(nb.syncs[size_t(mine)].get());
    } else {
      t.wait = Wait::named;
      t.site = site;
      t.named = id;
      park(L, t);
      tsan::acquire(t.sync.get());
      t.sync.reset();
    }
  }
  tsan::ignore_end();
}

}  // namespace nuri::emu
