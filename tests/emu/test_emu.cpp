// The emulator's execution model: thread/block indices, barriers with static and dynamic shared
// memory, every shuffle mode and width on every lane (against the PTX ISA's definition), votes,
// atomics, poisoned memory, and the seeded random block order.
#include <algorithm>
#include <numeric>

#include "emu/emu_util.h"

namespace nuri::test {
namespace {

struct IndexParams {
  int* out;  // [grid blocks * block threads, 6]
};
__global__ void record_indices(IndexParams p) {
  const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int nthreads = blockDim.x * blockDim.y * blockDim.z;
  int* o = p.out + 6 * (block * nthreads + thread);
  o[0] = threadIdx.x, o[1] = threadIdx.y, o[2] = threadIdx.z;
  o[3] = blockIdx.x, o[4] = blockIdx.y, o[5] = blockIdx.z;
}

TEST(Emulator, EveryThreadSeesItsOwnIndices) {
  const dim3 grid(3, 2, 2), block(5, 4, 3);
  const int blocks = 12, threads = 60;
  DeviceBuffer<int> out(size_t(blocks * threads * 6));
  NURI_LAUNCH(record_indices, grid, block, 0, nullptr, IndexParams{out.get()});
  const auto v = out.download();
  for (int b = 0; b < blocks; ++b) {
    for (int t = 0; t < threads; ++t) {
      const int* o = &v[size_t(6 * (b * threads + t))];
      ASSERT_EQ(o[0], t % 5);
      ASSERT_EQ(o[1], (t / 5) % 4);
      ASSERT_EQ(o[2], t / 20);
      ASSERT_EQ(o[3], b % 3);
      ASSERT_EQ(o[4], (b / 3) % 2);
      ASSERT_EQ(o[5], b / 6);
    }
  }
}

// A block-wide tree reduction through shared memory: wrong without each barrier.
struct ReduceParams {
  const float* in;  // [blocks, 256]
  float* out;       // [blocks, 2]: dynamic-smem result, static-smem result
};
__global__ void reduce_both(ReduceParams p) {
  float* dyn = nuri::kernels::dynamic_smem<float>();
  __shared__ float stat[256];
  const int t = threadIdx.x;
  const float v = p.in[blockIdx.x * 256 + t];
  dyn[t] = v;
  stat[t] = 2 * v;
  __syncthreads();
  for (int s = 128; s > 0; s >>= 1) {
    if (t < s) {
      dyn[t] += dyn[t + s];
      stat[t] += stat[t + s];
    }
    __syncthreads();
  }
  if (t == 0) {
    p.out[2 * blockIdx.x] = dyn[0];
    p.out[2 * blockIdx.x + 1] = stat[0];
  }
}

TEST(Emulator, BarriersOrderSharedMemoryStaticAndDynamic) {
  // Several blocks without TSan; one under it, where a static __shared__ array reused by the
  // next block on the same OS thread would be reported (see kernels/README.md: nuri's kernels
  // take their shared memory dynamically).
  const int blocks = kRaceDetection ? 1 : 5;
  std::vector<float> in(size_t(blocks * 256));
  for (size_t i = 0; i < in.size(); ++i) in[i] = float(int(i * 7 % 13) - 6);
  DeviceBuffer<float> din(in), dout(size_t(2 * blocks));
  NURI_LAUNCH(reduce_both, dim3(blocks), dim3(256), 256 * sizeof(float), nullptr,
              ReduceParams{din.get(), dout.get()});
  const auto out = dout.download();
  for (int b = 0; b < blocks; ++b) {
    float sum = 0;
    for (int i = 0; i < 256; ++i) sum += in[size_t(b * 256 + i)];
    EXPECT_EQ(out[size_t(2 * b)], sum) << "block " << b;
    EXPECT_EQ(out[size_t(2 * b + 1)], 2 * sum) << "block " << b;
  }
}

// ---- shuffles: every mode, width and argument, every lane ------------------------------------

enum Mode { kIdx, kUp, kDown, kXor };
struct ShflParams {
  int mode, width, arg;
  int* out;  // [32]
};
__global__ void shuffle(ShflParams p) {
  const int lane = threadIdx.x;
  const int v = 1000 + lane;
  int r = 0;
  switch (p.mode) {
    case kIdx: r = __shfl_sync(0xffffffffu, v, p.arg, p.width); break;
    case kUp: r = __shfl_up_sync(0xffffffffu, v, unsigned(p.arg), p.width); break;
    case kDown: r = __shfl_down_sync(0xffffffffu, v, unsigned(p.arg), p.width); break;
    case kXor: r = __shfl_xor_sync(0xffffffffu, v, p.arg, p.width); break;
  }
  p.out[lane] = r;
}

// The source lane, written from the CUDA programming guide's description of each intrinsic
// (segments of `width` lanes; out-of-segment sources keep the caller's own value).
int expected_source(Mode mode, int lane, int arg, int width) {
  const int seg = lane & ~(width - 1);
  switch (mode) {
    case kIdx: return seg + (arg % width + width) % width;
    case kUp: return (lane - seg) >= arg ? lane - arg : lane;
    case kDown: return (lane - seg) + arg < width ? lane + arg : lane;
    case kXor: {
      const int j = lane ^ arg;
      return j < seg + width ? j : lane;  // "does not pass the end of the segment"
    }
  }
  return -1;
}

TEST(Emulator, ShufflesFollowThePtxDefinitionOnEveryLane) {
  DeviceBuffer<int> out(32);
  int checked = 0;
  for (int mode = kIdx; mode <= kXor; ++mode) {
    for (int width = 1; width <= 32; width *= 2) {
      for (int arg = 0; arg < 32; ++arg) {
        NURI_LAUNCH(shuffle, dim3(1), dim3(32), 0, nullptr,
                    ShflParams{mode, width, arg, out.get()});
        const auto v = out.download();
        for (int lane = 0; lane < 32; ++lane) {
          ASSERT_EQ(v[size_t(lane)], 1000 + expected_source(Mode(mode), lane, arg, width))
              << "mode " << mode << " width " << width << " arg " << arg << " lane " << lane;
          ++checked;
        }
      }
    }
  }
  EXPECT_EQ(checked, 4 * 6 * 32 * 32);
}

TEST(Emulator, XorPastTheSegmentEndKeepsOwnValueButLowerSegmentsAreRead) {
  // PTX bfly: lane ^ k is used when it does not exceed the segment's last lane, so with width
  // 16 lane 20 ^ 16 = 4 reads lane 4, while lane 4 ^ 16 = 20 > 15 keeps its own value.
  DeviceBuffer<int> out(32);
  NURI_LAUNCH(shuffle, dim3(1), dim3(32), 0, nullptr, ShflParams{kXor, 16, 16, out.get()});
  const auto v = out.download();
  EXPECT_EQ(v[20], 1004);
  EXPECT_EQ(v[4], 1004);
}

struct Shfl64Params {
  double* out;  // [32]
};
__global__ void shuffle_double(Shfl64Params p) {
  const double v = 0.5 + double(threadIdx.x) * 1e10;  // needs both 32-bit halves
  p.out[threadIdx.x] = __shfl_down_sync(0xffffffffu, v, 3u);
}

TEST(Emulator, SixtyFourBitShufflesMoveBothHalves) {
  DeviceBuffer<double> out(32);
  NURI_LAUNCH(shuffle_double, dim3(1), dim3(32), 0, nullptr, Shfl64Params{out.get()});
  const auto v = out.download();
  for (int lane = 0; lane < 32; ++lane) {
    const int src = lane + 3 < 32 ? lane + 3 : lane;
    EXPECT_EQ(v[size_t(lane)], 0.5 + double(src) * 1e10) << "lane " << lane;
  }
}

struct VoteParams {
  unsigned* out;  // [64, 3]: ballot, any, all
};
__global__ void votes(VoteParams p) {
  const int lane = threadIdx.x % 32;
  // Two warps; in each, the lower half votes with mask 0x0000ffff and the upper half with
  // 0xffff0000, on different predicates.
  const unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  const int pred = threadIdx.x < 32 ? (lane % 3 == 0) : (lane >= 16 || lane < 16);
  unsigned* o = p.out + 3 * threadIdx.x;
  o[0] = __ballot_sync(mask, pred);
  o[1] = unsigned(__any_sync(mask, pred));
  o[2] = unsigned(__all_sync(mask, pred));
}

TEST(Emulator, VotesCountOnlyTheLanesOfTheirMask) {
  DeviceBuffer<unsigned> out(64 * 3);
  NURI_LAUNCH(votes, dim3(1), dim3(64), 0, nullptr, VoteParams{out.get()});
  const auto v = out.download();
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32;
    const unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    unsigned ballot = 0;
    for (int l = 0; l < 32; ++l) {
      const bool pred = t < 32 ? (l % 3 == 0) : true;
      if ((mask >> l & 1u) && pred) ballot |= 1u << l;
    }
    EXPECT_EQ(v[size_t(3 * t)], ballot) << "thread " << t;
    EXPECT_EQ(v[size_t(3 * t + 1)], ballot != 0 ? 1u : 0u) << "thread " << t;
    EXPECT_EQ(v[size_t(3 * t + 2)], ballot == mask ? 1u : 0u) << "thread " << t;
  }
}

struct AtomicParams {
  float* fsum;
  int* counter;
  int* order;  // [blocks]: the value the counter had when each block arrived
};
__global__ void atomics(AtomicParams p) {
  atomicAdd(p.fsum, 0.5f);
  if (threadIdx.x == 0) p.order[blockIdx.x] = atomicAdd(p.counter, 1);
}

TEST(Emulator, AtomicsAreAtomicAndBlockOrderIsSeededRandom) {
  const int blocks = 40;
  auto run = [&](uint64_t seed) {
    emu::set_base_seed(seed);
    DeviceBuffer<float> fsum(std::vector<float>{0.f});
    DeviceBuffer<int> counter(std::vector<int>{0});
    DeviceBuffer<int> order(static_cast<size_t>(blocks));
    NURI_LAUNCH(atomics, dim3(blocks), dim3(64), 0, nullptr,
                AtomicParams{fsum.get(), counter.get(), order.get()});
    EXPECT_EQ(fsum.download()[0], 0.5f * 64 * blocks);
    EXPECT_EQ(counter.download()[0], blocks);
    return order.download();
  };
  const uint64_t saved = emu::base_seed();
  const auto a = run(1), a2 = run(1), b = run(2);
  emu::set_base_seed(saved);
  std::vector<int> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int> iota(static_cast<size_t>(blocks));
  std::iota(iota.begin(), iota.end(), 0);
  EXPECT_EQ(sorted, iota);      // every block ran once
  EXPECT_EQ(a, a2);             // the same seed replays the same order
  EXPECT_NE(a, b);              // another seed gives another order
  EXPECT_NE(a, iota);           // and it is not simply 0, 1, 2, ...
}

struct PoisonParams {
  const float* unwritten;  // [32]: cudaMalloc'ed, never written
  float* out;              // [32, 2]
};
__global__ void read_unwritten(PoisonParams p) {
  float* s = nuri::kernels::dynamic_smem<float>();
  p.out[2 * threadIdx.x] = s[threadIdx.x];  // shared memory nobody wrote
  p.out[2 * threadIdx.x + 1] = p.unwritten[threadIdx.x];
}

TEST(Emulator, UnwrittenSharedAndDeviceMemoryReadsAsNaN) {
  DeviceBuffer<float> unwritten(32), out(64);
  NURI_LAUNCH(read_unwritten, dim3(1), dim3(32), 32 * sizeof(float), nullptr,
              PoisonParams{unwritten.get(), out.get()});
  for (float v : out.download()) EXPECT_TRUE(std::isnan(v));
}

}  // namespace
}  // namespace nuri::test
