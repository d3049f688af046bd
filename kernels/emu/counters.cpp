// Performance counters under the emulator (emu.h describes what is counted and the cost model).
// Per-lane records are kept per block, keyed by (warp, site, kind, the lane's how-many-th
// execution of that site), so the lanes of one warp-wide instruction meet in one group however
// the fibers were scheduled; each group is costed when the block ends. Collectives (mma,
// ldmatrix, shuffles, votes) and barriers are counted where they complete, with every lane's
// inputs at hand. Everything here is bookkeeping, hidden from the race detector.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include "emu/state.h"

namespace nuri::emu {

const char* name(Access a) {
  switch (a) {
    case Access::ld_shared: return "ld.shared";
    case Access::st_shared: return "st.shared";
    case Access::ldmatrix: return "ldmatrix";
    case Access::cp_async_shared: return "cp.async (shared side)";
    case Access::ld_global: return "ld.global";
    case Access::st_global: return "st.global";
    case Access::cp_async_global: return "cp.async (global side)";
    case Access::count: break;
  }
  return "?";
}

const char* name(Instr i) {
  switch (i) {
    case Instr::mma: return "mma";
    case Instr::ldmatrix: return "ldmatrix";
    case Instr::shfl: return "shfl";
    case Instr::vote: return "vote";
    case Instr::syncwarp: return "syncwarp";
    case Instr::barrier: return "barrier";
    case Instr::atomic: return "atomic";
    case Instr::sfu: return "sfu";
    case Instr::cp_async: return "cp.async";
    case Instr::cp_async_commit: return "cp.async.commit";
    case Instr::cp_async_wait: return "cp.async.wait";
    case Instr::ld_shared: return "ld.shared";
    case Instr::st_shared: return "st.shared";
    case Instr::ld_global: return "ld.global";
    case Instr::st_global: return "st.global";
    case Instr::count: break;
  }
  return "?";
}

Counters& Counters::operator+=(const Counters& o) {
  for (int k = 0; k < kAccessKinds; ++k) mem[k] += o.mem[k];
  for (int k = 0; k < kInstrKinds; ++k) instr[k] += o.instr[k];
  return *this;
}

namespace detail {
namespace {

// What a record is: an Access (0 .. kAccessKinds-1) or kInstrBase + an Instr.
constexpr int kInstrBase = 32;

struct SiteKey {
  const char* file;
  uint32_t line, column;
  int code;
  bool operator==(const SiteKey&) const = default;
};
struct GroupKey {
  int warp;
  SiteKey site;
  uint32_t occurrence;
  bool operator==(const GroupKey&) const = default;
};
size_t mix(size_t h, size_t v) { return h ^ (v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2)); }
struct SiteHash {
  size_t operator()(const SiteKey& k) const {
    size_t h = std::hash<const void*>()(k.file);
    h = mix(h, k.line);
    h = mix(h, k.column);
    return mix(h, size_t(k.code));
  }
};
struct GroupHash {
  size_t operator()(const GroupKey& k) const {
    return mix(mix(SiteHash()(k.site), size_t(k.warp)), k.occurrence);
  }
};

struct LaneAccess {
  int lane;
  uintptr_t addr;
  int bytes;
};

/// Shared memory: 32 banks of 4 bytes. Lanes of 8-byte accesses go in two half-warp phases,
/// 16-byte ones (and ldmatrix's 8-lane matrices) in four quarter-warp phases; each phase takes as
/// many wavefronts as the most distinct 4-byte words one bank must deliver (the same word to
/// several lanes is one broadcast). The minimum is the words of the phase over 32.
MemCounter shared_cost(const std::vector<LaneAccess>& v) {
  int width = 0;
  for (const LaneAccess& a : v) width = std::max(width, a.bytes);
  MemCounter m;
  if (width == 0) return m;
  m.requests = 1;
  const int per_phase = width <= 4 ? 32 : 128 / width;
  std::vector<uint64_t> words;
  for (int phase = 0; phase * per_phase < 32; ++phase) {
    words.clear();
    for (const LaneAccess& a : v) {
      if (a.lane / per_phase != phase || a.bytes == 0) continue;
      for (uint64_t w = a.addr / 4; w <= (a.addr + uint64_t(a.bytes) - 1) / 4; ++w) {
        words.push_back(w);
      }
    }
    if (words.empty()) continue;
    std::sort(words.begin(), words.end());
    words.erase(std::unique(words.begin(), words.end()), words.end());
    int per_bank[32] = {};
    int most = 0;
    for (uint64_t w : words) most = std::max(most, ++per_bank[w % 32]);
    m.actual += uint64_t(most);
    m.minimum += (words.size() + 31) / 32;
  }
  return m;
}

/// Global memory: the distinct 32-byte sectors the request touches, against the distinct bytes
/// it reads or writes over 32.
MemCounter global_cost(const std::vector<LaneAccess>& v) {
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (const LaneAccess& a : v) {
    if (a.bytes > 0) spans.push_back({a.addr, a.addr + uint64_t(a.bytes)});
  }
  MemCounter m;
  if (spans.empty()) return m;  // e.g. cp.async that only zero-fills
  m.requests = 1;
  std::sort(spans.begin(), spans.end());
  uint64_t bytes = 0, sectors = 0, last_sector = ~uint64_t(0), end = 0;
  for (const auto& [b, e] : spans) {
    const uint64_t from = std::max(b, end);
    if (e > from) bytes += e - from;
    end = std::max(end, e);
    for (uint64_t s = b / 32; s <= (e - 1) / 32; ++s) {
      if (last_sector != ~uint64_t(0) && s <= last_sector) continue;
      ++sectors;
      last_sector = s;
    }
  }
  m.actual = sectors;
  m.minimum = (bytes + 31) / 32;
  return m;
}

std::atomic<int> g_state{-1};  // -1: NURI_EMU_COUNTERS not read yet; else 0 or 1
bool g_print = false;          // set with g_state from the environment only
tsan::QuietMutex g_mutex;
std::deque<LaunchCounters> g_done;
constexpr size_t kKeep = 100000;

int state() {
  int s = g_state.load(std::memory_order_acquire);
  if (s >= 0) return s;
  std::lock_guard<tsan::QuietMutex> lock(g_mutex);
  s = g_state.load(std::memory_order_relaxed);
  if (s < 0) {
    const char* env = std::getenv("NURI_EMU_COUNTERS");
    g_print = env && *env && std::string(env) != "0";
    s = g_print ? 1 : 0;
    g_state.store(s, std::memory_order_release);
  }
  return s;
}

Instr instr_of(Access a) {
  switch (a) {
    case Access::ld_shared: return Instr::ld_shared;
    case Access::st_shared: return Instr::st_shared;
    case Access::ld_global: return Instr::ld_global;
    case Access::st_global: return Instr::st_global;
    case Access::cp_async_shared: return Instr::cp_async;
    default: return Instr::count;  // counted elsewhere (ldmatrix) or with its other side
  }
}

}  // namespace

struct CounterState {
  Counters total;
  std::vector<std::unordered_map<SiteKey, uint32_t, SiteHash>> occurrences;  // per thread
  std::unordered_map<GroupKey, std::vector<LaneAccess>, GroupHash> groups;
  std::map<std::tuple<int, std::string, uint32_t>, MemCounter> sites;  // (access, file, line)

  void add(Access a, const char* file, uint32_t line, const MemCounter& m) {
    if (m.requests == 0) return;
    total.mem[int(a)] += m;
    sites[{int(a), file, line}] += m;
  }
};

namespace {

void record(Launch& L, int code, const void* addr, int bytes, const Site& site) {
  CounterState& st = *L.counters;
  const Thread& t = *L.cur;
  const SiteKey key{site.file_name(), site.line(), site.column(), code};
  const uint32_t occurrence = st.occurrences[size_t(t.linear)][key]++;
  st.groups[GroupKey{t.linear / 32, key, occurrence}].push_back(
      {t.linear % 32, reinterpret_cast<uintptr_t>(addr), bytes});
}

}  // namespace

void counters_begin(Launch& L) {
  if (state() == 0) return;
  L.counters = std::make_shared<CounterState>();
  L.counters->occurrences.resize(size_t(L.threads_per_block));
}

void counters_collective(Launch& L, const Arrival& op, Thread* const lanes[32]) {
  if (!L.counters) return;
  Counters& c = L.counters->total;
  switch (op.kind) {
    case OpKind::shfl: ++c.instr[int(Instr::shfl)]; break;
    case OpKind::vote: ++c.instr[int(Instr::vote)]; break;
    case OpKind::syncwarp: ++c.instr[int(Instr::syncwarp)]; break;
    case OpKind::mma: ++c.instr[int(Instr::mma)]; break;
    case OpKind::ldmatrix: {
      ++c.instr[int(Instr::ldmatrix)];
      const int count = op.mode >> 1;
      std::vector<LaneAccess> v;
      for (int l = 0; l < 8 * count; ++l) {
        v.push_back({l, reinterpret_cast<uintptr_t>(lanes[l]->op.addr), 16});
      }
      L.counters->add(Access::ldmatrix, op.site.file_name(), op.site.line(), shared_cost(v));
      break;
    }
  }
}

void counters_barrier(Launch& L, const std::vector<Thread*>& waiting) {
  if (!L.counters) return;
  std::vector<int> warps;
  for (const Thread* t : waiting) warps.push_back(t->linear / 32);
  std::sort(warps.begin(), warps.end());
  L.counters->total.instr[int(Instr::barrier)] +=
      uint64_t(std::unique(warps.begin(), warps.end()) - warps.begin());
}

void counters_block_end(Launch& L) {
  if (!L.counters) return;
  CounterState& st = *L.counters;
  for (const auto& [key, lanes] : st.groups) {
    const int code = key.site.code;
    if (code >= kInstrBase) {
      ++st.total.instr[code - kInstrBase];
      continue;
    }
    const Access a = Access(code);
    st.add(a, key.site.file, key.site.line, is_shared(a) ? shared_cost(lanes) : global_cost(lanes));
    const Instr i = instr_of(a);
    if (i != Instr::count) ++st.total.instr[int(i)];
  }
  st.groups.clear();
  for (auto& o : st.occurrences) o.clear();
}

void counters_end(Launch& L) {
  if (!L.counters) return;
  CounterState& st = *L.counters;
  LaunchCounters out;
  out.kernel = L.name;
  out.grid = L.grid;
  out.block = L.block;
  out.smem = L.smem;
  out.total = st.total;
  for (const auto& [key, m] : st.sites) {
    const std::string& file = std::get<1>(key);
    const size_t slash = file.rfind('/');
    out.sites.push_back({(slash == std::string::npos ? file : file.substr(slash + 1)) + ":" +
                             std::to_string(std::get<2>(key)),
                         Access(std::get<0>(key)), m});
  }
  std::stable_sort(out.sites.begin(), out.sites.end(),
                   [](const SiteCounter& a, const SiteCounter& b) {
                     return a.mem.excess() > b.mem.excess();
                   });
  L.counters.reset();
  if (g_print) std::fputs(format_counters(out).c_str(), stderr);
  std::lock_guard<tsan::QuietMutex> lock(g_mutex);
  g_done.push_back(std::move(out));
  if (g_done.size() > kKeep) g_done.pop_front();
}

}  // namespace detail

using namespace detail;

void set_counters(bool on) {
  state();  // reads the environment first, so it cannot overwrite this later
  g_state.store(on ? 1 : 0, std::memory_order_release);
}

bool counters_enabled() { return state() == 1; }

std::vector<LaunchCounters> take_counters() {
  std::lock_guard<tsan::QuietMutex> lock(g_mutex);
  std::vector<LaunchCounters> out(std::make_move_iterator(g_done.begin()),
                                  std::make_move_iterator(g_done.end()));
  g_done.clear();
  return out;
}

Counters sum_counters(const std::vector<LaunchCounters>& launches, std::string_view kernel) {
  Counters c;
  for (const LaunchCounters& l : launches) {
    if (kernel.empty() || l.kernel.find(kernel) != std::string::npos) c += l.total;
  }
  return c;
}

std::string format_counters(const LaunchCounters& c) {
  std::ostringstream os;
  os << "emu counters: " << c.kernel;
  if (c.grid.x > 0) {  // a sum over launches has none
    os << " grid " << c.grid.x << "x" << c.grid.y << "x" << c.grid.z << " block " << c.block.x
       << "x" << c.block.y << "x" << c.block.z << " smem " << c.smem << " B";
  }
  os << "\n";
  for (int shared = 1; shared >= 0; --shared) {
    bool any = false;
    for (int k = 0; k < kAccessKinds; ++k) {
      const MemCounter& m = c.total.mem[k];
      if (is_shared(Access(k)) != bool(shared) || m.requests == 0) continue;
      os << (any ? "; " : shared ? "  shared (wavefronts): " : "  global (32-byte sectors): ")
         << name(Access(k)) << " " << m.requests << " requests, " << m.actual << " (min "
         << m.minimum << ", +" << m.excess() << ")";
      any = true;
    }
    if (any) os << "\n";
  }
  bool any = false;
  for (int k = 0; k < kInstrKinds; ++k) {
    if (c.total.instr[k] == 0) continue;
    os << (any ? ", " : "  warp instructions: ") << name(Instr(k)) << " " << c.total.instr[k];
    any = true;
  }
  if (any) os << "\n";
  int shown = 0;
  for (const SiteCounter& s : c.sites) {
    if (s.mem.excess() == 0 || shown == 5) break;
    os << "  excess at " << s.site << " (" << name(s.access) << "): +" << s.mem.excess() << " of "
       << s.mem.actual << " over " << s.mem.requests << " requests\n";
    ++shown;
  }
  return os.str();
}

void count_access(Access kind, const void* addr, int bytes, Site site) {
  if (g_state.load(std::memory_order_relaxed) != 1) return;
  tsan::Ignore ig;
  Launch& L = launch_state();
  if (L.counters) record(L, int(kind), addr, bytes, site);
}

void count_instr(Instr kind, Site site) {
  if (g_state.load(std::memory_order_relaxed) != 1) return;
  tsan::Ignore ig;
  Launch& L = launch_state();
  if (L.counters) record(L, kInstrBase + int(kind), nullptr, 0, site);
}

}  // namespace nuri::emu
