// Each backend's allocator: what stats() reports, and on CUDA the caching (size classes, reuse
// without cudaMalloc after warm-up, empty_cache, the out-of-memory path). Expected byte counts
// come from the documented rules: the CPU allocator counts the bytes asked for and caches
// nothing; the CUDA allocator rounds below 1 MiB to 512 bytes and from 1 MiB on to 2 MiB
// (csrc/backend/cuda/allocator.h) and counts the rounded sizes.
#include <algorithm>
#include <cmath>
#include <thread>
#include <vector>

#include "ops/harness.h"
#include "test_util.h"

namespace nuri::test {
namespace {

constexpr int64_t kMiB = int64_t(1) << 20;

class AllocatorTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::unique_ptr<Backend> be = make_backend(GetParam());
  std::shared_ptr<Allocator> alloc = be->allocator();
  bool caching() const { return !be->device().is_cpu(); }
  /// What current_bytes grows by for a tensor of `bytes`: the CUDA size class, or the bytes.
  int64_t held(int64_t bytes) const {
    if (!caching()) return bytes;
    const int64_t unit = bytes < kMiB ? 512 : 2 * kMiB;
    return (bytes + unit - 1) / unit * unit;
  }
  Tensor f32(int64_t n) { return be->empty({n}, DType::f32); }
};

TEST_P(AllocatorTest, SizeClassesAtTheirEdges) {
  // {f32 elements, bytes held on CUDA}
  const std::vector<std::pair<int64_t, int64_t>> cases = {
      {1, 512},            // 4 B
      {128, 512},          // 512 B: exactly one class
      {129, 1024},         // 516 B
      {262143, kMiB},      // 1 MiB - 4 B: the last 512-byte class
      {262144, 2 * kMiB},  // 1 MiB: the first 2 MiB class
      {524288, 2 * kMiB},  // 2 MiB
      {524289, 4 * kMiB},  // 2 MiB + 4 B
  };
  for (const auto& [n, cuda_bytes] : cases) {
    const int64_t expect = caching() ? cuda_bytes : 4 * n;
    EXPECT_EQ(held(4 * n), expect) << n;  // the helper agrees with the table
    const AllocatorStats before = alloc->stats();
    Tensor t = f32(n);
    const AllocatorStats s = alloc->stats();
    EXPECT_EQ(s.current_bytes - before.current_bytes, expect) << n << " f32";
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % alloc->alignment(), 0u) << n;
    EXPECT_GE(s.reserved_bytes, s.current_bytes);
  }
  // A bf16 tensor of 3 elements asks for 6 bytes.
  const AllocatorStats before = alloc->stats();
  Tensor b = be->empty({3}, DType::bf16);
  EXPECT_EQ(alloc->stats().current_bytes - before.current_bytes, caching() ? 512 : 6);
}

TEST_P(AllocatorTest, FreedBlocksAreReusedAndCountedAsDocumented) {
  const std::vector<int64_t> sizes = {100, 1, 1000, 300000};  // f32 elements
  // CUDA classes: 400 B and 4 B → 512 each, 4000 B → 4096, 1.2 MB → 2 MiB.
  const int64_t asked = 4 * (100 + 1 + 1000 + 300000);
  const int64_t rounded = 512 + 512 + 4096 + 2 * kMiB;
  const int64_t live = caching() ? rounded : asked;
  alloc->empty_cache();
  alloc->reset_peak();
  const AllocatorStats s0 = alloc->stats();
  EXPECT_EQ(s0.num_allocs, 0);
  EXPECT_EQ(s0.peak_bytes, s0.current_bytes);
  EXPECT_EQ(s0.reserved_bytes, s0.current_bytes);  // nothing cached after empty_cache

  std::vector<Tensor> ts;
  for (int64_t n : sizes) ts.push_back(f32(n));
  AllocatorStats s = alloc->stats();
  EXPECT_EQ(s.current_bytes - s0.current_bytes, live);
  EXPECT_EQ(s.reserved_bytes - s0.reserved_bytes, live);
  EXPECT_EQ(s.peak_bytes - s0.current_bytes, live);
  EXPECT_EQ(s.num_allocs, 4);

  ts.clear();
  s = alloc->stats();
  EXPECT_EQ(s.current_bytes, s0.current_bytes);
  EXPECT_EQ(s.peak_bytes - s0.current_bytes, live);                       // peak stays
  EXPECT_EQ(s.reserved_bytes - s0.reserved_bytes, caching() ? live : 0);  // CUDA keeps them

  // The same sizes again: the CUDA allocator serves all four from its cache.
  for (int64_t n : sizes) ts.push_back(f32(n));
  s = alloc->stats();
  EXPECT_EQ(s.num_allocs, caching() ? 4 : 8);
  EXPECT_EQ(s.current_bytes - s0.current_bytes, live);
  EXPECT_EQ(s.reserved_bytes - s0.reserved_bytes, live);
  EXPECT_EQ(s.peak_bytes - s0.current_bytes, live);

  // A freed block goes to the next request of its class: same size, same address; and a
  // different size of the same class (448 B → 512) takes a cached block too.
  void* addr = ts[2].raw();
  ts[2] = Tensor();
  ts[2] = f32(1000);
  if (caching()) {
    EXPECT_EQ(ts[2].raw(), addr);
  }
  ts[0] = Tensor();
  ts[0] = f32(112);
  s = alloc->stats();
  EXPECT_EQ(s.num_allocs, caching() ? 4 : 10);
  EXPECT_EQ(s.current_bytes - s0.current_bytes, caching() ? rounded : asked - 400 + 448);

  // A size of a class nothing is cached for (600 B → 1024) is a new allocation.
  Tensor extra = f32(150);
  s = alloc->stats();
  EXPECT_EQ(s.num_allocs, caching() ? 5 : 11);
  EXPECT_EQ(s.reserved_bytes - s0.reserved_bytes, caching() ? rounded + 1024 : asked + 648);

  // empty_cache gives back exactly the cached blocks: reserved drops to current.
  ts.resize(2);  // frees the 4096-byte and 2 MiB blocks
  s = alloc->stats();
  EXPECT_EQ(s.reserved_bytes - s.current_bytes, caching() ? 4096 + 2 * kMiB : 0);
  alloc->empty_cache();
  const AllocatorStats e = alloc->stats();
  EXPECT_EQ(e.reserved_bytes, e.current_bytes);
  EXPECT_EQ(e.current_bytes, s.current_bytes);
  EXPECT_EQ(e.current_bytes - s0.current_bytes, caching() ? 512 + 512 + 1024 : 448 + 4 + 600);
  Tensor again = f32(1000);  // its block was released: a new allocation
  EXPECT_EQ(alloc->stats().num_allocs, e.num_allocs + 1);

  alloc->reset_peak();
  s = alloc->stats();
  EXPECT_EQ(s.peak_bytes, s.current_bytes);
  EXPECT_EQ(s.num_allocs, 0);
}

// One "step": the tensors a small forward + backward needs, freed at the end. The host inputs
// come from the process-wide CPU allocator, not the backend's.
Vec gelu_step(Backend& be, Backend& host, const Vec& x, const Vec& dy) {
  const Shape shape{37, 19};
  const DType dt = act_dtype(be);
  Tensor hx = on_dtype(host, shape, x, dt), hdy = on_dtype(host, shape, dy, dt);
  Tensor tx = be.empty(shape, dt), tdy = be.empty(shape, dt);
  be.copy(hx, tx);
  be.copy(hdy, tdy);
  Tensor y = be.empty(shape, dt), dx = be.empty(shape, dt);
  be.gelu(tx, y);
  be.gelu_backward(tx, tdy, dx);
  Vec out = values(be, y);
  const Vec g = values(be, dx);
  out.insert(out.end(), g.begin(), g.end());
  return out;
}

TEST_P(AllocatorTest, StepAfterWarmupAllocatesNothingFromTheDevice) {
  const Vec x = random_vec(37 * 19, 1), dy = random_vec(37 * 19, 2);
  const std::unique_ptr<Backend> host = make_backend("cpu");
  alloc->empty_cache();
  alloc->reset_peak();
  const Vec first = gelu_step(*be, *host, x, dy);
  const AllocatorStats warm = alloc->stats();
  EXPECT_EQ(warm.num_allocs, 4);  // x, dy, y, dx are live together
  const Vec second = gelu_step(*be, *host, x, dy);
  const AllocatorStats s = alloc->stats();
  EXPECT_EQ(s.num_allocs, caching() ? 4 : 8);
  EXPECT_EQ(s.peak_bytes, warm.peak_bytes);
  EXPECT_EQ(s.reserved_bytes, warm.reserved_bytes);
  // Reused blocks are fully rewritten: the same inputs give the same bits.
  ASSERT_EQ(first.size(), second.size());
  for (size_t i = 0; i < first.size(); ++i) ASSERT_EQ(first[i], second[i]) << i;
}

TEST_P(AllocatorTest, TensorsFreedOnOtherThreadsAreCountedOnce) {
  alloc->empty_cache();
  const AllocatorStats s0 = alloc->stats();
  constexpr int kThreads = 4, kPerThread = 16;
  std::vector<std::vector<Tensor>> owned(kThreads);
  int64_t expect = 0;
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPerThread; ++i) {
      const int64_t n = 64 * (1 + i);  // 256 B … 4 KiB: 8 classes on CUDA
      owned[size_t(t)].push_back(f32(n));
      expect += held(4 * n);
    }
  }
  EXPECT_EQ(alloc->stats().current_bytes - s0.current_bytes, expect);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&owned, t] { owned[size_t(t)].clear(); });
  for (auto& th : threads) th.join();
  const AllocatorStats s = alloc->stats();
  EXPECT_EQ(s.current_bytes, s0.current_bytes);
  EXPECT_EQ(s.reserved_bytes - s0.reserved_bytes, caching() ? expect : 0);
}

// Backend::copy from the host: the source may be overwritten as soon as copy returns (the CUDA
// backend stages up to 4 slots of 1 MiB in pinned memory and does not wait for the device, so a
// staging slot reused too early, or a chunk boundary off by one, shows here as wrong bytes).
// Sizes straddle the slot and the 4 MiB staging limit; the nine copies in a row reuse slots.
TEST_P(AllocatorTest, HostSourceMayChangeAsSoonAsCopyReturns) {
  const std::vector<int64_t> sizes = {1,           kMiB / 4,     kMiB / 4 + 1, 5 * kMiB / 8,
                                      kMiB / 2,    kMiB,         kMiB + 3,     kMiB / 4 - 1,
                                      kMiB + kMiB / 4};  // f32 elements: 4 B … 5 MiB
  std::vector<Tensor> host, dev;
  std::vector<std::vector<float>> expect;
  Tensor scratch = Tensor::empty({sizes.back()}, DType::f32);
  for (size_t i = 0; i < sizes.size(); ++i) {
    const int64_t n = sizes[i];
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) v[size_t(j)] = float(i * 1000003 + size_t(j) % 65521);
    Tensor src = scratch.slice(0, 0, n);  // one host buffer for every copy
    std::copy(v.begin(), v.end(), src.data<float>());
    dev.push_back(be->empty({n}, DType::f32));
    be->copy(src, dev.back());
    std::fill(src.data<float>(), src.data<float>() + n, -1.f);  // the caller moves on at once
    expect.push_back(std::move(v));
  }
  for (size_t i = 0; i < sizes.size(); ++i) {
    Tensor back = Tensor::empty({sizes[i]}, DType::f32);
    be->copy(dev[i], back);
    const float* b = back.data<float>();
    for (int64_t j = 0; j < sizes[i]; ++j) {
      ASSERT_EQ(b[j], expect[i][size_t(j)])
          << "copy " << i << " (" << sizes[i] << " floats), element " << j;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, AllocatorTest, ::testing::ValuesIn(backends()),
                         [](const auto& info) { return sanitize_name(info.param); });

TEST(CudaDevices, ListWhatTheBuildCanUse) {
  const std::vector<CudaDeviceInfo> devices = cuda_devices();
#if defined(NURI_CUDA_EMULATION)
  // The emulated runtime describes one sm_90-like device (kernels/emu/runtime.cpp).
  ASSERT_EQ(devices.size(), 1u);
  EXPECT_EQ(devices[0].index, 0);
  EXPECT_NE(devices[0].name.find("emulator"), std::string::npos) << devices[0].name;
  EXPECT_EQ(devices[0].major * 10 + devices[0].minor, 90);
  EXPECT_EQ(devices[0].sms, 132);
  EXPECT_EQ(devices[0].total_bytes, int64_t(80) << 30);
#else
  const auto names = available_backends();
  if (std::find(names.begin(), names.end(), "cuda") == names.end()) {
    EXPECT_TRUE(devices.empty());  // no CUDA backend: no devices, whatever the machine has
  }
  for (size_t i = 0; i < devices.size(); ++i) {  // a real device, when this machine has one
    EXPECT_EQ(devices[i].index, int(i));
    EXPECT_FALSE(devices[i].name.empty());
    EXPECT_GE(devices[i].major, 5);
    EXPECT_GT(devices[i].sms, 0);
    EXPECT_GT(devices[i].total_bytes, int64_t(1) << 30);
  }
#endif
}

#if defined(NURI_CUDA_EMULATION)
// A backend on device 1 (of 2 emulated), built on one thread and called from another whose
// current device is 0 (each host thread has its own, as a Python thread or nuri's progress
// thread would): its launches go to device 1, where the emulator would refuse a launch into the
// backend's stream from a thread on device 0, and the values are right. (The emulator checks
// launches only: its memory has no device, so the allocator's own device setting is not
// shown here.)
TEST(CudaDevices, ABackendOnDevice1WorksFromAnotherThread) {
  ScopedEnv devices("NURI_EMU_DEVICES", "2");
  ASSERT_EQ(cuda_devices().size(), 2u);
  std::unique_ptr<Backend> be;
  Tensor x, y;  // allocated where the backend was made: the other thread only launches
  std::thread([&] {
    be = make_backend("cuda-emu:1");
    x = be->empty({64}, DType::f32);
    y = be->empty({64}, DType::f32);
  }).join();
  EXPECT_EQ(be->device().str(), "cuda:1");
  std::vector<float> got;
  std::string error;
  std::thread([&] {
    error = error_of([&] {
      Tensor host = Tensor::empty({64}, DType::f32);
      for (int64_t i = 0; i < 64; ++i) host.data<float>()[i] = float(i) - 31.5f;
      be->copy(host, x);
      be->gelu(x, y);
      be->copy(y, host);
      got.assign(host.data<float>(), host.data<float>() + 64);
    });
  }).join();
  ASSERT_EQ(error, "no error");
  for (int64_t i = 0; i < 64; ++i) {
    const double v = double(i) - 31.5;
    const double want = 0.5 * v * (1 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
    EXPECT_NEAR(got[size_t(i)], want, 1e-5 * (1 + std::abs(want))) << i;
  }
  std::thread([&] {
    x = y = Tensor();
    be.reset();
  }).join();
}
#endif

// The out-of-memory path exists only on the caching (CUDA) allocator.
class CachingAllocatorTest : public AllocatorTest {};

TEST_P(CachingAllocatorTest, OutOfMemoryReleasesTheCacheThenSaysWhatToReduce) {
  { Tensor cached = f32(1000); }  // leaves a 4096-byte block in the cache
  Tensor keep = f32(10);
  const AllocatorStats s0 = alloc->stats();
  ASSERT_GE(s0.reserved_bytes - s0.current_bytes, 4096);
  const int64_t huge = int64_t(1) << 48;  // f32 elements: 1 PiB, more than any device has
  try {
    Tensor t = f32(huge);
    ADD_FAILURE() << "allocating 1 PiB succeeded";
  } catch (const Error& e) {
    const std::string msg = e.what();
    const std::vector<std::string> parts = {"out of memory", std::to_string(4 * huge) + " bytes",
                                            "(parameters 0.0 MiB, gradients", "buffers",
                                            "parallel.zero_stage=3", "train.recompute=full",
                                            "a smaller micro_batch or seq_len"};
    for (const auto& part : parts) {
      EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
    }
  }
  const AllocatorStats s = alloc->stats();
  EXPECT_EQ(s.reserved_bytes, s.current_bytes);  // the retry freed every cached block
  EXPECT_EQ(s.current_bytes, s0.current_bytes);
  EXPECT_EQ(s.num_allocs, s0.num_allocs);  // failed attempts are not allocations
  // The failed cudaMalloc left no error behind for the next kernel launch to report.
  const Vec x = random_vec(64, 3);
  Tensor tx = on(*be, {64}, x), y = be->empty({64}, act_dtype(*be));
  EXPECT_NO_THROW(be->gelu(tx, y));
  EXPECT_NO_THROW(be->synchronize());
}

std::vector<std::string> caching_backends() {
  std::vector<std::string> r;
  for (const auto& name : backends()) {
    if (name != "cpu") r.push_back(name);
  }
  return r;
}
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(CachingAllocatorTest);
INSTANTIATE_TEST_SUITE_P(Ops, CachingAllocatorTest, ::testing::ValuesIn(caching_backends()),
                         [](const auto& info) { return sanitize_name(info.param); });

}  // namespace
}  // namespace nuri::test
