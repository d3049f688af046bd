// A memory limit, and a model that does not fit under it trained under ZeRO 3 (issue #21). Run as
// one job of 4 ranks: on the CPU backend under mpirun (label mpi) and torchrun-style (label tcp);
// on cuda-emu over the emulated NCCL (label emu, build-emu-fast). Each rank computes one
// unlimited process's run itself, measures its peak bytes, and sets every backend's limit to half
// of that peak (Allocator::set_limit, as NURI_MAX_DEVICE_BYTES does):
//   - one process under the limit stops at an allocation with a nuri::Error that says what was
//     asked, what is in use by category, and what to change;
//   - 4 ranks under ZeRO 3 train under the same limit and end at the unlimited process's losses
//     (the data-parallel bound: 1e-5 of the loss on f32 CPU ranks, 1e-4 on bf16 device ranks).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "nuri/dist/communicator.h"
#include "nuri/dist/launch.h"
#include "nuri/train/trainer.h"

#ifndef NURI_TEST_BACKEND
#error "NURI_TEST_BACKEND names the backend under test"
#endif

namespace nuri {
namespace {

// Few steps on the emulated GPU: 4 ranks of emulated kernels share 2 cores.
constexpr int kSteps = std::string_view(NURI_TEST_BACKEND) == "cpu" ? 6 : 3;

ModelConfig model() {  // weights and optimizer state large next to its activations
  ModelConfig c;
  c.vocab_size = 64;
  c.d_model = 128;
  c.n_layer = std::string_view(NURI_TEST_BACKEND) == "cpu" ? 8 : 4;  // the device's are bf16
  c.n_head = 2;
  c.n_kv_head = 2;
  c.d_ff = 512;
  c.max_seq_len = 16;
  return c;
}

std::shared_ptr<TokenFile> data() {
  std::vector<uint32_t> t(8192);
  for (size_t i = 0; i < t.size(); ++i) t[i] = uint32_t((i * 11 + i / 7) % 64);
  return TokenFile::from_tokens(t, "pattern", 64);
}

TrainConfig config(int64_t accum) {
  TrainConfig c;
  c.steps = kSteps;
  c.micro_batch = 1;
  c.seq_len = 16;
  c.grad_accum = accum;
  c.warmup_steps = 1;
  c.grad_clip = 0;  // as test_dp_device.cpp: sharded norms would move clipping by a rounding
  return c;
}

TEST(MemoryLimit, AModelThatDoesNotFitTrainsUnderZeroThreeOnFourRanks) {
  CommOptions opt;
  opt.timeout_s = 300;
  std::shared_ptr<Communicator> comm = make_communicator(detect_launch(), opt);
  ASSERT_EQ(comm->size(), 4) << "run this test as a job of 4 ranks";
  // One process, unlimited: the reference losses and its peak bytes.
  std::vector<float> want;
  int64_t peak = 0;
  {
    Transformer m(model(), make_backend(NURI_TEST_BACKEND), 5);
    Trainer t(m, config(4), data(), nullptr);
    for (int i = 0; i < kSteps; ++i) want.push_back(t.step().loss);
    peak = m.memory().peak_bytes;
  }
  const int64_t limit = peak / 2;
  // One process under the limit: refused at an allocation, with the report.
  {
    std::string message;
    try {
      auto be = make_backend(NURI_TEST_BACKEND);
      be->allocator()->set_limit(limit);
      Transformer m(model(), std::move(be), 5);
      Trainer t(m, config(4), data(), nullptr);
      for (int i = 0; i < kSteps; ++i) t.step();
    } catch (const Error& e) {
      message = e.what();
    }
    for (const char* part : {"would pass the memory limit of", "NURI_MAX_DEVICE_BYTES",
                             "in use: parameters", "gradients", "optimizer", "activations",
                             "parallel.zero_stage=3", "train.recompute=full",
                             "train.micro_batch"}) {
      EXPECT_NE(message.find(part), std::string::npos) << "missing '" << part << "' in: "
                                                       << message;
    }
  }
  // 4 ranks under ZeRO 3, each rank's backend under the same limit, each making its shard of the
  // model alone (the whole model would not fit).
  auto be = make_backend(NURI_TEST_BACKEND);
  be->allocator()->set_limit(limit);
  const int64_t total = int64_t(param_layout(model()).back().offset +
                                param_layout(model()).back().numel());
  const auto [lo, hi] = DataParallel::shard_of(total, comm->size(), comm->rank());
  Transformer m(model(), std::move(be), 5, WeightShard{lo, hi});
  ParallelConfig par;
  par.zero_stage = 3;
  par.bucket_bytes = 64 << 10;
  Trainer t(m, config(1), data(), nullptr, comm, par);
  const bool f32 = m.compute_dtype() == DType::f32;
  double worst = 0;
  for (int i = 0; i < kSteps; ++i) {
    const float loss = t.step().loss;
    const double rel = std::abs(double(loss) - want[size_t(i)]) / want[size_t(i)];
    worst = std::max(worst, rel);
    EXPECT_LE(rel, f32 ? 1e-5 : 1e-4) << "step " << i + 1 << ": " << loss << " vs "
                                      << want[size_t(i)];
  }
  EXPECT_LE(m.memory().peak_bytes, limit);
  if (comm->rank() == 0) {
    std::printf("[ limit ] %s: one process peaks at %lld bytes; under a limit of %lld it stops, "
                "4 ranks of ZeRO 3 train with a peak of %lld (worst |dloss|/loss %.3g)\n",
                NURI_TEST_BACKEND, (long long)peak, (long long)limit,
                (long long)m.memory().peak_bytes, worst);
  }
}

}  // namespace
}  // namespace nuri
