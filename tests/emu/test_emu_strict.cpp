// One planted bug per strictness check of the emulator, each of which must be caught: a missing
// __syncthreads (race in shared memory), a shuffle standing in for __syncwarp, work on two
// streams or host reads not ordered by events and synchronization, a missing atomic (race
// across blocks in global memory), a read of cp.async data before its wait, barrier divergence,
// warp collectives with a missing or exited lane, out-of-bounds global accesses (guard page and
// padding), stores outside a block's dynamic shared memory, ldmatrix and cp.async given
// addresses in the wrong memory, a max or min taking unwritten memory, and the correctly
// synchronized versions of the same kernels, which must pass silently; and the emulated
// device's shared memory bounding a launch.
#include <gtest/gtest.h>

#include <bit>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "emu/emu_util.h"
#include "common.cuh"
#include "ptx.cuh"

namespace nuri::test {
namespace {

// ---- races (ThreadSanitizer with happens-before at CUDA's synchronization points) ---------------

struct ShiftParams {
  float* out;  // [64]
  bool with_barrier;
};
// Each thread writes its slot, then reads its neighbour's: needs the barrier in between.
__global__ void planted_missing_barrier(ShiftParams p) {
  float* s = nuri::kernels::dynamic_smem<float>();
  s[threadIdx.x] = float(threadIdx.x);
  if (p.with_barrier) __syncthreads();
  p.out[threadIdx.x] = s[(threadIdx.x + 1) % 64];
}

/// Runs a shift kernel on one block of n threads and checks every thread read its neighbour's
/// slot.
void run_shift_kernel(const char* name, void (*kernel)(ShiftParams), int n, bool synchronized) {
  DeviceBuffer<float> out(static_cast<size_t>(n));
  ::nuri::kernels::launch(name, kernel, dim3(1), dim3(unsigned(n)), size_t(n) * sizeof(float),
                          nullptr, ShiftParams{out.get(), synchronized});
  const auto v = out.download();
  for (int t = 0; t < n; ++t) NURI_CHECK(v[size_t(t)] == float((t + 1) % n), "wrong value");
}

void run_shift(bool with_barrier) {
  run_shift_kernel("planted_missing_barrier", planted_missing_barrier, 64, with_barrier);
}

TEST(EmulatorStrict, SynchronizedSharedMemoryIsNotReported) { run_shift(true); }

TEST(EmulatorStrictDeathTest, MissingSyncthreadsIsReportedAsARace) {
  if (!kRaceDetection) GTEST_SKIP() << "race detection needs a -DNURI_TSAN=ON build";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // Both accesses are named: the write and the read, in this kernel, with their lines.
  EXPECT_DEATH(run_shift(false),
               "ThreadSanitizer: data race(.|\n)*planted_missing_barrier(.|\n)*test_emu_strict\\.cpp"
               "(.|\n)*planted_missing_barrier");
}

// Within a warp: each lane writes its slot, then reads its neighbour's after a shuffle (which
// exchanges registers and orders no memory: a race, as on the GPU) or after __syncwarp (which
// does).
__global__ void planted_shuffle_for_sync(ShiftParams p) {
  float* s = nuri::kernels::dynamic_smem<float>();
  s[threadIdx.x] = float(threadIdx.x);
  const float mine = __shfl_sync(0xffffffffu, float(threadIdx.x), int(threadIdx.x));
  if (p.with_barrier) __syncwarp();
  p.out[threadIdx.x] = s[(threadIdx.x + 1) % 32] + (mine - float(threadIdx.x));
}

void run_warp_shift(bool with_syncwarp) {
  run_shift_kernel("planted_shuffle_for_sync", planted_shuffle_for_sync, 32, with_syncwarp);
}

TEST(EmulatorStrict, SharedMemoryOrderedBySyncwarpIsNotReported) { run_warp_shift(true); }

TEST(EmulatorStrictDeathTest, AShuffleOrdersNoMemoryBetweenLanes) {
  if (!kRaceDetection) GTEST_SKIP() << "race detection needs a -DNURI_TSAN=ON build";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(run_warp_shift(false), "ThreadSanitizer: data race(.|\n)*planted_shuffle_for_sync");
}

struct CountParams {
  int* counter;
  bool atomic;
};
__global__ void planted_missing_atomic(CountParams p) {
  if (threadIdx.x == 0) {
    if (p.atomic) {
      atomicAdd(p.counter, 1);
    } else {
      *p.counter += 1;  // two blocks may do this at once on a GPU
    }
  }
}

void run_count(bool atomic, unsigned blocks = 8, unsigned threads = 32) {
  DeviceBuffer<int> counter(std::vector<int>{0});
  NURI_LAUNCH(planted_missing_atomic, dim3(blocks), dim3(threads), 0, nullptr,
              CountParams{counter.get(), atomic});
  NURI_CHECK(counter.download()[0] == int(blocks), "wrong count");
}

TEST(EmulatorStrict, AtomicsAcrossBlocksAreNotReported) { run_count(true); }

TEST(EmulatorStrictDeathTest, MissingAtomicAcrossBlocksIsReportedAsARace) {
  if (!kRaceDetection) GTEST_SKIP() << "race detection needs a -DNURI_TSAN=ON build";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(run_count(false), "ThreadSanitizer: data race(.|\n)*planted_missing_atomic");
}

// A launch of 16384 threads runs in waves (scheduler.cpp, kWaveThreads: 1024 threads, at least
// kMinWaveBlocks = 4 blocks): the fibers, stacks and shared memory of one wave serve the next
// without false reports, and blocks of one wave still race.
TEST(EmulatorStrict, AtomicsAcrossBlocksOfALargeLaunchAreNotReported) { run_count(true, 64, 256); }

TEST(EmulatorStrictDeathTest, MissingAtomicInALargeLaunchIsReportedAsARace) {
  if (!kRaceDetection) GTEST_SKIP() << "race detection needs a -DNURI_TSAN=ON build";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(run_count(false, 64, 256), "ThreadSanitizer: data race(.|\n)*planted_missing_atomic");
}

// Blocks of 1024 threads fill the 1024 threads of a wave alone; a wave still holds 4 of them, so
// blocks of the largest size race with each other too.
TEST(EmulatorStrictDeathTest, MissingAtomicBetweenBlocksOf1024ThreadsIsReportedAsARace) {
  if (!kRaceDetection) GTEST_SKIP() << "race detection needs a -DNURI_TSAN=ON build";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(run_count(false, 8, 1024), "ThreadSanitizer: data race(.|\n)*planted_missing_atomic");
}

struct EarlyReadParams {
  const float* src;  // [64]
  float* out;        // [64]
  bool wait_first;
};
__global__ void planted_read_before_wait(EarlyReadParams p) {
  float* s = nuri::kernels::dynamic_smem<float>();
  nuri::kernels::cp_async<4>(s + threadIdx.x, p.src + threadIdx.x);
  nuri::kernels::cp_async_commit();
  if (p.wait_first) nuri::kernels::cp_async_wait<0>();
  const float v = s[threadIdx.x];  // before the wait: the copy may not have landed
  nuri::kernels::cp_async_wait<0>();
  p.out[threadIdx.x] = v;
}

void run_early_read(bool wait_first) {
  DeviceBuffer<float> src(std::vector<float>(64, 3.f)), out(64);
  NURI_LAUNCH(planted_read_before_wait, dim3(1), dim3(64), 64 * sizeof(float), nullptr,
              EarlyReadParams{src.get(), out.get(), wait_first});
  for (float v : out.download()) NURI_CHECK(v == 3.f, "read ", v, " instead of the copied 3");
}

TEST(EmulatorStrict, CpAsyncDataReadAfterItsWaitIsCorrect) { run_early_read(true); }

TEST(EmulatorStrictDeathTest, CpAsyncDestinationReadBeforeTheWaitIsCaught) {
  // Under TSan: a race with the copy unit; without it, the poisoned (NaN) destination is read,
  // which the value check reports as an error.
  if (!kRaceDetection) {
    const std::string e = error_of([] { run_early_read(false); });
    EXPECT_NE(e.find("instead of the copied 3"), std::string::npos) << e;
    return;
  }
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(run_early_read(false), "ThreadSanitizer: data race(.|\n)*planted_read_before_wait");
}

// ---- barrier divergence and warp-collective misuse (errors from the scheduler) ---------------

struct DivergeParams {
  int mode;
};
__global__ void planted_divergence(DivergeParams p) {
  if (p.mode == 0) {
    if (threadIdx.x < 16) {
      __syncthreads();
    } else {
      __syncthreads();  // a different call site
    }
  } else if (p.mode == 1) {
    if (threadIdx.x == 5) return;  // exits, while the others wait at the barrier
    __syncthreads();
  } else if (p.mode == 2) {
    if (threadIdx.x < 32) (void)__shfl_sync(0xffffffffu, 1, 0);  // lanes 32..63 not involved: fine
    if (threadIdx.x == 40) return;
    (void)__shfl_xor_sync(0xffffffffu, 1, 1);  // lane 8 of warp 1 has exited
  } else {
    (void)__shfl_sync(0x0000ffffu, 1, 0);  // lanes 16..31 are not in their own mask
  }
}

TEST(EmulatorStrict, BarrierDivergenceIsAnError) {
  const std::string a = error_of(
      [] { NURI_LAUNCH(planted_divergence, dim3(1), dim3(64), 0, nullptr, DivergeParams{0}); });
  EXPECT_NE(a.find("barrier divergence"), std::string::npos) << a;
  EXPECT_NE(a.find("test_emu_strict.cpp"), std::string::npos) << a;
  EXPECT_NE(a.find("planted_divergence"), std::string::npos) << a;
  const std::string b = error_of(
      [] { NURI_LAUNCH(planted_divergence, dim3(1), dim3(64), 0, nullptr, DivergeParams{1}); });
  EXPECT_NE(b.find("exited while thread"), std::string::npos) << b;
  EXPECT_NE(b.find("(5,0,0)"), std::string::npos) << b;
}

TEST(EmulatorStrict, WarpCollectivesWithMissingLanesAreErrors) {
  const std::string a = error_of(
      [] { NURI_LAUNCH(planted_divergence, dim3(1), dim3(64), 0, nullptr, DivergeParams{2}); });
  EXPECT_NE(a.find("lane 8 (thread (40,0,0)) exited"), std::string::npos) << a;
  const std::string b = error_of(
      [] { NURI_LAUNCH(planted_divergence, dim3(1), dim3(32), 0, nullptr, DivergeParams{3}); });
  EXPECT_NE(b.find("is not in the mask 0xffff"), std::string::npos) << b;
  const std::string c = error_of(
      [] { NURI_LAUNCH(planted_divergence, dim3(1), dim3(48), 0, nullptr, DivergeParams{2}); });
  EXPECT_NE(c.find("does not exist (the block has 48 threads)"), std::string::npos) << c;
}

// ---- out-of-bounds global accesses --------------------------------------------------------------

struct OobParams {
  float* buf;
  int index;
};
__global__ void planted_out_of_bounds(OobParams p) {
  if (threadIdx.x == 3) p.buf[p.index] = 1.f;
}

TEST(EmulatorStrictDeathTest, AccessPastAnAllocationFaultsWithKernelAndThread) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // 1024 floats = 4096 bytes: the allocation ends exactly at the guard page.
  EXPECT_DEATH(
      {
        DeviceBuffer<float> buf(1024);
        NURI_LAUNCH(planted_out_of_bounds, dim3(2), dim3(32), 0, nullptr,
                    OobParams{buf.get(), 1024});
      },
      "out-of-bounds access(.|\n)*0 bytes past the end of a 4096-byte device allocation"
      "(.|\n)*kernel planted_out_of_bounds, block \\([01],0,0\\), thread \\(3,0,0\\)");
}

TEST(EmulatorStrict, WriteIntoThePaddingIsCaughtAfterTheLaunch) {
  DeviceBuffer<float> buf(1000);  // 4000 bytes, padded to 4096: index 1000 is in the padding
  const std::string e = error_of([&] {
    NURI_LAUNCH(planted_out_of_bounds, dim3(1), dim3(32), 0, nullptr, OobParams{buf.get(), 1000});
  });
  EXPECT_NE(e.find("planted_out_of_bounds"), std::string::npos) << e;
  EXPECT_NE(e.find("0 bytes past the end of a 4000-byte device allocation"), std::string::npos)
      << e;
}

TEST(EmulatorStrict, CopiesOutsideAnAllocationAreRejected) {
  DeviceBuffer<float> buf(16);
  std::vector<float> host(32);
  EXPECT_EQ(cudaMemcpy(host.data(), buf.get(), 32 * sizeof(float), cudaMemcpyDeviceToHost),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

// ---- shared memory's edges, and the addresses async copies and ldmatrix are given ------------

enum class SmemBug { none, past_end, before_start, ldmatrix_past_end, ldmatrix_global,
                     cp_async_to_global, cp_async_from_host };
struct SmemParams {
  float* out;        // [32]
  const float* src;  // [32], device memory unless cp_async_from_host
  SmemBug bug;
};
// A block of 32 threads with 256 bytes of dynamic shared memory: each thread copies its 4 bytes
// in by cp.async, then warp 0 loads an 8x8 matrix of them with ldmatrix (lanes 0..7 giving rows
// 16 bytes apart, 128 bytes in all), and each thread writes its register back out.
__global__ void planted_smem_edges(SmemParams p) {
  float* s = nuri::kernels::dynamic_smem<float>();
  const int t = int(threadIdx.x);
  float* dst = s + t;
  if (p.bug == SmemBug::cp_async_to_global && t == 5) dst = p.out + 8;
  nuri::kernels::cp_async<4>(dst, p.src + t);
  nuri::kernels::cp_async_commit();
  nuri::kernels::cp_async_wait<0>();
  __syncthreads();
  if (p.bug == SmemBug::past_end && t == 3) s[64 + 2] = 1.f;  // byte 8 past the 256
  if (p.bug == SmemBug::before_start && t == 3) s[-1] = 1.f;
  __syncthreads();
  const unsigned char* row = reinterpret_cast<const unsigned char*>(s) + 16 * (t % 8);
  if (p.bug == SmemBug::ldmatrix_past_end && t == 6) row += 192;  // bytes 288..303
  if (p.bug == SmemBug::ldmatrix_global && t == 2) {
    row = reinterpret_cast<const unsigned char*>(p.src);
  }
  uint32_t r[1];
  nuri::kernels::ldmatrix<1, false>(r, row);
  float v;
  std::memcpy(&v, r, 4);  // two bf16 halves: compared as bits
  p.out[t] = v;
}

std::string smem_error(SmemBug bug) {
  std::vector<float> in(32);
  for (int i = 0; i < 32; ++i) in[size_t(i)] = float(i + 1);
  DeviceBuffer<float> src(in), out(32);
  std::vector<float> host(in);
  return error_of([&] {
    NURI_LAUNCH(planted_smem_edges, dim3(1), dim3(32), 256, nullptr,
                SmemParams{out.get(), bug == SmemBug::cp_async_from_host ? host.data() : src.get(),
                           bug});
    if (bug != SmemBug::none) return;
    // ldmatrix's m8n8 fragment: lane l holds row l / 4, 32-bit word l % 4 of it, and row j is
    // lane j's 16 bytes (words 4j..4j+3 of shared memory, which thread i filled with i + 1).
    const std::vector<float> v = out.download();
    for (int l = 0; l < 32; ++l) {
      NURI_CHECK(v[size_t(l)] == float(4 * (l / 4) + l % 4 + 1), "lane ", l, " loaded ",
                 v[size_t(l)]);
    }
  });
}

TEST(EmulatorStrict, SharedMemoryEdgesAndAsyncAddressesAreChecked) {
  EXPECT_EQ(smem_error(SmemBug::none), "no error");
  expect_has(smem_error(SmemBug::past_end),
             "planted_smem_edges: a thread wrote byte 8 past the end of the block's dynamic "
             "shared memory (256 bytes");
  expect_has(smem_error(SmemBug::before_start),
             "a thread wrote the byte 1 bytes before the start of the block's dynamic shared "
             "memory (256 bytes)");
  expect_has(smem_error(SmemBug::ldmatrix_past_end),
             "lane 6's 16-byte row reaches byte 303 of the block's 256-byte dynamic shared memory");
  expect_has(smem_error(SmemBug::ldmatrix_global), "lane 2's 16-byte row is in global memory");
  expect_has(smem_error(SmemBug::cp_async_to_global),
             "the 4-byte destination is in global memory (a cudaMalloc allocation) (it must be "
             "shared memory)");
  expect_has(smem_error(SmemBug::cp_async_from_host),
             "the 4-byte source is not inside a device allocation (cudaMalloc) or pinned host");
}

// ---- max and min of unwritten memory ------------------------------------------------------------

enum class MaxBug { none, unwritten_f32, negated_bf16, min_of_unwritten };
constexpr int kWarpMaxLine = 354;  // planted_unwritten_max's warp_max call (static_assert there)
struct MaxParams {
  const __nv_bfloat16* unwritten;  // [32]: cudaMalloc'ed, never written
  float* out;                      // [32]
  MaxBug bug;
};
// A warp's max of shared memory (nuri's own warp_max): lane 5's slot left unwritten, its
// neighbour reads the poison, and fmaxf would return the other operand, so the warp's max
// would come out right without the check. Then a bf16 value from unwritten device memory,
// negated and scaled, in a min.
__global__ void planted_unwritten_max(MaxParams p) {
  float* s = nuri::kernels::dynamic_smem<float>();
  const unsigned t = threadIdx.x;
  if (!(p.bug == MaxBug::unwritten_f32 && t == 5)) s[t] = float(t);
  __syncthreads();
  float v = nuri::kernels::warp_max(s[(t + 1) % 32]); static_assert(__LINE__ == kWarpMaxLine);
  if (p.bug == MaxBug::negated_bf16 && t == 7) {
    v = nuri::kernels::fminf(v, -(0.5f * nuri::kernels::to_float(p.unwritten[t])));
  }
  if (p.bug == MaxBug::min_of_unwritten && t == 9) v = min(v, s[40]);  // past what was written
  p.out[t] = v;
}

std::string max_error(MaxBug bug) {
  DeviceBuffer<__nv_bfloat16> unwritten(32);
  DeviceBuffer<float> out(32);
  return error_of([&] {
    NURI_LAUNCH(planted_unwritten_max, dim3(1), dim3(32), 64 * sizeof(float), nullptr,
                MaxParams{unwritten.get(), out.get(), bug});
    for (float v : out.download()) NURI_CHECK(v == 31.f, "the warp's max is ", v, ", not 31");
  });
}

TEST(EmulatorStrict, MaxAndMinOfUnwrittenMemoryAreErrors) {
  EXPECT_EQ(max_error(MaxBug::none), "no error");
  expect_has(max_error(MaxBug::unwritten_f32),
             "planted_unwritten_max: max at ");
  // (the kernel's line that called warp_max, not the helper's)
  expect_has(max_error(MaxBug::unwritten_f32),
             "test_emu_strict.cpp:" + std::to_string(kWarpMaxLine));
  expect_has(max_error(MaxBug::unwritten_f32),
             "an operand is unwritten memory's poison (or a value computed from it)");
  expect_has(max_error(MaxBug::negated_bf16), "min at ");
  expect_has(max_error(MaxBug::negated_bf16), "and 0x7fff0000");
  expect_has(max_error(MaxBug::min_of_unwritten), "and 0xffffffff");
  // The patterns themselves: unwritten f32, bf16 and f16 bytes, either sign; not the NaN an
  // invalid operation makes, nor infinities.
  for (const uint32_t u : {0xffffffffu, 0x7fffffffu, 0xffff0000u, 0x7fff0000u, 0xffffe000u}) {
    EXPECT_TRUE(emu::is_unwritten_poison(std::bit_cast<float>(u))) << std::hex << u;
  }
  volatile float zero = 0.f;
  for (const float f : {std::numeric_limits<float>::quiet_NaN(), zero / zero,
                        std::numeric_limits<float>::infinity(), -1.f, 0.f}) {
    EXPECT_FALSE(emu::is_unwritten_poison(f)) << f;
  }
}

// ---- devices: each host thread has its own current device --------------------------------------

__global__ void device_fill(float* p, float v) { p[threadIdx.x] = v; }

// With NURI_EMU_DEVICES=2: a stream made on device 1 by one thread; another thread, whose
// current device is 0 until it sets one, launching into it is an error (a GPU refuses such a
// launch), and after cudaSetDevice(1) the same launch runs.
TEST(EmulatorStrict, ALaunchIntoAnotherDevicesStreamIsAnError) {
  ScopedEnv devices("NURI_EMU_DEVICES", "2");
  int count = 0;
  ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess);
  ASSERT_EQ(count, 2);
  EXPECT_EQ(cudaSetDevice(2), cudaErrorInvalidDevice);
  cudaGetLastError();
  cudaStream_t s = nullptr;
  std::thread([&] {
    ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
    ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  }).join();
  DeviceBuffer<float> out(32);
  std::string refused, ran;
  std::thread([&] {
    int d = -1;
    cudaGetDevice(&d);
    EXPECT_EQ(d, 0);  // a new thread starts on device 0
    refused = error_of([&] { NURI_LAUNCH(device_fill, dim3(1), dim3(32), 0, s, out.get(), 1.f); });
    cudaSetDevice(1);
    ran = error_of([&] {
      NURI_LAUNCH(device_fill, dim3(1), dim3(32), 0, s, out.get(), 2.f);
      cudaStreamSynchronize(s);
    });
  }).join();
  expect_has(refused, "device_fill: launched into a stream of device 1 from a thread whose "
                      "current device is 0 (cudaSetDevice(1) on this thread first)");
  EXPECT_EQ(ran, "no error");
  for (float v : out.download()) EXPECT_EQ(v, 2.f);
  std::thread([&] {
    cudaSetDevice(1);
    EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  }).join();
}

// ---- streams: work is ordered only as CUDA orders it -------------------------------------------

__global__ void stream_fill(float* p, float v) { p[threadIdx.x] = v; }
__global__ void stream_double(const float* p, float* out) {
  out[threadIdx.x] = 2.f * p[threadIdx.x];
}

enum class StreamCase {
  event,               // s1 writes, an event orders s2's read after it
  no_event,            // the same without the event: the two streams may run together
  legacy_read,         // a blocking stream writes, cudaMemcpy on the legacy stream reads
  legacy_nonblocking,  // the same from a non-blocking stream: not ordered
  pinned_no_sync,      // an asynchronous copy into pinned memory read before the stream's sync
  pinned_sync,         // ... after cudaStreamSynchronize
};

float run_streams(StreamCase c) {
  const bool nonblocking = c != StreamCase::legacy_read;
  cudaStream_t s1, s2;
  NURI_CUDA_CHECK(cudaStreamCreateWithFlags(&s1, nonblocking ? cudaStreamNonBlocking : 0));
  NURI_CUDA_CHECK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  DeviceBuffer<float> a(32), b(32);
  NURI_LAUNCH(stream_fill, dim3(1), dim3(32), 0, s1, a.get(), 3.f);
  float got = 0.f;
  if (c == StreamCase::event || c == StreamCase::no_event) {
    cudaEvent_t e;
    NURI_CUDA_CHECK(cudaEventCreate(&e));
    if (c == StreamCase::event) {
      NURI_CUDA_CHECK(cudaEventRecord(e, s1));
      NURI_CUDA_CHECK(cudaStreamWaitEvent(s2, e, 0));
    }
    NURI_LAUNCH(stream_double, dim3(1), dim3(32), 0, s2, a.get(), b.get());
    NURI_CUDA_CHECK(cudaStreamSynchronize(s2));
    got = b.download()[5];
    NURI_CUDA_CHECK(cudaEventDestroy(e));
  } else if (c == StreamCase::legacy_read || c == StreamCase::legacy_nonblocking) {
    got = a.download()[5];  // cudaMemcpy on the legacy stream
  } else {
    float* pinned = nullptr;
    NURI_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&pinned), 32 * sizeof(float)));
    NURI_CUDA_CHECK(cudaMemcpyAsync(pinned, a.get(), 32 * sizeof(float), cudaMemcpyDeviceToHost,
                                    s1));
    if (c == StreamCase::pinned_sync) NURI_CUDA_CHECK(cudaStreamSynchronize(s1));
    got = pinned[5];
    NURI_CUDA_CHECK(cudaStreamSynchronize(s1));
    NURI_CUDA_CHECK(cudaFreeHost(pinned));
  }
  NURI_CUDA_CHECK(cudaDeviceSynchronize());
  NURI_CUDA_CHECK(cudaStreamDestroy(s1));
  NURI_CUDA_CHECK(cudaStreamDestroy(s2));
  return got;
}

// A stream's history must not leak into another through the emulator's own state (each
// launch's sync objects, its stream's pools, a launch counter): kernel k0 on s1 writes `a`, k1
// runs (on s2, or on s1: a counter every launch incremented with ordering once carried s1's
// history to the next launch, whatever its stream), then k2 on s2 reads `a`, with no event
// anywhere: a race.
float run_two_launches(bool second_on_s1) {
  cudaStream_t s1, s2;
  NURI_CUDA_CHECK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  NURI_CUDA_CHECK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  DeviceBuffer<float> a(32), b(32), c(32);
  NURI_LAUNCH(stream_fill, dim3(1), dim3(32), 0, s1, a.get(), 3.f);
  NURI_LAUNCH(stream_fill, dim3(1), dim3(32), 0, second_on_s1 ? s1 : s2, c.get(), 1.f);
  NURI_LAUNCH(stream_double, dim3(1), dim3(32), 0, s2, a.get(), b.get());
  NURI_CUDA_CHECK(cudaDeviceSynchronize());
  const float got = b.download()[5];
  NURI_CUDA_CHECK(cudaStreamDestroy(s1));
  NURI_CUDA_CHECK(cudaStreamDestroy(s2));
  return got;
}

// A destroyed stream's work is still what the device's synchronization waits for.
float run_destroyed() {
  cudaStream_t s;
  NURI_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  DeviceBuffer<float> a(32);
  NURI_LAUNCH(stream_fill, dim3(1), dim3(32), 0, s, a.get(), 4.f);
  NURI_CUDA_CHECK(cudaStreamDestroy(s));
  NURI_CUDA_CHECK(cudaDeviceSynchronize());
  return a.download()[5];
}

TEST(EmulatorStreams, WorkOrderedByEventsAndSynchronizationIsNotReported) {
  EXPECT_EQ(run_streams(StreamCase::event), 6.f);
  EXPECT_EQ(run_streams(StreamCase::legacy_read), 3.f);
  EXPECT_EQ(run_streams(StreamCase::pinned_sync), 3.f);
  EXPECT_EQ(run_destroyed(), 4.f);
  EXPECT_EQ(cudaStreamDestroy(nullptr), cudaErrorInvalidResourceHandle);  // not a stream's
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidResourceHandle);
}

TEST(EmulatorStreamsDeathTest, AnEarlierLaunchOrdersNoStreams) {
  if (!kRaceDetection) GTEST_SKIP() << "race detection needs a -DNURI_TSAN=ON build";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(run_two_launches(false), "ThreadSanitizer: data race(.|\n)*stream_double");
  EXPECT_DEATH(run_two_launches(true), "ThreadSanitizer: data race(.|\n)*stream_double");
}

// The host reads pinned memory that an asynchronous copy on s1 fills, with a second copy (from
// pageable memory, which the host reads at the call) queued on s1 after it: still a race.
float run_pinned_then_pageable() {
  cudaStream_t s1;
  NURI_CUDA_CHECK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  DeviceBuffer<float> a(std::vector<float>(32, 3.f)), b(32);
  float* pinned = nullptr;
  NURI_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&pinned), 32 * sizeof(float)));
  NURI_CUDA_CHECK(
      cudaMemcpyAsync(pinned, a.get(), 32 * sizeof(float), cudaMemcpyDeviceToHost, s1));
  const std::vector<float> pageable(32, 1.f);
  NURI_CUDA_CHECK(cudaMemcpyAsync(b.get(), pageable.data(), 32 * sizeof(float),
                                  cudaMemcpyHostToDevice, s1));
  const float got = pinned[5];  // the first copy may still be running
  NURI_CUDA_CHECK(cudaStreamSynchronize(s1));
  NURI_CUDA_CHECK(cudaFreeHost(pinned));
  NURI_CUDA_CHECK(cudaStreamDestroy(s1));
  return got;
}

TEST(EmulatorStreamsDeathTest, AQueuedCopyMakesNoEarlierOneComplete) {
  if (!kRaceDetection) GTEST_SKIP() << "race detection needs a -DNURI_TSAN=ON build";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(run_pinned_then_pageable(), "ThreadSanitizer: data race(.|\n)*run_pinned");
}

TEST(EmulatorStreamsDeathTest, UnorderedStreamsAndEarlyHostReadsAreRaces) {
  if (!kRaceDetection) GTEST_SKIP() << "race detection needs a -DNURI_TSAN=ON build";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // Kernels on two streams with no event between them.
  EXPECT_DEATH(run_streams(StreamCase::no_event),
               "ThreadSanitizer: data race(.|\n)*stream_double");
  // The legacy stream does not wait for a non-blocking stream's kernel.
  EXPECT_DEATH(run_streams(StreamCase::legacy_nonblocking),
               "ThreadSanitizer: data race(.|\n)*stream_fill");
  // The host reads pinned memory an asynchronous copy may still be writing.
  EXPECT_DEATH(run_streams(StreamCase::pinned_no_sync),
               "ThreadSanitizer: data race(.|\n)*run_streams");
}

// NURI_EMU_SMEM_PER_SM: the emulated device reports that shared memory a SM (and 1 KiB less a
// block, the driver's reserve), a launch asking for more than a block may have is refused saying
// both numbers, and a malformed value is an error naming the variable.
__global__ void first_smem_word(float* out) {
  float* s = ::nuri::kernels::dynamic_smem<float>();
  if (threadIdx.x == 0) {
    s[0] = 7.f;
    out[0] = s[0];
  }
}

TEST(EmulatorStrict, SharedMemoryPerSmIsTheEmulatedDevicesAndBoundsALaunch) {
  struct Unset {
    ~Unset() { unsetenv("NURI_EMU_SMEM_PER_SM"); }
  } unset;
  DeviceBuffer<float> out(1);
  cudaDeviceProp prop{};
  ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  EXPECT_EQ(prop.sharedMemPerMultiprocessor, size_t(228 * 1024));
  EXPECT_EQ(prop.sharedMemPerBlockOptin, size_t(227 * 1024));
  setenv("NURI_EMU_SMEM_PER_SM", "102400", 1);  // an RTX 3090/4090
  ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  EXPECT_EQ(prop.sharedMemPerMultiprocessor, size_t(102400));
  EXPECT_EQ(prop.sharedMemPerBlockOptin, size_t(101376));
  NURI_LAUNCH(first_smem_word, dim3(1), dim3(32), 101376, nullptr, out.get());
  EXPECT_EQ(out.download()[0], 7.f);
  const std::string e = error_of(
      [&] { NURI_LAUNCH(first_smem_word, dim3(1), dim3(32), 101377, nullptr, out.get()); });
  EXPECT_NE(e.find("101377 bytes of dynamic shared memory exceed the 101376"), std::string::npos)
      << e;
  setenv("NURI_EMU_SMEM_PER_SM", "100k", 1);
  const std::string bad = error_of([&] { (void)cudaGetDeviceProperties(&prop, 0); });
  EXPECT_NE(bad.find("NURI_EMU_SMEM_PER_SM='100k'"), std::string::npos) << bad;
}

}  // namespace
}  // namespace nuri::test
