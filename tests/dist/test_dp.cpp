// Data parallelism (ZeRO stage 0) under mpirun with 1, 2 and 4 ranks: 20 training steps of a tiny
// GPT-2 on the CPU backend against one process that sees the same global batches (grad_accum ·
// world micro-batches). Each rank computes that reference itself.
//
// One rank is the one process, bit for bit. With more, the sums are associated differently: one
// process accumulates each micro-batch's products onto the previous ones inside the GEMMs
// (beta = 1), while the ranks sum finished per-rank gradients in MPI's order, so gradient
// elements differ by a few f32 roundings of their terms, and AdamW carries that into the
// weights. The bound, |Δloss| ≤ 1e-5 · loss at every step, is ~170 f32 roundings (2^-24 ≈
// 6e-8) of the loss: room for 20 steps of growth (measured worst: 1.0e-7, with 2 ranks), far
// below a real mismatch (a missing or doubled micro-batch moves the loss by 1e-2 or more; the
// run's loss falls by more than 0.5).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "nuri/data/token_file.h"
#include "nuri/dist/communicator.h"
#include "nuri/dist/launch.h"
#include "nuri/train/trainer.h"

namespace nuri {
namespace {

std::shared_ptr<Communicator> world() {
  static std::shared_ptr<Communicator> comm = [] {
    CommOptions opt;
    opt.timeout_s = 120;
    return std::shared_ptr<Communicator>(make_communicator(detect_launch(), opt));
  }();
  return comm;
}

std::shared_ptr<TokenFile> text_data() {
  std::string text;
  for (int i = 0; i < 400; ++i) {
    text += "to be or not to be, that is the question; whether 'tis nobler in the mind ";
    text += std::to_string(i % 17);
  }
  return TokenFile::from_tokens(ByteTokenizer().encode(text), "hamlet", 257);
}

TrainConfig config(int64_t grad_accum) {
  TrainConfig c;
  c.steps = 20;
  c.micro_batch = 2;
  c.seq_len = 32;
  c.grad_accum = grad_accum;
  c.lr = 3e-3f;
  c.warmup_steps = 2;
  c.eval_every = 0;
  return c;
}

struct Result {
  std::vector<float> losses;
  std::vector<float> params;
};

Result train(int64_t grad_accum, std::shared_ptr<Communicator> comm, int zero_stage = 0) {
  Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 7);
  ParallelConfig par;
  par.zero_stage = zero_stage;
  Trainer t(m, config(grad_accum), text_data(), nullptr, std::move(comm), par);
  Result r;
  for (int i = 0; i < 20; ++i) r.losses.push_back(t.step().loss);
  const Tensor& p = m.param_buffer();
  r.params.assign(p.data<float>(), p.data<float>() + p.numel());
  return r;
}

class DataParallelTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(DataParallelTest, LossesFollowOneProcessWithTheSameGlobalBatch) {
  const int64_t accum = GetParam();
  std::shared_ptr<Communicator> comm = world();
  const int p = comm->size();
  const Result ref = train(accum * p, nullptr);
  const Result dp = train(accum, comm);
  const bool bitwise = p == 1;
  double worst = 0;
  for (size_t i = 0; i < ref.losses.size(); ++i) {
    const double rel = std::abs(double(dp.losses[i]) - ref.losses[i]) / ref.losses[i];
    worst = std::max(worst, rel);
    if (bitwise) {
      ASSERT_EQ(dp.losses[i], ref.losses[i]) << "step " << i + 1 << ", " << p << " ranks";
    } else {
      ASSERT_LE(rel, 1e-5) << "step " << i + 1 << ": " << dp.losses[i] << " vs one process's "
                           << ref.losses[i];
    }
  }
  EXPECT_LT(ref.losses.back(), ref.losses.front() - 0.5f) << "the run should learn";
  if (comm->rank() == 0) {
    std::printf("[ dp ] %d ranks, grad_accum %lld: worst |dloss|/loss %.3g over 20 steps (%s)\n",
                p, (long long)accum, worst, bitwise ? "bitwise required" : "bound 1e-5");
  }
  // Every rank ends with the same weights, bit for bit.
  const int64_t n = int64_t(dp.params.size());
  Tensor mine = Tensor::empty({n}, DType::f32), all = Tensor::empty({n * p}, DType::f32);
  std::memcpy(mine.raw(), dp.params.data(), mine.nbytes());
  comm->all_gather(mine, all);
  for (int q = 0; q < p; ++q) {
    EXPECT_EQ(std::memcmp(all.data<float>() + q * n, dp.params.data(), mine.nbytes()), 0)
        << "rank " << q << "'s weights differ from rank " << comm->rank() << "'s";
  }
}

// ZeRO 1 changes where the update is computed, not what it computes (AdamW is elementwise on the
// same all-reduced gradients): the same losses and weights as stage 0, bit for bit.
TEST_P(DataParallelTest, ZeroStageOneComputesTheSameBitsAsStageZero) {
  std::shared_ptr<Communicator> comm = world();
  const Result z0 = train(GetParam(), comm, 0);
  const Result z1 = train(GetParam(), comm, 1);
  for (size_t i = 0; i < z0.losses.size(); ++i) ASSERT_EQ(z1.losses[i], z0.losses[i]) << i;
  ASSERT_EQ(z1.params.size(), z0.params.size());
  EXPECT_EQ(std::memcmp(z1.params.data(), z0.params.data(), z0.params.size() * sizeof(float)), 0);
}

INSTANTIATE_TEST_SUITE_P(Accum, DataParallelTest, ::testing::Values(1, 2),
                         [](const auto& info) { return "accum" + std::to_string(info.param); });

}  // namespace
}  // namespace nuri

namespace nuri {
namespace {

// Per-rank bytes of gradients plus optimizer state, from the allocator, against the ZeRO formula
// for nuri's dtypes on the CPU backend (f32 compute, so the f32 parameters are also the masters):
//   stage 0: 4Ψ (f32 gradients) + 8Ψ (f32 AdamW m and v)
//   stage 1: 4Ψ + 8Ψ/N
// (On a GPU the f32 masters and the bf16 compute copy add 4Ψ + 2Ψ, not sharded by stage 1 yet.)
TEST(Zero, GradientAndOptimizerBytesFollowTheFormula) {
  std::shared_ptr<Communicator> comm = world();
  const int n = comm->size();
  Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 7);
  const double psi = double(m.param_buffer().numel());
  const double grad_bytes = double(m.grad_buffer().nbytes());
  EXPECT_EQ(grad_bytes, 4 * psi);
  const std::shared_ptr<Allocator> alloc = m.backend().allocator();
  for (int stage : {0, 1}) {
    DataParallel dp(comm, ParallelConfig{stage});
    const auto [lo, hi] = stage == 1 ? dp.shard(int64_t(psi)) : std::pair<int64_t, int64_t>{0, 0};
    const int64_t before = alloc->stats().current_bytes;
    std::unique_ptr<AdamW> opt = stage == 1 ? std::make_unique<AdamW>(m, AdamWParams{}, lo, hi)
                                            : std::make_unique<AdamW>(m, AdamWParams{});
    const double opt_bytes = double(alloc->stats().current_bytes - before);
    const double formula = stage == 0 ? 12 * psi : 4 * psi + 8 * psi / n;
    const double measured = grad_bytes + opt_bytes;
    if (comm->rank() == 0) {
      std::printf("[ zero ] stage %d, %d ranks: gradients + optimizer %.0f bytes, formula %.0f "
                  "(psi = %.0f)\n", stage, n, measured, formula, psi);
    }
    EXPECT_NEAR(measured, formula, 0.05 * formula) << "stage " << stage;
  }
}

}  // namespace
}  // namespace nuri
