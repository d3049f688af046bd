// cp.async under the emulator: copies are queued per thread and group, the destination is
// poisoned at issue and written at the cp_async_wait that completes the group, both by a
// separate "copy unit" TSan context, so touching the destination early is a race.
#include <cstring>

#include "emu/internal.h"
#include "emu/state.h"

namespace nuri::emu {

using namespace detail;

// ---- cp.async: deferred completion by a per-thread copy unit (as_copy_unit, state.h) ------------

void cp_async(void* dst, const void* src, int bytes, int src_bytes, Site site) {
  Launch* L;
  Thread* t;
  {
    tsan::ignore_begin();  // not RAII: fail() parks inside it (an abandoned fiber is unwound)
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
    const std::string bad = shared_address_problem(*L, dst, size_t(bytes));
    if (!bad.empty()) {
      fail(*L, *t, "cp.async at " + str(site) + ": the " + std::to_string(bytes) +
                       "-byte destination " + bad + " (it must be shared memory)");
    }
    if (src_bytes > 0 && !range_of(*L, src, size_t(src_bytes))) {
      fail(*L, *t, "cp.async at " + str(site) + ": the " + std::to_string(src_bytes) +
                       "-byte source is not inside a device allocation (cudaMalloc) or pinned "
                       "host memory (cudaMallocHost): a GPU faults on it");
    }
    t->open_copies.push_back({dst, src, bytes, src_bytes});
    tsan::ignore_end();
  }
  count_access(Access::cp_async_global, src, src_bytes, site);
  count_access(Access::cp_async_shared, dst, bytes, site);
  // Poison the destination now, as the copy unit: the data arrives only at the wait.
  as_copy_unit(*t, true, [&] { std::memset(dst, 0xff, size_t(bytes)); });
}

void cp_async_commit(Site site) {
  count_instr(Instr::cp_async_commit, site);
  tsan::Ignore ig;
  Thread& t = *launch_state().cur;
  t.groups.push_back(std::move(t.open_copies));
  t.open_copies.clear();
}

void cp_async_wait(int pending, Site site) {
  count_instr(Instr::cp_async_wait, site);
  Thread* t;
  std::vector<AsyncCopy> done;
  {
    tsan::ignore_begin();  // not RAII: fail() parks inside it
    Launch& L = launch_state();
    t = L.cur;
    if (pending < 0) fail(L, *t, "cp.async.wait_group at " + str(site) + ": negative count");
    while (int(t->groups.size()) > pending) {
      for (const AsyncCopy& c : t->groups.front()) done.push_back(c);
      t->groups.erase(t->groups.begin());
    }
    tsan::ignore_end();
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
