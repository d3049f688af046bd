// The emulator's internal state, shared by scheduler.cpp (launches, blocks, barriers),
// collectives.cpp (warp collectives and tensor-core instructions) and async_copy.cpp
// (cp.async). Internal to kernels/emu.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "emu/emu.h"
#include "emu/fiber.h"
#include "emu/tsan.h"

namespace nuri::emu::detail {

class FiberPool;

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
  const void* addr = nullptr;  // ldmatrix: this lane's row address (performance counters)
  Site site;
};

struct AsyncCopy {
  void* dst;
  const void* src;
  int bytes, src_bytes;
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
  std::shared_ptr<CounterState> counters;  // null unless performance counters are on
};

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

/// Deposits this lane's part of a warp collective, waits for the others, and returns with the
/// lane's Thread::out holding its result.
void warp_collective(const Arrival& a);

}  // namespace nuri::emu::detail
