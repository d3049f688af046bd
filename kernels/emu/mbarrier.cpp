// mbarrier and cp.async.bulk under the emulator (emu.h states the semantics). The barrier's
// state lives in the launch (per block, by address); its 8 bytes of shared memory hold a tag
// written by init, which every operation reads as the thread: a plain store over a live barrier
// is caught by the tag, and an operation not ordered after the init is a race under TSan.
// Arrivals release the phase's sync object and the waiters of that phase acquire it; bulk
// copies run on the issuing thread's copy unit when the scheduler finds every thread parked, so
// their data shows up as late as the hardware may deliver it.
#include <algorithm>
#include <cstring>
#include <sstream>

#include "emu/internal.h"
#include "emu/state.h"
#include "nuri/core/error.h"

namespace nuri::emu {

using namespace detail;

namespace {

constexpr unsigned kMaxCount = (1u << 20) - 1;  // the PTX ISA's limit on counts and tx bytes

uint64_t tag_of(const void* bar) { return 0x4d42415252494552ull ^ reinterpret_cast<uintptr_t>(bar); }

std::string offset_of(const Launch& L, const void* p) {
  return std::to_string(static_cast<const unsigned char*>(p) - L.smem_buf);
}

bool in_smem(const Launch& L, const void* p, size_t bytes) {
  const auto* c = static_cast<const unsigned char*>(p);
  return c >= L.smem_buf && c + bytes <= L.smem_buf + L.smem;
}

std::string what_of(const Launch& L, const void* bar, const Site& site, const char* op) {
  return std::string(op) + " at " + str(site) + " on the mbarrier at shared offset " +
         offset_of(L, bar);
}

/// The live barrier at `bar`, after checking the address and the tag; null-free: fails instead.
/// Called inside an ignore region.
MBarrier& live(Launch& L, Thread& t, const void* bar, const Site& site, const char* op) {
  if (!in_smem(L, bar, 8)) {
    fail(L, t, std::string(op) + " at " + str(site) +
                   ": the mbarrier is not in this block's dynamic shared memory");
  }
  auto it = L.mbarriers.find(bar);
  if (it == L.mbarriers.end()) {
    fail(L, t, what_of(L, bar, site, op) + ": not initialized (or invalidated): mbarrier.init first, then a " +
                   "__syncthreads before other threads use it");
  }
  uint64_t word;
  std::memcpy(&word, bar, 8);
  if (word != tag_of(bar)) {
    fail(L, t, what_of(L, bar, site, op) + ": its 8 bytes were overwritten by a plain store " +
                   "since mbarrier.init at " + str(it->second.init_site));
  }
  return it->second;
}

/// The thread's read of the barrier's 8 bytes, outside any ignore region: under TSan a use that
/// is not ordered after the init's write is a race.
void touch(const void* bar) {
  uint64_t word;
  std::memcpy(&word, const_cast<const void*>(bar), 8);
  asm volatile("" : : "r"(word));
}

/// live() for the running thread, then the thread's read of the 8 bytes (outside the ignore
/// region). std::map keeps the reference valid while the block runs.
MBarrier& checked(const void* bar, const Site& site, const char* op) {
  MBarrier* b;
  {
    tsan::ignore_begin();  // not RAII: fail() parks inside it
    Launch& L = launch_state();
    b = &live(L, *L.cur, bar, site, op);
    tsan::ignore_end();
  }
  touch(bar);
  return *b;
}

/// Completes the current phase if nothing is pending.
void maybe_complete(MBarrier& b) {
  if (b.pending != 0 || b.tx != 0) return;
  ++b.phase;
  b.pending = b.expected;
  b.syncs.push_back(std::shared_ptr<char>(new char(0)));
}

void check_tx(Launch& L, Thread& t, const MBarrier& b, const void* bar, const Site& site,
              const char* op) {
  if (b.tx > int64_t(kMaxCount) || b.tx < -int64_t(kMaxCount)) {
    fail(L, t, what_of(L, bar, site, op) + ": transaction count " + std::to_string(b.tx) +
                   " bytes outside the PTX range ±(2^20 - 1)");
  }
}

}  // namespace

void mbarrier_init(void* bar, unsigned count, Site site) {
  {
    tsan::ignore_begin();  // not RAII: fail() parks inside it
    Launch& L = launch_state();
    Thread& t = *L.cur;
    if (!in_smem(L, bar, 8)) {
      fail(L, t, "mbarrier.init at " + str(site) +
                     ": the mbarrier is not in this block's dynamic shared memory");
    }
    if (reinterpret_cast<uintptr_t>(bar) % 8) {
      fail(L, t, what_of(L, bar, site, "mbarrier.init") + ": not 8-byte aligned");
    }
    if (count == 0 || count > kMaxCount) {
      fail(L, t, what_of(L, bar, site, "mbarrier.init") + ": expected count " +
                     std::to_string(count) + " outside [1, 2^20 - 1]");
    }
    auto it = L.mbarriers.find(bar);
    if (it != L.mbarriers.end()) {
      fail(L, t, what_of(L, bar, site, "mbarrier.init") + ": the barrier is live (initialized at " +
                     str(it->second.init_site) + "); mbarrier.inval it first");
    }
    MBarrier b;
    b.expected = b.pending = count;
    b.init_site = site;
    b.init_thread = &t;
    b.syncs.push_back(std::shared_ptr<char>(new char(0)));
    L.mbarriers.emplace(bar, std::move(b));
    tsan::ignore_end();
  }
  const uint64_t tag = tag_of(bar);
  std::memcpy(bar, &tag, 8);  // the thread's write: later uses must be ordered after it
}

void mbarrier_inval(void* bar, Site site) {
  checked(bar, site, "mbarrier.inval");
  {
    tsan::ignore_begin();  // not RAII: fail() parks inside it
    Launch& L = launch_state();
    Thread& t = *L.cur;
    for (const Thread& u : *L.threads) {
      if (u.wait == Wait::mbarrier && u.mbar == bar) {
        fail(L, t, what_of(L, bar, site, "mbarrier.inval") + ": thread " + str(u.tid) +
                       " still waits on it at " + str(u.site));
      }
    }
    for (const BulkCopy& c : L.bulk) {
      if (c.bar == bar) {
        fail(L, t, what_of(L, bar, site, "mbarrier.inval") + ": a bulk copy issued at " +
                       str(c.site) + " will still complete on it");
      }
    }
    L.mbarriers.erase(bar);
    tsan::ignore_end();
  }
  std::memset(bar, 0, 8);  // plain shared memory again
}

uint64_t mbarrier_arrive(void* bar, unsigned count, Site site) {
  MBarrier& b = checked(bar, site, "mbarrier.arrive");
  tsan::ignore_begin();  // not RAII: fail() parks inside it
  Launch& L = launch_state();
  Thread& t = *L.cur;
  if (count == 0 || count > b.pending) {
    fail(L, t, what_of(L, bar, site, "mbarrier.arrive") + ": " + std::to_string(count) +
                   " arrival(s) when phase " + std::to_string(b.phase) + " has " +
                   std::to_string(b.pending) + " of its " + std::to_string(b.expected) +
                   " pending (more arrivals than the barrier expects)");
  }
  const uint64_t token = b.phase;
  tsan::release(b.syncs.back().get());  // what this thread did happens before the phase's end
  b.pending -= count;
  maybe_complete(b);
  tsan::ignore_end();
  return token;
}

void mbarrier_expect_tx(void* bar, unsigned bytes, Site site) {
  MBarrier& b = checked(bar, site, "mbarrier.expect_tx");
  tsan::ignore_begin();  // not RAII: fail() parks inside it
  Launch& L = launch_state();
  Thread& t = *L.cur;
  b.tx += int64_t(bytes);
  check_tx(L, t, b, bar, site, "mbarrier.expect_tx");
  tsan::ignore_end();
}

uint64_t mbarrier_arrive_expect_tx(void* bar, unsigned bytes, Site site) {
  mbarrier_expect_tx(bar, bytes, site);
  return mbarrier_arrive(bar, 1, site);
}

bool mbarrier_try_wait_parity(void* bar, unsigned parity, Site site) {
  MBarrier& b = checked(bar, site, "mbarrier.try_wait.parity");
  tsan::ignore_begin();
  Launch& L = launch_state();
  Thread& t = *L.cur;
  if (parity > 1) {
    fail(L, t, what_of(L, bar, site, "mbarrier.try_wait.parity") + ": parity " +
                   std::to_string(parity) + " (must be 0 or 1)");
  }
  if (b.phase % 2 != parity) {
    // The phase of this parity is the one before the current: done (before the first phase,
    // parity 1 names the phase "before" it, which counts as complete: a producer's first wait
    // on an empty buffer). Phase k's sync is syncs[k].
    if (b.phase > 0) tsan::acquire(b.syncs[size_t(b.phase - 1)].get());
    tsan::ignore_end();
    return true;
  }
  t.wait = Wait::mbarrier;
  t.site = site;
  t.mbar = bar;
  t.parity = parity;
  park(L, t);
  tsan::acquire(t.sync.get());
  t.sync.reset();
  tsan::ignore_end();
  return true;
}

void cp_async_bulk_global_to_shared(void* dst, const void* src, unsigned bytes, void* bar,
                                    Site site) {
  cp_async_bulk_enqueue(dst, src, bytes, bar, nullptr, site);
}

namespace detail {

void cp_async_bulk_enqueue(void* dst, const void* src, unsigned bytes, void* bar,
                           std::shared_ptr<TensorCopy> tensor, Site site) {
  const char* op = tensor ? "cp.async.bulk.tensor" : "cp.async.bulk";
  checked(bar, site, op);
  Thread* t;
  {
    tsan::ignore_begin();  // not RAII: fail() parks inside it
    Launch& L = launch_state();
    t = L.cur;
    if (bytes == 0 || bytes % 16) {
      fail(L, *t, std::string(op) + " at " + str(site) + ": " + std::to_string(bytes) +
                      " bytes (must be a positive multiple of 16)");
    }
    // (src is null for a tensor load)
    if (reinterpret_cast<uintptr_t>(dst) % 16 || reinterpret_cast<uintptr_t>(src) % 16) {
      fail(L, *t, std::string(op) + " at " + str(site) + ": addresses not 16-byte aligned");
    }
    if (!in_smem(L, dst, bytes)) {
      fail(L, *t, std::string(op) + " at " + str(site) + ": the destination (" +
                      std::to_string(bytes) + " bytes) is not inside this block's dynamic " +
                      "shared memory");
    }
    if (!tensor && !range_of(L, src, bytes)) {
      fail(L, *t, std::string(op) + " at " + str(site) + ": the " + std::to_string(bytes) +
                      "-byte source is not inside a device allocation (cudaMalloc) or pinned " +
                      "host memory (cudaMallocHost): a GPU faults on it");
    }
    const MBarrier& b = L.mbarriers.at(bar);  // live: checked above
    if (!b.async_visible) {
      fail(L, *t, what_of(L, bar, site, op) + ": the barrier's init at " + str(b.init_site) +
                      " was not followed by a fence.proxy.async of the thread that made it, so " +
                      "the copy's complete_tx may not see it: call fence_proxy_async() after " +
                      "mbarrier_init, before the __syncthreads that publishes the barrier");
    }
    L.bulk.push_back({dst, src, bytes, bar, t, site, std::move(tensor)});
    tsan::ignore_end();
  }
  // Poisoned now by the copy unit, written when the copy completes. The thread takes the
  // poisoning's history (so it happens before the launch's end even if the copy never
  // completes); the race that matters is with the write at completion.
  as_copy_unit(*t, true, [&] { std::memset(dst, 0xff, bytes); });
  tsan::acquire(&t->engine_done);
  tsan::Ignore ig;
  Launch& L = launch_state();
  async_view_wrote(L, size_t(static_cast<unsigned char*>(dst) - L.smem_buf), bytes);
}

void async_view_wrote(Launch& L, size_t off, size_t bytes) {
  // A tensor box's swizzle moves 16-byte chunks only within their 128-byte row.
  const size_t end = std::min(L.smem, (off + bytes + 127) / 128 * 128);
  if (L.async_view.size() < end) return;  // no dynamic shared memory there
  std::memcpy(L.async_view.data() + off, L.smem_buf + off, end - off);
}

int64_t async_view_stale(const Launch& L, const uint32_t* offs, size_t count, size_t width) {
  const unsigned char* const view = L.async_view.data();
  for (size_t i = 0; i < count; ++i) {
    const size_t o = offs[i];
    if (o + width > L.async_view.size()) continue;  // reported by the caller's bounds check
    for (size_t j = 0; j < width; ++j) {
      if (view[o + j] != L.smem_buf[o + j]) return int64_t(o + j);
    }
  }
  return -1;
}

std::string async_view_report(int64_t off, const std::string& reader) {
  return "shared memory byte " + std::to_string(off) + " was written by a plain (generic-proxy) " +
         "store that no fence.proxy.async has made visible to the async proxy, and " + reader +
         " reads it: call fence_proxy_async() after the stores (in the threads that made them), " +
         "before the barrier that orders them with the issue";
}

}  // namespace detail

void fence_proxy_async(Site) {
  tsan::Ignore ig;
  Launch& L = launch_state();
  const Thread* t = L.cur;
  // This thread's inits become visible to the copies; the whole of shared memory to the async
  // proxy (the emulator cannot tell which thread stored which bytes).
  for (auto& [bar, b] : L.mbarriers) {
    if (b.init_thread == t) b.async_visible = true;
  }
  if (!L.async_view.empty()) std::memcpy(L.async_view.data(), L.smem_buf, L.async_view.size());
}

namespace detail {

void mbarrier_block_begin(Launch& L) {
  {
    tsan::Ignore ig;  // bookkeeping, not an access of the block's
    L.async_view.assign(L.smem_buf, L.smem_buf + L.smem);  // the poison both proxies see
  }
  L.mbarriers.clear();
  L.bulk.clear();
  L.maxnreg.clear();
  L.wgmma_used = false;
}

void mbarrier_block_end(Launch& L) {
  if (L.bulk.empty()) return;
  const BulkCopy& c = L.bulk.front();
  NURI_CHECK(false, "emulated ", L.name, ": the block ended with ", L.bulk.size(),
             " cp.async.bulk copies in flight (the first issued at ", str(c.site), " by thread ",
             str(c.issuer->tid), "); wait on their mbarrier before exiting [block ",
             str(L.block_idx), ", block-order seed ", L.seed, "]");
}

bool mbarrier_progress(Launch& L) {
  if (L.mbarriers.empty() && L.bulk.empty()) return false;  // the common case: none in use
  bool progress = false;
  // The copies: each on its issuer's copy unit, then its bytes complete on the barrier. Not
  // once every thread has exited: a copy nobody waited for is then still in flight at the
  // block's end (mbarrier_block_end).
  bool running = false;
  for (const Thread& t : *L.threads) running = running || t.wait != Wait::done;
  if (!running) return false;
  std::vector<BulkCopy> copies;
  copies.swap(L.bulk);
  void* const sched = L.sched_tsan;
  char* const done = L.done_sync;
  for (const BulkCopy& c : copies) {
    auto it = L.mbarriers.find(c.bar);
    NURI_CHECK(it != L.mbarriers.end(), "emulated ", L.name,
               ": the mbarrier of the cp.async.bulk issued at ", str(c.site),
               " was invalidated before the copy completed");
    MBarrier& b = it->second;
    Thread& t = *c.issuer;
    if (!t.engine) t.engine = tsan::create("cp.async unit");
    // Only the copy and the release run in the unit's context; what they need is loaded first.
    void* const engine = t.engine;
    char* const phase_sync = b.syncs.back().get();
    void* const dst = c.dst;
    const void* const src = c.src;
    const size_t n = c.bytes;
    const TensorCopy* const tensor = c.tensor.get();
    tsan::switch_to(engine);
    if (tensor) {
      tensor_copy(*tensor);  // the unit's accesses (it holds no ignore region)
    } else {
      std::memcpy(dst, src, n);
    }
    tsan::release(phase_sync);
    tsan::release(done);  // before the launch's end, which frees the shared memory
    tsan::switch_to(sched);
    {
      tsan::Ignore ig;
      const size_t off = tensor ? tensor->smem_off : size_t(static_cast<unsigned char*>(dst) - L.smem_buf);
      async_view_wrote(L, off, n);
    }
    b.tx -= int64_t(c.bytes);
    NURI_CHECK(b.tx >= -int64_t(kMaxCount), "emulated ", L.name,
               ": cp.async.bulk completions drove the transaction count of the mbarrier at "
               "shared offset ", offset_of(L, c.bar), " to ", b.tx, " bytes");
    maybe_complete(b);
    progress = true;
  }
  // Waiters whose phase has completed.
  for (Thread& t : *L.threads) {
    if (t.wait != Wait::mbarrier) continue;
    const MBarrier& b = L.mbarriers.at(t.mbar);
    if (b.phase % 2 == t.parity) continue;
    t.sync = b.syncs[size_t(b.phase - 1)];
    t.wait = Wait::none;
    t.mbar = nullptr;
    progress = true;
  }
  return progress;
}

std::string mbarrier_wait_report(const Launch& L, const Thread& t) {
  std::ostringstream os;
  os << "on the mbarrier at shared offset " << offset_of(L, t.mbar) << " for the phase of parity "
     << t.parity << " at " << str(t.site);
  auto it = L.mbarriers.find(t.mbar);
  if (it != L.mbarriers.end()) {
    const MBarrier& b = it->second;
    os << " (phase " << b.phase << " cannot complete: " << b.pending << " of "
       << b.expected << " arrivals pending, " << b.tx << " transaction bytes outstanding)";
  }
  return os.str();
}

}  // namespace detail

}  // namespace nuri::emu
