// The emulator's scheduler: runs each block's threads as fibers (Boost.Context) on the calling OS
// thread, blocks in a seeded random order, and implements barriers and warp collectives as
// rendezvous. Under ThreadSanitizer every emulated thread is a TSan fiber and happens-before
// edges are added exactly where CUDA has them (launch -> thread start, __syncthreads, warp
// collectives, thread end -> launch completion); switching itself orders nothing, and the
// scheduler's own bookkeeping is hidden from the detector, so the races it reports are the
// kernel's.
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <sstream>
#include <vector>

#include "emu/emu.h"
#include "emu/fiber.h"
#include "emu/internal.h"
#include "emu/ptx_math.h"
#include "emu/tsan.h"
#include "nuri/core/error.h"

namespace nuri::emu {

namespace {

constexpr size_t kStackBytes = 256 * 1024;  // register tiles of attention kernels fit
constexpr size_t kMaxSharedBytes = 227 * 1024;  // sm_90's opt-in maximum per block

// ---- fiber stacks (fiber.cpp) and TSan fibers: reused across launches, never within one ---------
//
// Under TSan, memory or a TSan fiber that served one block and then another of the same launch
// would carry the first block's accesses or clock into the second: a stack slot reused by the
// next block looks like a race (AnnotateNewMemory, which would forget them, is a no-op in GCC 12's
// TSan), and a reused fiber would order the two blocks. Between launches both are harmless: the
// launcher acquires every thread's release at the end of a launch, and the next launch's fibers
// are ordered after it anyway (stream order). So resources go back to the pool at launch end.

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

 private:
  std::vector<void*> free_, used_;
};

// ---- state of a launch ----------------------------------------------------------------------------

enum class Wait { none, barrier, warp, done };

enum class OpKind { shfl, vote, syncwarp, mma, ldmatrix };

/// What a lane brings to a warp collective.
struct Arrival {
  OpKind kind = OpKind::shfl;
  int mode = 0;  // Shfl / Vote value, mma dtype, ldmatrix count*2+trans
  unsigned mask = 0;
  int arg = 0, width = 32;
  uint32_t in[12] = {};
  Site site;
};

struct AsyncCopy {
  void* dst;
  const void* src;
  int bytes, src_bytes;
};

struct Launch;

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
};

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
  char launch_sync = 0, done_sync = 0;
  uint3 block_idx{};
  unsigned char* smem_buf = nullptr;
  std::vector<Thread>* threads = nullptr;
  Thread* cur = nullptr;
  std::string error;  // set by a fiber that found misuse
  std::vector<std::unique_ptr<unsigned char, void (*)(void*)>> smem_blocks;  // freed at the end
  std::vector<std::unique_ptr<std::vector<Thread>>> thread_blocks;           // freed at the end
};

thread_local Launch* g_launch = nullptr;
uint64_t g_base_seed = 0;
bool g_seed_set = false;
uint64_t g_launch_count = 0;

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

// ---- static __shared__: the module's thread-local block, declared new for every block ----------

struct TlsRange {
  void* data;
  size_t size;
};

/// This OS thread's thread-local blocks of every loaded module (static __shared__ arrays are
/// thread-locals of whichever module holds the kernel).
std::vector<TlsRange> thread_local_blocks() {
  std::vector<TlsRange> r;
#if NURI_EMU_TSAN
  dl_iterate_phdr(
      [](dl_phdr_info* pi, size_t, void* arg) -> int {
        auto* out = static_cast<std::vector<TlsRange>*>(arg);
        for (int i = 0; i < pi->dlpi_phnum; ++i) {
          if (pi->dlpi_phdr[i].p_type == PT_TLS && pi->dlpi_tls_data) {
            out->push_back({pi->dlpi_tls_data, size_t(pi->dlpi_phdr[i].p_memsz)});
          }
        }
        return 0;
      },
      &r);
#endif
  return r;
}

// ---- warp collectives -----------------------------------------------------------------------------

uint16_t half_of(uint32_t w, int i) { return uint16_t(i ? w >> 16 : w & 0xffffu); }

/// Computes the results of one completed collective for every lane of `lanes` (indices into
/// the warp's threads, by lane number; null for lanes that do not exist).
std::string compute(const Arrival& op, Thread* const lanes[32]) {
  switch (op.kind) {
    case OpKind::shfl: {
      const int width = op.width;
      const int segmask = ~(width - 1) & 31;
      const int cval = Shfl(op.mode) == Shfl::up ? 0 : 31;
      for (int lane = 0; lane < 32; ++lane) {
        if (!lanes[lane] || !(op.mask >> lane & 1u)) continue;
        const int b = lanes[lane]->op.arg & 31;
        const int max_lane = (lane & segmask) | (cval & ~segmask);
        const int min_lane = lane & segmask;
        int j = lane;
        bool pval = false;
        switch (Shfl(op.mode)) {
          case Shfl::up: j = lane - b; pval = j >= max_lane; break;
          case Shfl::down: j = lane + b; pval = j <= max_lane; break;
          case Shfl::bfly: j = lane ^ b; pval = j <= max_lane; break;
          case Shfl::idx: j = min_lane | (b & ~segmask); pval = j <= max_lane; break;
        }
        if (!pval) j = lane;
        if (!(op.mask >> j & 1u)) {  // PTX leaves this undefined; here it is an error
          std::ostringstream os;
          os << "shuffle at " << str(op.site) << ": lane " << lane << " reads lane " << j
             << ", which is not in the mask 0x" << std::hex << op.mask;
          return os.str();
        }
        lanes[lane]->out[0] = lanes[j]->op.in[0];
      }
      break;
    }
    case OpKind::vote: {
      unsigned ballot = 0;
      for (int lane = 0; lane < 32; ++lane) {
        if (lanes[lane] && (op.mask >> lane & 1u) && lanes[lane]->op.in[0]) ballot |= 1u << lane;
      }
      uint32_t r = ballot;
      if (Vote(op.mode) == Vote::any) r = ballot != 0;
      if (Vote(op.mode) == Vote::all) r = ballot == op.mask;
      for (int lane = 0; lane < 32; ++lane) {
        if (lanes[lane] && (op.mask >> lane & 1u)) lanes[lane]->out[0] = r;
      }
      break;
    }
    case OpKind::syncwarp:
      break;
    case OpKind::mma: {
      // Gather A [16x16], B [16x8] (K x N), C [16x8] from the fragments (EMULATION.md layout).
      float A[16][16], B[16][8], C[16][8];
      const bool bf16 = op.mode == 1;
      for (int lane = 0; lane < 32; ++lane) {
        const uint32_t* in = lanes[lane]->op.in;
        const int g = lane >> 2, t = lane % 4;
        const int arow[4] = {g, g + 8, g, g + 8}, acol[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
        for (int r = 0; r < 4; ++r) {
          for (int h = 0; h < 2; ++h) A[arow[r]][acol[r] + h] = half_to_float(half_of(in[r], h), bf16);
        }
        for (int r = 0; r < 2; ++r) {
          for (int h = 0; h < 2; ++h) B[2 * t + 8 * r + h][g] = half_to_float(half_of(in[4 + r], h), bf16);
        }
        float c[4];
        std::memcpy(c, in + 6, sizeof c);
        C[g][2 * t] = c[0];
        C[g][2 * t + 1] = c[1];
        C[g + 8][2 * t] = c[2];
        C[g + 8][2 * t + 1] = c[3];
      }
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane >> 2, t = lane % 4;
        const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
        for (int r = 0; r < 4; ++r) {
          float acc = C[rows[r]][cols[r]];
          for (int k = 0; k < 16; ++k) acc += A[rows[r]][k] * B[k][cols[r]];  // exact products
          std::memcpy(&lanes[lane]->out[r], &acc, 4);
        }
      }
      break;
    }
    case OpKind::ldmatrix: {
      const int count = op.mode >> 1;
      const bool trans = op.mode & 1;
      for (int lane = 0; lane < 32; ++lane) {
        const int q = lane >> 2, t = lane % 4;
        for (int j = 0; j < count; ++j) {
          uint32_t lo, hi;
          if (!trans) {  // {M_j[q][2t], M_j[q][2t+1]}: word t of row q
            const uint32_t w = lanes[8 * j + q]->op.in[t];
            lo = half_of(w, 0);
            hi = half_of(w, 1);
          } else {  // {M_j[2t][q], M_j[2t+1][q]}
            lo = half_of(lanes[8 * j + 2 * t]->op.in[q / 2], q % 2);
            hi = half_of(lanes[8 * j + 2 * t + 1]->op.in[q / 2], q % 2);
          }
          lanes[lane]->out[j] = lo | hi << 16;
        }
      }
      break;
    }
  }
  return "";
}

/// Deposits this lane's part of a warp collective, waits for the others, and returns with
/// t.out holding its result.
void warp_collective(const Arrival& a) {
  tsan::ignore_begin();
  Launch& L = launch_state();
  Thread& t = *L.cur;
  const int lane = t.linear % 32;
  if (!(a.mask >> lane & 1u)) {
    std::ostringstream os;
    os << "warp collective at " << str(a.site) << ": the calling lane " << lane
       << " is not in the mask 0x" << std::hex << a.mask;
    fail(L, t, os.str());
  }
  const int warp_base = t.linear - lane;
  for (int l = 0; l < 32; ++l) {
    if ((a.mask >> l & 1u) && warp_base + l >= L.threads_per_block) {
      std::ostringstream os;
      os << "warp collective at " << str(a.site) << ": mask 0x" << std::hex << a.mask << std::dec
         << " names lane " << l << ", which does not exist (the block has " << L.threads_per_block
         << " threads)";
      fail(L, t, os.str());
    }
  }
  t.op = a;
  t.wait = Wait::warp;
  t.site = a.site;
  park(L, t);
  tsan::acquire(t.sync.get());  // sync ops still count inside an ignore region
  t.sync.reset();
  tsan::ignore_end();
}

}  // namespace

// ---- scheduler ------------------------------------------------------------------------------------

namespace {

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

/// Completes what can be completed: warp collectives whose lanes have all arrived, and the
/// barrier once every live thread waits at it. Throws on misuse. Returns whether any completed.
bool complete_waits(Launch& L) {
  std::vector<Thread>& ts = *L.threads;
  const int n = int(ts.size());
  bool progress = false;
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
        if (u->wait == Wait::none) {
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
      rendezvous(L, group);
      progress = true;
    }
  }
  // The barrier: every live thread at the same __syncthreads.
  std::vector<Thread*> waiting;
  Thread* exited = nullptr;
  for (Thread& t : ts) {
    if (t.wait == Wait::none || t.wait == Wait::warp) return progress;
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
    os << " thread " << str(t.tid) << " waits "
       << (t.wait == Wait::barrier ? "at __syncthreads at " : "in a warp collective at ")
       << str(t.site) << ";";
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
  char* const done = &L.done_sync;
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
  L.threads = nullptr;
  L.cur = nullptr;
}

/// The life of one emulated thread, on its fiber.
void thread_main(void* arg) {
  Thread& self = *static_cast<Thread*>(arg);
  Launch& launch = *self.launch;  // read before the ignore region ends
  tsan::ignore_end();             // opened by the scheduler's first switch to this fiber
  tsan::acquire(&launch.launch_sync);
  (*launch.body)();
  tsan::release(&launch.done_sync);
  tsan::ignore_begin();
  if (!self.open_copies.empty() || !self.groups.empty()) {
    fail(launch, self, "a thread exited with cp.async copies it never waited for (cp_async_wait)");
  }
  self.wait = Wait::done;
}

void run_block(Launch& L, const uint3& bid) {
  L.block_idx = bid;
  // Kept until the launch ends, like the shared memory below (freeing needs an edge from the
  // threads to the scheduler).
  L.thread_blocks.push_back(std::make_unique<std::vector<Thread>>(size_t(L.threads_per_block)));
  std::vector<Thread>& threads = *L.thread_blocks.back();
  L.threads = &threads;
  // Fresh, poisoned dynamic shared memory (NaN bytes): reads of unwritten bytes show up.
  // A fresh allocation per block, freed only when the launch ends: TSan treats new heap memory
  // as unaccessed, and freeing it earlier would need an edge from this block's threads to the
  // scheduler, whose clock flows into every fiber it creates afterwards (hiding races between
  // blocks). AnnotateNewMemory is a no-op in GCC 12's TSan, so memory cannot be declared new in
  // place.
  const size_t smem_bytes = (std::max<size_t>(L.smem, 16) + 127) / 128 * 128;
  L.smem_blocks.emplace_back(static_cast<unsigned char*>(std::aligned_alloc(128, smem_bytes)),
                             std::free);
  unsigned char* smem = L.smem_blocks.back().get();
  L.smem_buf = smem;
  {
    tsan::Ignore ig;
    std::memset(smem, 0xff, smem_bytes);
  }
  // Static __shared__ arrays are reused by the next block on this OS thread: declare them new.
  static thread_local const std::vector<TlsRange> tls = thread_local_blocks();
  for (const TlsRange& r : tls) tsan::new_memory(r.data, r.size);

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
  tsan::release(&L.launch_sync);
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
  if (!g_seed_set) {
    const char* env = std::getenv("NURI_EMU_SEED");
    g_base_seed = env ? std::strtoull(env, nullptr, 0) : 0x6e757269ull;
    g_seed_set = true;
  }
  return g_base_seed;
}
void set_base_seed(uint64_t seed) {
  g_base_seed = seed;
  g_seed_set = true;
  g_launch_count = 0;  // so the same seed replays the same sequence of launches
}

void launch(const char* name, dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t,
            const std::function<void()>& body) {
  NURI_CHECK(g_launch == nullptr, "emulated ", name, ": a kernel launched from inside a kernel");
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  NURI_CHECK(threads >= 1 && threads <= 1024 && block.z <= 64, "emulated ", name, ": block ",
             block.x, "x", block.y, "x", block.z, " is not a valid CUDA block (1 to 1024 threads, z <= 64)");
  NURI_CHECK(grid.y <= 65535 && grid.z <= 65535, "emulated ", name, ": grid ", grid.x, "x",
             grid.y, "x", grid.z, " exceeds CUDA's limits (y, z <= 65535)");
  NURI_CHECK(smem_bytes <= kMaxSharedBytes, "emulated ", name, ": ", smem_bytes,
             " bytes of dynamic shared memory exceed the ", kMaxSharedBytes, " a block may have");
  install_fault_handler();
  static thread_local fiber::Stacks* stacks = fiber::new_stacks();
  static thread_local FiberPool fibers;

  Launch L;
  L.name = name;
  L.grid = grid;
  L.block = block;
  L.smem = smem_bytes;
  L.body = &body;
  L.seed = splitmix(base_seed() + g_launch_count++);
  L.threads_per_block = int(threads);
  L.stacks = stacks;
  L.fibers = &fibers;
  L.sched_tsan = tsan::current();

  std::vector<uint3> order;
  order.reserve(size_t(grid.x) * grid.y * grid.z);
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) order.push_back(uint3{x, y, z});
    }
  }
  std::mt19937_64 rng(L.seed);
  std::shuffle(order.begin(), order.end(), rng);

  tsan::release(&L.launch_sync);
  g_launch = &L;
  try {
    for (const uint3& bid : order) run_block(L, bid);
  } catch (...) {
    g_launch = nullptr;
    tsan::acquire(&L.done_sync);
    fiber::recycle(stacks);
    fibers.recycle();
    throw;
  }
  g_launch = nullptr;
  tsan::acquire(&L.done_sync);
  L.smem_blocks.clear();
  L.thread_blocks.clear();
  fiber::recycle(stacks);
  fibers.recycle();
  const std::string canary = check_canaries();
  NURI_CHECK(canary.empty(), "emulated ", name, ": ", canary, " (block-order seed ", L.seed, ")");
}

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

void syncwarp(unsigned mask, Site site) {
  Arrival a;
  a.kind = OpKind::syncwarp;
  a.mask = mask;
  a.site = site;
  warp_collective(a);
}

uint32_t shfl(Shfl mode, unsigned mask, uint32_t value, int lane_arg, int width, Site site) {
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    tsan::ignore_begin();
    Launch& L = launch_state();
    fail(L, *L.cur, "shuffle at " + str(site) + ": width " + std::to_string(width) +
                        " is not a power of two in [1, 32]");
  }
  Arrival a;
  a.kind = OpKind::shfl;
  a.mode = int(mode);
  a.mask = mask;
  a.arg = lane_arg;
  a.width = width;
  a.in[0] = value;
  a.site = site;
  warp_collective(a);
  tsan::Ignore ig;
  return launch_state().cur->out[0];
}

unsigned vote(Vote mode, unsigned mask, bool predicate, Site site) {
  Arrival a;
  a.kind = OpKind::vote;
  a.mode = int(mode);
  a.mask = mask;
  a.in[0] = predicate;
  a.site = site;
  warp_collective(a);
  tsan::Ignore ig;
  return launch_state().cur->out[0];
}

void mma_m16n8k16(bool bf16, float d[4], const uint32_t a[4], const uint32_t b[2],
                  const float c[4], Site site) {
  Arrival op;
  op.kind = OpKind::mma;
  op.mode = bf16 ? 1 : 0;
  op.mask = 0xffffffffu;
  op.site = site;
  std::memcpy(op.in, a, 16);
  std::memcpy(op.in + 4, b, 8);
  std::memcpy(op.in + 6, c, 16);
  warp_collective(op);
  tsan::Ignore ig;
  std::memcpy(d, launch_state().cur->out, 16);
}

void ldmatrix(int count, bool trans, const void* row, uint32_t* out, Site site) {
  Launch* L = nullptr;
  int lane = 0;
  {
    tsan::Ignore ig;
    L = &launch_state();
    lane = L->cur->linear % 32;
    if (count != 1 && count != 2 && count != 4) {
      fail(*L, *L->cur, "ldmatrix at " + str(site) + ": .x" + std::to_string(count) +
                            " (must be x1, x2 or x4)");
    }
    if (lane < 8 * count && reinterpret_cast<uintptr_t>(row) % 16 != 0) {
      fail(*L, *L->cur, "ldmatrix at " + str(site) + ": lane " + std::to_string(lane) +
                            " gives a row address that is not 16-byte aligned");
    }
  }
  Arrival op;
  op.kind = OpKind::ldmatrix;
  op.mode = count * 2 + (trans ? 1 : 0);
  op.mask = 0xffffffffu;
  op.site = site;
  if (lane < 8 * count) std::memcpy(op.in, row, 16);  // this lane's read, seen by TSan
  warp_collective(op);
  tsan::Ignore ig;
  std::memcpy(out, L->cur->out, size_t(count) * 4);
}

// ---- cp.async: deferred completion by a per-thread copy unit --------------------------------------

namespace {

/// Runs `f` as this thread's asynchronous copy unit: a separate TSan context, so an access by
/// the thread (or by others) to a destination before the wait that completes it is a race.
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

}  // namespace

void cp_async(void* dst, const void* src, int bytes, int src_bytes, Site site) {
  Launch* L;
  Thread* t;
  {
    tsan::Ignore ig;
    L = &launch_state();
    t = L->cur;
    if (bytes != 4 && bytes != 8 && bytes != 16) {
      fail(*L, *t, "cp.async at " + str(site) + ": " + std::to_string(bytes) +
                       " bytes (must be 4, 8 or 16)");
    }
    if (src_bytes < 0 || src_bytes > bytes) {
      fail(*L, *t, "cp.async at " + str(site) + ": src-size " + std::to_string(src_bytes) +
                       " outside [0, " + std::to_string(bytes) + "]");
    }
    if (reinterpret_cast<uintptr_t>(dst) % unsigned(bytes) ||
        reinterpret_cast<uintptr_t>(src) % unsigned(bytes)) {
      fail(*L, *t, "cp.async at " + str(site) + ": addresses not aligned to " +
                       std::to_string(bytes) + " bytes");
    }
    t->open_copies.push_back({dst, src, bytes, src_bytes});
  }
  // Poison the destination now, as the copy unit: the data arrives only at the wait.
  as_copy_unit(*t, true, [&] { std::memset(dst, 0xff, size_t(bytes)); });
}

void cp_async_commit(Site) {
  tsan::Ignore ig;
  Thread& t = *launch_state().cur;
  t.groups.push_back(std::move(t.open_copies));
  t.open_copies.clear();
}

void cp_async_wait(int pending, Site site) {
  Thread* t;
  std::vector<AsyncCopy> done;
  {
    tsan::Ignore ig;
    Launch& L = launch_state();
    t = L.cur;
    if (pending < 0) fail(L, *t, "cp.async.wait_group at " + str(site) + ": negative count");
    while (int(t->groups.size()) > pending) {
      for (const AsyncCopy& c : t->groups.front()) done.push_back(c);
      t->groups.erase(t->groups.begin());
    }
  }
  if (done.empty()) return;
  as_copy_unit(*t, false, [&] {
    for (size_t i = 0;; ++i) {
      AsyncCopy c;
      {
        tsan::Ignore ig;  // the list is bookkeeping; the copies below are the unit's accesses
        if (i >= done.size()) break;
        c = done[i];
      }
      std::memcpy(c.dst, c.src, size_t(c.src_bytes));
      std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, size_t(c.bytes - c.src_bytes));
    }
  });
  tsan::acquire(&t->engine_done);
}

}  // namespace nuri::emu
