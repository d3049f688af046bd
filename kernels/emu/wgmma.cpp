// wgmma under the emulator (emu.h states the semantics): a rendezvous of the warpgroup's 128
// threads like a warp collective's, the product computed by the scheduler when all have
// arrived, each thread's result kept pending (its registers poisoned with NaN) until the
// wait_group that completes its group.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "emu/internal.h"
#include "emu/ptx_math.h"
#include "emu/state.h"
#include "nuri/core/error.h"
#include "sm90.h"

namespace nuri::emu {

using namespace detail;

namespace {

constexpr int kWarpgroup = 128;

float poison() { return std::numeric_limits<float>::quiet_NaN(); }

bool is_poison(float v) {
  const float p = poison();
  return std::memcmp(&v, &p, 4) == 0;
}

/// The youngest wgmma of this thread not yet retired whose accumulators start at d (in the open
/// group or a committed one), or null.
const WgmmaPending* pending_for(const Thread& t, const float* d) {
  for (auto it = t.wg_open.rbegin(); it != t.wg_open.rend(); ++it) {
    if (it->d == d) return &*it;
  }
  for (auto g = t.wg_groups.rbegin(); g != t.wg_groups.rend(); ++g) {
    for (auto it = g->rbegin(); it != g->rend(); ++it) {
      if (it->d == d) return &*it;
    }
  }
  return nullptr;
}

/// Whether a wgmma younger than committed group 0 (a later group's, or the open group's) chains
/// on the accumulators at d: retiring group 0 then leaves them to it.
bool chained_later(const Thread& t, const float* d) {
  for (size_t g = 1; g < t.wg_groups.size(); ++g) {
    for (const WgmmaPending& r : t.wg_groups[g]) {
      if (r.d == d) return true;
    }
  }
  for (const WgmmaPending& r : t.wg_open) {
    if (r.d == d) return true;
  }
  return false;
}

/// The first byte of [p, p + n) that one of the thread's remembered registers (WgmmaRegs)
/// holds with another value than remembered, or -1.
int64_t changed_since_fence(const Thread& t, const void* p, size_t n) {
  const auto* lo = static_cast<const unsigned char*>(p);
  int64_t first = -1;
  for (const WgmmaRegs& r : t.wg_regs) {
    const unsigned char* b = std::max(lo, r.at);
    const unsigned char* e = std::min(lo + n, r.at + r.bytes.size());
    for (; b < e; ++b) {
      if (*b != r.bytes[size_t(b - r.at)]) {
        if (first < 0 || b - lo < first) first = b - lo;
        break;
      }
    }
  }
  return first;
}

/// Remembers the registers [p, p + n) as they are now (after a wgmma's issue wrote its
/// accumulators' poison): the wgmmas the fence covers may use them until the kernel writes them.
void remember_regs(Thread& t, const void* p, size_t n) {
  const auto* lo = static_cast<const unsigned char*>(p);
  bool known = false;
  for (WgmmaRegs& r : t.wg_regs) {
    const unsigned char* b = std::max(lo, r.at);
    const unsigned char* e = std::min(lo + n, r.at + r.bytes.size());
    if (b < e) std::memcpy(&r.bytes[size_t(b - r.at)], b, size_t(e - b));
    known = known || (r.at == lo && r.bytes.size() == n);
  }
  if (!known) t.wg_regs.push_back({lo, std::vector<unsigned char>(lo, lo + n)});
}

struct Desc {
  uint32_t start, lbo, sbo, base_offset, mode;
};
Desc decode(uint64_t d) {
  return {uint32_t(d & 0x3fff) << 4, uint32_t((d >> 16) & 0x3fff) << 4,
          uint32_t((d >> 32) & 0x3fff) << 4, uint32_t((d >> 49) & 7), uint32_t(d >> 62)};
}

/// Byte offset from the start of dynamic shared memory of element (mn, k) of a 16-bit operand
/// (mn: A's row or B's column), in the PTX ISA's canonical layouts (16-byte chunks of 8
/// elements; S the swizzle span in bytes, then the 16-byte chunk index XOR the 128-byte row
/// index over S / 16 chunks):
///   K-major, no swizzle: 8 x 16-byte core matrices; mn-groups of 8 `sbo` apart, k-halves `lbo`
///     apart;
///   K-major, swizzled:   each mn row S bytes after the previous in its group of 8, groups `sbo`
///     apart, k contiguous;
///   MN-major, no swizzle: core matrices of 8 k-rows x 8 mn-elements (16 bytes a row);
///     mn-chunks of 8 `sbo` apart, k-groups of 8 `lbo` apart;
///   MN-major, swizzled:   S / 2 mn-elements contiguous, each k row S bytes after the previous in
///     its group of 8; mn-blocks of S / 2 `lbo` apart, k-groups of 8 `sbo` apart.
size_t element_offset(const Desc& d, bool mn_major, int mn, int k) {
  const size_t span = d.mode == 1 ? 128 : d.mode == 2 ? 64 : d.mode == 3 ? 32 : 0;
  size_t a;
  if (!mn_major) {
    if (span == 0) {
      return size_t(d.start) + size_t(mn / 8) * d.sbo + size_t(k / 8) * d.lbo + size_t(mn % 8) * 16 +
             size_t(k % 8) * 2;
    }
    a = size_t(d.start) + size_t(mn / 8) * d.sbo + size_t(mn % 8) * span + size_t(k) * 2;
  } else {
    if (span == 0) {
      return size_t(d.start) + size_t(mn / 8) * d.sbo + size_t(k / 8) * d.lbo + size_t(k % 8) * 16 +
             size_t(mn % 8) * 2;
    }
    const int per_row = int(span / 2);
    a = size_t(d.start) + size_t(mn / per_row) * d.lbo + size_t(k / 8) * d.sbo +
        size_t(k % 8) * span + size_t(mn % per_row) * 2;
  }
  return a ^ (((a >> 7) & (span / 16 - 1)) << 4);
}

/// The offset of element (row, k) of the operand at descriptor `desc`, checked against the
/// shared memory.
uint32_t operand_offset(const Launch& L, uint64_t desc, bool mn_major, int row, int k,
                        const Site& site, const char* which) {
  const Desc d = decode(desc);
  NURI_CHECK(d.base_offset == 0, "emulated ", L.name, ": wgmma.mma_async at ", str(site), ": the ",
             which, " descriptor's matrix base offset is ", d.base_offset,
             " (the emulator supports 0: swizzle atoms at their own alignment)");
  const size_t off = element_offset(d, mn_major, row, k);
  NURI_CHECK(off + 2 <= L.smem, "emulated ", L.name, ": wgmma.mma_async at ", str(site), ": the ",
             which, " descriptor reaches byte ", off, " of a ", L.smem,
             "-byte dynamic shared memory [block ", str(L.block_idx), "]");
  return uint32_t(off);
}

/// Reads the 16-bit operand elements at `offs` as the tensor-core unit: after taking the
/// warpgroup's history (`arrived`, released by each of its threads), only the shared-memory
/// loads are its accesses, and the unit releases `done`, this wgmma's own sync, which only the
/// wait_group that retires the wgmma acquires. Runs from the scheduler's context.
void unit_reads(Launch& L, size_t warpgroup, char* arrived, char* done,
                const std::vector<uint32_t>& offs, std::vector<uint16_t>& raw) {
  if (L.tensor_units.size() <= warpgroup) L.tensor_units.resize(warpgroup + 1, nullptr);
  if (!L.tensor_units[warpgroup]) L.tensor_units[warpgroup] = tsan::create("tensor-core unit");
  raw.assign(offs.size(), 0);
  void* const sched = L.sched_tsan;
  void* const unit = L.tensor_units[warpgroup];
  const unsigned char* const smem = L.smem_buf;
  const uint32_t* const o = offs.data();
  uint16_t* const r = raw.data();
  const size_t n = offs.size();
  char* const launch_done = L.done_sync;  // before the launch's end, which frees the memory
  tsan::switch_to(unit);
  tsan::acquire(arrived);
  for (size_t i = 0; i < n; ++i) {
    tsan::ignore_begin();
    const uint32_t off = o[i];
    tsan::ignore_end();
    const uint16_t h = *reinterpret_cast<const uint16_t*>(smem + off);  // the unit's read
    tsan::ignore_begin();
    r[i] = h;
    tsan::ignore_end();
  }
  tsan::release(done);
  tsan::release(launch_done);
  tsan::switch_to(sched);
}

}  // namespace

uint32_t shared_address(const void* p) {
  tsan::Ignore ig;
  return uint32_t(static_cast<const unsigned char*>(p) - launch_state().smem_buf);
}

void wgmma_fence(Site) {
  tsan::Ignore ig;
  Thread& t = *launch_state().cur;
  t.wg_fenced = true;
  // What the registers earlier wgmmas used hold now: the fence makes it visible to the tensor
  // cores, and a later write (before the next fence) would not be.
  for (WgmmaRegs& r : t.wg_regs) std::memcpy(r.bytes.data(), r.at, r.bytes.size());
}

void wgmma_commit(Site) {
  tsan::Ignore ig;
  Thread& t = *launch_state().cur;
  t.wg_groups.push_back(std::move(t.wg_open));
  t.wg_open.clear();
}

void wgmma_wait(int pending, Site site) {
  tsan::ignore_begin();  // not RAII: fail() parks inside it
  Launch& L = launch_state();
  Thread& t = *L.cur;
  if (pending < 0) fail(L, t, "wgmma.wait_group at " + str(site) + ": negative count");
  while (int(t.wg_groups.size()) > pending) {
    for (const WgmmaPending& r : t.wg_groups.front()) {
      for (size_t i = 0; i < r.value.size(); ++i) {
        if (!is_poison(r.d[i])) {
          fail(L, t, "wgmma.wait_group at " + str(site) + ": accumulator register " +
                         std::to_string(i) + " of the wgmma.mma_async issued at " + str(r.site) +
                         " was written while that wgmma was in flight");
        }
      }
      for (int i = 0; r.a_regs && i < 4; ++i) {
        if (r.a_regs[i] != r.a_held[i]) {
          fail(L, t, "wgmma.wait_group at " + str(site) + ": A-fragment register " +
                         std::to_string(i) + " of the wgmma.mma_async issued at " + str(r.site) +
                         " was written while that wgmma was in flight (the tensor cores may "
                         "read A's registers until the wait_group that retires it)");
        }
      }
    }
    // Chained results: the last one for each registers wins, in issue order; accumulators a
    // wgmma still in flight chains on stay its (poisoned) until its own wait. The group's
    // operand reads happen before what follows.
    for (const WgmmaPending& r : t.wg_groups.front()) {
      if (!chained_later(t, r.d)) std::memcpy(r.d, r.value.data(), r.value.size() * sizeof(float));
      tsan::acquire(r.done.get());
    }
    t.wg_groups.erase(t.wg_groups.begin());
  }
  t.wg_fenced = false;  // registers the kernel now touches need a fence before the next wgmma
  tsan::ignore_end();
}

void wgmma_mma_async(bool bf16, int n, float* d, const uint32_t* a_regs, uint64_t a_desc,
                     bool a_mn_major, uint64_t b_desc, bool b_mn_major, bool scale_d, Site site) {
  tsan::ignore_begin();  // not RAII: fail() parks inside it
  Launch& L = launch_state();
  Thread& t = *L.cur;
  if (n < 8 || n > 256 || n % 8) {
    fail(L, t, "wgmma.mma_async at " + str(site) + ": N = " + std::to_string(n) +
                   " (m64nNk16 takes N from 8 to 256 in steps of 8)");
  }
  if (L.threads_per_block % kWarpgroup) {
    fail(L, t, "wgmma.mma_async at " + str(site) + ": the block has " +
                   std::to_string(L.threads_per_block) +
                   " threads, not a whole number of 128-thread warpgroups");
  }
  if (!t.wg_fenced) {
    fail(L, t, "wgmma.mma_async at " + str(site) +
                   " without a wgmma.fence since this thread's last wgmma.wait_group (or the "
                   "kernel's start): its registers may not be ready for the tensor cores");
  }
  // The PTX ISA asks for a wgmma.fence between a thread's write of a register and a wgmma that
  // reads it (as accumulator or A fragment); wgmmas of one shape chaining on accumulators need
  // none. Registers a wgmma of this thread used before are remembered as of the fence (or that
  // issue): other bytes there now were written after it. (Registers used for the first time
  // are not checked: the compiler may sink a store before the fence past it until their
  // address has reached the emulator.)
  const auto late_write = [&](const void* regs, size_t bytes, const char* which) {
    const int64_t at = changed_since_fence(t, regs, bytes);
    if (at < 0) return;
    fail(L, t, "wgmma.mma_async at " + str(site) + ": " + which + " register " +
                   std::to_string(at / 4) + " was written after this thread's last wgmma.fence "
                   "(or after the wgmma that used it since): the tensor cores may not see the "
                   "write; a wgmma.fence must come between a register's write and a wgmma "
                   "reading it");
  };
  late_write(d, size_t(n / 2) * 4, "accumulator");
  if (a_regs) late_write(a_regs, 16, "A-fragment");
  WgmmaArrival& a = t.wg;
  a.bf16 = bf16;
  a.n = n;
  a.d = d;
  a.a_in_regs = a_regs != nullptr;
  if (a_regs) std::memcpy(a.a, a_regs, sizeof(a.a));
  a.a_desc = a_desc;
  a.a_mn_major = a_mn_major && a_regs == nullptr;
  a.b_desc = b_desc;
  a.b_mn_major = b_mn_major;
  a.scale_d = scale_d;
  a.site = site;
  const int regs = n / 2;
  if (const WgmmaPending* p = pending_for(t, d)) {
    // Chained on an earlier wgmma's result, which the PTX ISA orders without a wait only
    // between wgmmas of the same shape.
    if (p->value.size() != size_t(regs)) {
      fail(L, t, "wgmma.mma_async at " + str(site) + " (N = " + std::to_string(n) +
                     ") accumulates into the registers of the wgmma issued at " + str(p->site) +
                     " (N = " + std::to_string(2 * p->value.size()) +
                     "), still in flight: only wgmmas of one shape chain without a "
                     "wgmma.wait_group");
    }
    a.input = p->value;
  } else {
    a.input.assign(d, d + regs);
  }
  L.wgmma_used = true;
  t.wait = Wait::warpgroup;
  t.site = site;
  park(L, t);
  tsan::acquire(t.sync.get());
  t.sync.reset();
  // The result waits for the wait_group; the registers hold NaN until then.
  WgmmaPending issued{d, std::move(a.result), site, std::move(a.done)};
  if (a_regs) {
    issued.a_regs = a_regs;
    std::memcpy(issued.a_held, a_regs, sizeof(issued.a_held));
  }
  t.wg_open.push_back(std::move(issued));
  a.result.clear();
  for (int i = 0; i < regs; ++i) d[i] = poison();
  remember_regs(t, d, size_t(regs) * 4);
  if (a_regs) remember_regs(t, a_regs, 16);
  tsan::ignore_end();
}

unsigned setmaxnreg_launch_count(int threads_per_block) {
  if (threads_per_block <= 0) return 0;
  return unsigned(kernels::setmaxnreg_launch_count(threads_per_block));  // the kernels' model
}

namespace {

/// What the block's warpgroups hold, a thread each: the last count each set, or the launch count.
std::vector<unsigned> maxnreg_held(const Launch& L) {
  const unsigned launch = setmaxnreg_launch_count(L.threads_per_block);
  std::vector<unsigned> held(size_t(L.threads_per_block / kWarpgroup), launch);
  for (size_t w = 0; w < L.maxnreg.size() && w < held.size(); ++w) {
    if (!L.maxnreg[w].empty()) held[w] = L.maxnreg[w].back();
  }
  return held;
}

/// Whether the pool can give warpgroup wg `count` registers a thread now.
bool maxnreg_fits(const Launch& L, size_t wg, unsigned count) {
  std::vector<unsigned> held = maxnreg_held(L);
  held[wg] = count;
  unsigned total = 0;
  for (unsigned h : held) total += h;
  return total <= setmaxnreg_launch_count(L.threads_per_block) * unsigned(held.size());
}

}  // namespace

void setmaxnreg(bool inc, unsigned count, Site site) {
  tsan::ignore_begin();  // not RAII: fail() parks inside it
  Launch& L = launch_state();
  Thread& t = *L.cur;
  const std::string what = std::string("setmaxnreg.") + (inc ? "inc" : "dec") + " " +
                           std::to_string(count) + " at " + str(site);
  if (count < 24 || count > 256 || count % 8) {
    fail(L, t, what + ": the count must be a multiple of 8 in [24, 256]");
  }
  if (L.threads_per_block % kWarpgroup) {
    fail(L, t, what + ": the block is not a whole number of 128-thread warpgroups");
  }
  const size_t wg = size_t(t.linear / kWarpgroup);
  if (L.maxnreg.size() <= wg) L.maxnreg.resize(wg + 1);
  const size_t k = size_t(t.maxnreg_calls++);
  for (;;) {
    std::vector<unsigned>& calls = L.maxnreg[wg];
    if (k < calls.size()) {  // another thread of the warpgroup made this call
      if (calls[k] != count) {
        fail(L, t, what + ": another thread of warpgroup " + std::to_string(wg) + " set " +
                       std::to_string(calls[k]) + " in this call (the warpgroup must agree)");
      }
      break;
    }
    const unsigned held = maxnreg_held(L)[wg];
    if (inc ? count < held : count > held) {
      fail(L, t, what + ": the warpgroup holds " + std::to_string(held) +
                     (calls.empty() ? " (what a block of " + std::to_string(L.threads_per_block) +
                                          " threads is launched with)"
                                    : std::string()) +
                     ", which " + (inc ? ".inc may not lower" : ".dec may not raise"));
    }
    if (!inc || maxnreg_fits(L, wg, count)) {
      calls.push_back(count);
      break;
    }
    // .inc waits until the block's pool (what it was launched with) can supply the registers,
    // as the hardware's does: another warpgroup's .dec may release them.
    t.wait = Wait::maxnreg;
    t.site = site;
    t.maxnreg_want = count;
    park(L, t);
    t.maxnreg_want = 0;
  }
  tsan::ignore_end();
}

namespace detail {

bool maxnreg_progress(Launch& L) {
  if (L.maxnreg.empty()) return false;
  bool progress = false;
  for (Thread& t : *L.threads) {
    if (t.wait != Wait::maxnreg) continue;
    const size_t wg = size_t(t.linear / kWarpgroup);
    if (L.maxnreg[wg].size() > size_t(t.maxnreg_calls - 1) || maxnreg_fits(L, wg, t.maxnreg_want)) {
      t.wait = Wait::none;  // it checks again when it runs
      progress = true;
    }
  }
  return progress;
}

void maxnreg_block_end(const Launch& L) {
  for (const Thread& t : *L.threads) {
    const size_t wg = size_t(t.linear / kWarpgroup);
    const size_t made = wg < L.maxnreg.size() ? L.maxnreg[wg].size() : 0;
    NURI_CHECK(size_t(t.maxnreg_calls) == made, "emulated ", L.name, ": thread ", str(t.tid),
               " made ", t.maxnreg_calls, " setmaxnreg calls and its warpgroup ", wg, " made ",
               made, " (setmaxnreg is .sync.aligned: all 128 threads of a warpgroup make each "
               "call) [block ", str(L.block_idx), ", block-order seed ", L.seed, "]");
  }
}

std::string maxnreg_wait_report(const Launch& L, const Thread& t) {
  const std::vector<unsigned> held = maxnreg_held(L);
  std::string parts;
  for (unsigned h : held) parts += (parts.empty() ? "" : " + ") + std::to_string(h);
  const unsigned launch = setmaxnreg_launch_count(L.threads_per_block);
  return "in setmaxnreg.inc " + std::to_string(t.maxnreg_want) + " at " + str(t.site) +
         " for registers: the warpgroups hold (" + parts + ") a thread, and the block's pool is " +
         std::to_string(launch) + " x " + std::to_string(held.size()) + " (what its " +
         std::to_string(L.threads_per_block) + " threads were launched with)";
}

bool wgmma_progress(Launch& L) {
  if (!L.wgmma_used) return false;
  std::vector<Thread>& ts = *L.threads;
  bool progress = false;
  for (size_t base = 0; base + kWarpgroup <= ts.size(); base += kWarpgroup) {
    bool all = true;
    for (int i = 0; i < kWarpgroup; ++i) all = all && ts[base + size_t(i)].wait == Wait::warpgroup;
    if (!all) {
      for (int i = 0; i < kWarpgroup; ++i) {
        const Thread& u = ts[base + size_t(i)];
        NURI_CHECK(!(u.wait == Wait::done && ts[base].wait == Wait::warpgroup), "emulated ",
                   L.name, ": thread ", str(u.tid), " exited while thread ", str(ts[base].tid),
                   " waits for its warpgroup in a wgmma.mma_async at ", str(ts[base].site),
                   " [block ", str(L.block_idx), ", block-order seed ", L.seed, "]");
      }
      continue;
    }
    const WgmmaArrival& w0 = ts[base].wg;
    for (int i = 1; i < kWarpgroup; ++i) {
      const WgmmaArrival& w = ts[base + size_t(i)].wg;
      NURI_CHECK(w.bf16 == w0.bf16 && w.n == w0.n && w.a_in_regs == w0.a_in_regs &&
                     w.b_desc == w0.b_desc && (w.a_in_regs || w.a_desc == w0.a_desc) &&
                     w.a_mn_major == w0.a_mn_major && w.b_mn_major == w0.b_mn_major &&
                     w.scale_d == w0.scale_d && w.site.line() == w0.site.line() &&
                     std::strcmp(w.site.file_name(), w0.site.file_name()) == 0,
                 "emulated ", L.name, ": the threads of a warpgroup disagree in a wgmma.mma_async: "
                 "thread ", str(ts[base].tid), " at ", str(w0.site), ", thread ",
                 str(ts[base + size_t(i)].tid), " at ", str(w.site),
                 " (shape, type, descriptors and site must be the same) [block ",
                 str(L.block_idx), "]");
    }
    const int n = w0.n;
    const bool bf16 = w0.bf16;
    // Where the descriptors' elements are (checked), then the warpgroup's release, then the
    // unit's reads of them.
    std::vector<uint32_t> offs;
    if (!w0.a_in_regs) {
      for (int r = 0; r < 64; ++r)
        for (int k = 0; k < 16; ++k) offs.push_back(operand_offset(L, w0.a_desc, w0.a_mn_major, r, k, w0.site, "A"));
    }
    const size_t b_at = offs.size();
    for (int col = 0; col < n; ++col)
      for (int k = 0; k < 16; ++k) offs.push_back(operand_offset(L, w0.b_desc, w0.b_mn_major, col, k, w0.site, "B"));
    std::vector<Thread*> group;
    for (int i = 0; i < kWarpgroup; ++i) group.push_back(&ts[base + size_t(i)]);
    rendezvous(L, group);
    std::vector<uint16_t> raw;
    auto done = std::make_shared<char>(0);
    unit_reads(L, base / kWarpgroup, ts[base].sync.get(), done.get(), offs, raw);
    {
      tsan::Ignore ig;
      const int64_t stale = async_view_stale(L, offs.data(), offs.size(), 2);
      NURI_CHECK(stale < 0, "emulated ", L.name, ": wgmma.mma_async at ", str(w0.site), ": ",
                 async_view_report(stale, "this wgmma (an operand from a descriptor)"), " [block ",
                 str(L.block_idx), "]");
    }
    std::vector<float> A(64 * 16), B(16 * size_t(n));
    for (int r = 0; r < 64; ++r) {
      for (int k = 0; k < 16; ++k) {
        if (w0.a_in_regs) {
          // Warp r / 16, lane 4g + t with g = r % 8, t = k % 8 / 2; register by the row's and
          // the column's half (the m16n8k16 A fragment).
          const int w = r / 16, rr = r % 16, g = rr % 8, tt = (k % 8) / 2;
          const int reg = (rr / 8) + 2 * (k / 8);
          const uint32_t v = ts[base + size_t(32 * w + 4 * g + tt)].wg.a[reg];
          A[size_t(r * 16 + k)] = half_to_float(uint16_t(k % 2 ? v >> 16 : v & 0xffff), bf16);
        } else {
          A[size_t(r * 16 + k)] = half_to_float(raw[size_t(r * 16 + k)], bf16);
        }
      }
    }
    for (int col = 0; col < n; ++col) {
      for (int k = 0; k < 16; ++k) {
        B[size_t(k * n + col)] = half_to_float(raw[b_at + size_t(col * 16 + k)], bf16);
      }
    }
    for (int i = 0; i < kWarpgroup; ++i) {
      Thread& u = ts[base + size_t(i)];
      const int w = i / 32, lane = i % 32, g = lane / 4, tt = lane % 4;
      u.wg.result.assign(size_t(n / 2), 0.f);
      u.wg.done = done;
      for (int j = 0; j < n / 8; ++j) {
        for (int h = 0; h < 2; ++h) {
          for (int c = 0; c < 2; ++c) {
            const int row = 16 * w + g + 8 * h, col = 8 * j + 2 * tt + c;
            const size_t reg = size_t(4 * j + 2 * h + c);
            float acc = u.wg.scale_d ? u.wg.input[reg] : 0.f;
            for (int k = 0; k < 16; ++k) acc += A[size_t(row * 16 + k)] * B[size_t(k * n + col)];
            u.wg.result[reg] = acc;
          }
        }
      }
    }
    progress = true;
  }
  return progress;
}

}  // namespace detail

}  // namespace nuri::emu
