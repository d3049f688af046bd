// The emulator's named barriers (bar.sync / bar.arrive with ids 1 to 15) against what they must
// order: FlashAttention-3's warpgroup scheduler (two groups take turns, each waiting at its own
// barrier and passing the turn with an arrival at the other's), whose turns build a chain of
// values that only the right order gives, and a one-way handoff (arrive, then sync). Then one
// planted bug per strictness check, each caught with a message that names it.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "emu/emu_util.h"
#include "ptx.cuh"

namespace nuri::test {
namespace {

using nuri::kernels::named_barrier_arrive;
using nuri::kernels::named_barrier_sync;

// The emulator's entry point itself, for the planted bugs whose ids and counts kernels/ptx.cuh's
// templates refuse to compile.
void raw_sync(unsigned id, unsigned count, emu::Site site = emu::Site::current()) {
  emu::named_barrier(id, count, true, site);
}

enum class Bug {
  none,
  bad_id,              // barrier 16
  bad_count,           // a count of 100 threads
  count_mismatch,      // one side of a phase counts 128 threads, the other 96
  uneven_warp,         // one thread of a warp arrives twice, another of the same warp not at all
  missing_arrival,     // the handoff's writers never arrive: the reader waits forever
  write_after_arrive,  // a writer stores after its arrival: not ordered before the reader
};

constexpr int kRounds = 5;

struct Params {
  int* out;
  Bug bug;
};

// 128 threads: group 0 (warps 0-1) and group 1 (warps 2-3) take turns kRounds times each. Turn
// k = 2r + g appends log[k] = log[k - 1] + 1, so the log reads 1, 2, ... only if the turns ran
// in order: group 0's kick-off arrival lets it go first; its turns wait at barrier 1 and pass to
// barrier 2, group 1's the other way round (128 arrivals a phase: 64 waiting, 64 passing).
__global__ void scheduler_turns(Params p) {
  int* log = nuri::kernels::dynamic_smem<int>();
  const int tid = int(threadIdx.x), g = tid / 64;
  if (g == 0) named_barrier_arrive<1, 128>();
  for (int r = 0; r < kRounds; ++r) {
    if (p.bug == Bug::bad_id) {
      raw_sync(16, 128);
    } else if (p.bug == Bug::bad_count) {
      raw_sync(1 + unsigned(g), 100);
    } else if (p.bug == Bug::count_mismatch && g == 1) {
      raw_sync(2, 96);
    } else if (g == 0) {
      named_barrier_sync<1, 128>();
    } else {
      named_barrier_sync<2, 128>();
    }
    if (tid % 64 == 0) {
      const int k = 2 * r + g;
      log[k] = (k == 0 ? 0 : log[k - 1]) + 1;
    }
    if (g == 0) {
      named_barrier_arrive<2, 128>();
    } else {
      named_barrier_arrive<1, 128>();
    }
  }
  __syncthreads();  // the last turn's arrival at barrier 1 is left over, as on the GPU
  for (int k = tid; k < 2 * kRounds; k += 128) p.out[int(blockIdx.x) * 2 * kRounds + k] = log[k];
}

// 64 threads: warp 0 writes, arrives at barrier 3; warp 1 waits there, then reads.
__global__ void handoff(Params p) {
  int* data = nuri::kernels::dynamic_smem<int>();
  const int tid = int(threadIdx.x), lane = tid % 32;
  if (tid < 32) {
    if (p.bug != Bug::write_after_arrive) data[lane] = 3 * lane + 1;
    if (p.bug == Bug::uneven_warp && tid == 0) named_barrier_arrive<3, 64>();
    if (p.bug == Bug::uneven_warp && tid == 1) return;
    if (p.bug != Bug::missing_arrival) named_barrier_arrive<3, 64>();
    if (p.bug == Bug::write_after_arrive) data[lane] = 3 * lane + 1;
  } else {
    named_barrier_sync<3, 64>();
    p.out[int(blockIdx.x) * 32 + lane] = data[lane];
  }
}

constexpr int kBlocks = 3;  // each block's barriers start afresh

std::vector<int> run_turns(Bug bug) {
  DeviceBuffer<int> out(kBlocks * 2 * kRounds);
  NURI_LAUNCH(scheduler_turns, dim3(kBlocks), dim3(128), 2 * kRounds * sizeof(int), nullptr,
              Params{out.get(), bug});
  return out.download();
}

std::vector<int> run_handoff(Bug bug) {
  DeviceBuffer<int> out(kBlocks * 32);
  NURI_LAUNCH(handoff, dim3(kBlocks), dim3(64), 32 * sizeof(int), nullptr, Params{out.get(), bug});
  return out.download();
}

TEST(EmulatorNamedBarrier, TheWarpgroupSchedulersTurnsRunInOrder) {
  const std::vector<int> log = run_turns(Bug::none);
  for (int blk = 0; blk < kBlocks; ++blk)
    for (int k = 0; k < 2 * kRounds; ++k)
      EXPECT_EQ(log[size_t(blk * 2 * kRounds + k)], k + 1) << "block " << blk << ", turn " << k;
}

TEST(EmulatorNamedBarrier, AnArrivalHandsWhatPrecededItToTheWaiters) {
  const std::vector<int> got = run_handoff(Bug::none);
  for (int blk = 0; blk < kBlocks; ++blk)
    for (int i = 0; i < 32; ++i)
      EXPECT_EQ(got[size_t(blk * 32 + i)], 3 * i + 1) << "block " << blk << ", lane " << i;
}

std::string turns_error(Bug bug) {
  return error_of([bug] { run_turns(bug); });
}
std::string handoff_error(Bug bug) {
  return error_of([bug] { run_handoff(bug); });
}

TEST(EmulatorNamedBarrier, MisuseIsAnErrorNamingIt) {
  expect_has(turns_error(Bug::bad_id), "the named barriers are 1 to 15");
  expect_has(turns_error(Bug::bad_count), "a positive multiple of 32 (whole warps)");
  const std::string mismatch = turns_error(Bug::count_mismatch);
  expect_has(mismatch, "at test_emu_named_barrier.cpp:");
  expect_has(mismatch, ": the phase in progress of barrier 2 counts ");
  const std::string uneven = handoff_error(Bug::uneven_warp);
  expect_has(uneven, "completes a phase of barrier 3 in which thread (1,0,0) arrived 0 time(s)");
  expect_has(uneven, "bar.sync and bar.arrive are warp-wide");
}

TEST(EmulatorNamedBarrier, ABarSyncThatCannotCompleteIsADeadlockNamingIt) {
  const std::string e = handoff_error(Bug::missing_arrival);
  expect_has(e, "no thread can make progress");
  expect_has(e, "at bar.sync 3, 64 at test_emu_named_barrier.cpp:");
  expect_has(e, "(32 of its 64 arrivals have come)");
}

TEST(EmulatorNamedBarrierDeathTest, AStoreAfterTheArrivalIsARace) {
  if (!kRaceDetection) GTEST_SKIP() << "race detection needs a -DNURI_TSAN=ON build";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(run_handoff(Bug::write_after_arrive), "ThreadSanitizer: data race(.|\n)*handoff");
}

}  // namespace
}  // namespace nuri::test
