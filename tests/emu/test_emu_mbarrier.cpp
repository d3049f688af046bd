// The emulator's mbarrier and cp.async.bulk (sm_90) against a plain reference: a two-stage
// producer/consumer pipeline whose consumers double every element the bulk copies brought, six
// tiles so that each barrier goes through three phases and both parities twice. Then one
// planted bug per strictness check, each of which must be caught with a message that names it.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "emu/emu_util.h"
#include "ptx.cuh"

namespace nuri::test {
namespace {

using nuri::kernels::cp_async_bulk;
using nuri::kernels::mbarrier_arrive;
using nuri::kernels::mbarrier_arrive_expect_tx;
using nuri::kernels::mbarrier_init;
using nuri::kernels::mbarrier_inval;
using nuri::kernels::mbarrier_wait_parity;

enum class Bug {
  none,
  read_before_wait,    // a consumer reads its first tile before waiting for it
  no_sync_after_init,  // no __syncthreads between the init and the other threads' use
  uninitialized,       // no init at all
  double_init,         // init of a live barrier
  overwritten,         // a plain store over a live barrier
  extra_arrivals,      // 33 arrivals on a phase that expects 32
  missing_arrival,     // one consumer does not arrive: the producer waits forever
  short_copy,          // 16 bytes more expected than copied: the consumers wait forever
  bad_size,            // a bulk copy of 1000 bytes
  copy_at_exit,        // a bulk copy still in flight when the block ends
  inval_in_flight,     // inval of a barrier a bulk copy will still complete on
  use_after_inval,     // an arrival on an invalidated barrier
  host_source,         // a bulk copy from a host pointer (not cudaMalloc'd)
};

constexpr int kTile = 256;  // floats a tile: 1024 bytes
constexpr unsigned kTileBytes = kTile * sizeof(float);
constexpr int kTiles = 6;
constexpr size_t kSmem = 128 + 2 * kTileBytes;  // 4 barriers, then 2 tile buffers

struct PipeParams {
  const float* src;  // [kTiles][kTile]
  float* out;        // [blocks][kTiles][kTile]: 2 · src, from each block
  Bug bug;
};

// Thread 0 produces, warp 1 (threads 32..63) consumes; the other threads of warp 0 exit.
// full[s]: one arrival (the producer's, with the tile's bytes), empty[s]: 32 (the consumers').
__global__ void mbarrier_pipeline(PipeParams p) {
  uint64_t* full = nuri::kernels::dynamic_smem<uint64_t>();
  uint64_t* empty = full + 2;
  float* buf = reinterpret_cast<float*>(reinterpret_cast<char*>(full) + 128);
  const int tid = int(threadIdx.x);
  if (tid == 0 && p.bug != Bug::uninitialized) {
    for (int s = 0; s < 2; ++s) {
      mbarrier_init(&full[s], 1);
      mbarrier_init(&empty[s], 32);
    }
    if (p.bug == Bug::double_init) mbarrier_init(&full[0], 1);
    nuri::kernels::fence_proxy_async();  // the inits, visible to the bulk copies
  }
  if (p.bug != Bug::no_sync_after_init) __syncthreads();
  if (tid == 0) {
    if (p.bug == Bug::overwritten) full[1] = 0;
    if (p.bug == Bug::use_after_inval) mbarrier_inval(&full[1]);
    for (int i = 0; i < kTiles; ++i) {
      const int s = i % 2;
      mbarrier_wait_parity(&empty[s], unsigned((i / 2) & 1) ^ 1u);  // fresh: parity 1 is done
      const unsigned expect = p.bug == Bug::short_copy && i == 1 ? kTileBytes + 16 : kTileBytes;
      mbarrier_arrive_expect_tx(&full[s], expect);
      cp_async_bulk(buf + s * kTile, p.src + i * kTile, p.bug == Bug::bad_size ? 1000 : kTileBytes,
                    &full[s]);
    }
    if (p.bug == Bug::copy_at_exit) {
      mbarrier_wait_parity(&empty[1], 0);  // phase 2 of empty[1]: the consumers are done
      mbarrier_arrive_expect_tx(&full[0], kTileBytes);
      cp_async_bulk(buf, p.src, kTileBytes, &full[0]);  // nobody waits for it
    }
    if (p.bug == Bug::inval_in_flight) mbarrier_inval(&full[1]);  // tile 5's copy is on it
  } else if (tid >= 32) {
    const int lane = tid - 32;
    for (int i = 0; i < kTiles; ++i) {
      const int s = i % 2;
      const unsigned parity = unsigned((i / 2) & 1);
      const bool early = p.bug == Bug::read_before_wait && i == 0;
      if (!early) mbarrier_wait_parity(&full[s], parity);
      for (int e = 0; e < 8; ++e) {
        p.out[(blockIdx.x * kTiles + i) * kTile + lane * 8 + e] = 2.f * buf[s * kTile + lane * 8 + e];
      }
      if (early) mbarrier_wait_parity(&full[s], parity);
      if (p.bug == Bug::missing_arrival && lane == 0 && i == 2) continue;
      mbarrier_arrive(&empty[s], p.bug == Bug::extra_arrivals && lane == 0 ? 33u : 1u);
    }
  }
}

void run_pipeline(Bug bug) {
  std::vector<float> src(size_t(kTiles * kTile));
  for (size_t i = 0; i < src.size(); ++i) src[i] = float(int(i * 37 % 1001) - 500) * 0.25f;
  constexpr unsigned kBlocks = 2;  // each with its own barriers
  DeviceBuffer<float> gsrc(src), out(kBlocks * src.size());
  NURI_LAUNCH(mbarrier_pipeline, dim3(kBlocks), dim3(64), kSmem, nullptr,
              PipeParams{bug == Bug::host_source ? src.data() : gsrc.get(), out.get(), bug});
  const auto v = out.download();
  for (size_t i = 0; i < v.size(); ++i) {
    const float want = 2.f * src[i % src.size()];
    NURI_CHECK(v[i] == want, "element ", i, ": ", v[i], " instead of ", want);
  }
}

std::string error_with(Bug bug) {
  return error_of([bug] { run_pipeline(bug); });
}

TEST(EmulatorMbarrier, BulkCopyPipelineMatchesTheReferenceThroughThreePhases) {
  run_pipeline(Bug::none);
}

TEST(EmulatorMbarrier, MisuseIsAnErrorNamingIt) {
  expect_has(error_with(Bug::uninitialized), "not initialized");
  expect_has(error_with(Bug::double_init), "the barrier is live");
  expect_has(error_with(Bug::overwritten), "overwritten by a plain store");
  expect_has(error_with(Bug::extra_arrivals), "more arrivals than the barrier expects");
  expect_has(error_with(Bug::bad_size), "1000 bytes (must be a positive multiple of 16)");
  expect_has(error_with(Bug::copy_at_exit), "cp.async.bulk copies in flight");
  expect_has(error_with(Bug::inval_in_flight), "will still complete on it");
  expect_has(error_with(Bug::use_after_inval), "not initialized (or invalidated)");
  expect_has(error_with(Bug::host_source),
             "the 1024-byte source is not inside a device allocation (cudaMalloc) or pinned host "
             "memory");
}

TEST(EmulatorMbarrier, APhaseThatCannotCompleteIsADeadlockNamingWhatIsMissing) {
  const std::string arrivals = error_with(Bug::missing_arrival);
  expect_has(arrivals, "no thread can make progress");
  expect_has(arrivals, "1 of 32 arrivals pending, 0 transaction bytes outstanding");
  const std::string bytes = error_with(Bug::short_copy);
  expect_has(bytes, "0 of 1 arrivals pending, 16 transaction bytes outstanding");
}

TEST(EmulatorMbarrierDeathTest, ReadingABulkCopyBeforeItsWaitIsARace) {
  if (!kRaceDetection) {  // then the destination's poison (NaN) is what the consumer reads
    const std::string e = error_with(Bug::read_before_wait);
    expect_has(e, "element 0: ");
    expect_has(e, "nan instead of");
    return;
  }
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(run_pipeline(Bug::read_before_wait),
               "ThreadSanitizer: data race(.|\n)*mbarrier_pipeline");
}

TEST(EmulatorMbarrierDeathTest, UsingABarrierWithoutASyncAfterItsInitIsARace) {
  if (!kRaceDetection) GTEST_SKIP() << "race detection needs a -DNURI_TSAN=ON build";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(run_pipeline(Bug::no_sync_after_init),
               "ThreadSanitizer: data race(.|\n)*mbarrier_init(.|\n)*mbarrier_pipeline");
}

}  // namespace
}  // namespace nuri::test
