// Data parallelism on the CPU backend, under mpirun with 1, 2 and 4 ranks (label mpi) and started
// torchrun-style with 2 and 4 (label tcp): 20 training steps of a tiny GPT-2 against one process
// that sees the same global batches (grad_accum · world micro-batches), for ZeRO 0, 1 and 2, with
// the gradient buckets reduced while the backward runs and after it. Each rank computes the
// one-process reference itself.
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

#include <unistd.h>

#include "dist_util.h"
#include "test_util.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <tuple>
#include <vector>

#include "nuri/ckpt/checkpoint.h"
#include "nuri/data/token_file.h"
#include "nuri/dist/communicator.h"
#include "nuri/dist/launch.h"
#include "nuri/train/trainer.h"

namespace nuri {
namespace {

using test::world;

std::shared_ptr<TokenFile> text_data() { return test::hamlet(); }

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

// Small buckets (a few units each) so that a step reduces many of them while the backward runs.
constexpr int64_t kBucketBytes = 64 << 10;

Result train(int64_t grad_accum, std::shared_ptr<Communicator> comm, int zero_stage = 0,
             bool overlap = true, bool keep_gathered = false) {
  Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 7);
  ParallelConfig par;
  par.zero_stage = zero_stage;
  par.bucket_bytes = kBucketBytes;
  par.overlap = overlap;
  par.keep_gathered = keep_gathered;
  Trainer t(m, config(grad_accum), text_data(), nullptr, std::move(comm), par);
  Result r;
  for (int i = 0; i < 20; ++i) r.losses.push_back(t.step().loss);
  const Tensor p = t.master_weights();  // ZeRO 3: every rank's shard, gathered
  r.params.assign(p.data<float>(), p.data<float>() + p.numel());
  return r;
}

/// train() with a communicator, each configuration once per process (several tests compare
/// against the same stage-0 run).
const Result& train_dp(int64_t grad_accum, int zero_stage, bool overlap = true,
                       bool keep_gathered = false) {
  static std::map<std::tuple<int64_t, int, bool, bool>, Result> cache;
  const auto key = std::make_tuple(grad_accum, zero_stage, overlap, keep_gathered);
  auto it = cache.find(key);
  if (it == cache.end()) {
    it = cache.emplace(key, train(grad_accum, world(), zero_stage, overlap, keep_gathered)).first;
  }
  return it->second;
}

class DataParallelTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(DataParallelTest, LossesFollowOneProcessWithTheSameGlobalBatch) {
  const int64_t accum = GetParam();
  std::shared_ptr<Communicator> comm = world();
  const int p = comm->size();
  const Result ref = train(accum * p, nullptr);
  const Result& dp = train_dp(accum, 0);
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
// same all-reduced gradients): the same losses and weights as stage 0, bit for bit. So does
// reducing the buckets after the backward instead of overlapped with it (the same collectives
// on the same buffers, only started later).
TEST_P(DataParallelTest, ZeroStageOneAndNoOverlapComputeTheSameBitsAsStageZero) {
  std::shared_ptr<Communicator> comm = world();
  const Result& z0 = train_dp(GetParam(), 0);
  for (const auto& [stage, overlap] : {std::pair{1, true}, std::pair{0, false}}) {
    const Result& other = train_dp(GetParam(), stage, overlap);
    for (size_t i = 0; i < z0.losses.size(); ++i) {
      ASSERT_EQ(other.losses[i], z0.losses[i]) << "stage " << stage << " overlap " << overlap
                                               << ", step " << i + 1;
    }
    ASSERT_EQ(other.params.size(), z0.params.size());
    EXPECT_EQ(std::memcmp(other.params.data(), z0.params.data(), z0.params.size() * 4), 0)
        << "stage " << stage << " overlap " << overlap;
  }
}

// ZeRO 2 reduce-scatters each bucket (every micro-batch) instead of all-reducing it once: MPI's
// reduce-scatter may add the ranks in another order than its all-reduce, with accumulation the
// micro-batches are summed after the ranks instead of before, and the gradient norm (for
// clipping) is summed from the shards' norms. So: the bound of the
// one-process comparison above against stage 0, and bitwise with one rank and one micro-batch.
TEST_P(DataParallelTest, ZeroStageTwoFollowsStageZero) {
  std::shared_ptr<Communicator> comm = world();
  const Result& z0 = train_dp(GetParam(), 0);
  for (bool overlap : {true, false}) {
    const Result& z2 = train_dp(GetParam(), 2, overlap);
    double worst = 0;
    for (size_t i = 0; i < z0.losses.size(); ++i) {
      const double rel = std::abs(double(z2.losses[i]) - z0.losses[i]) / z0.losses[i];
      worst = std::max(worst, rel);
      if (comm->size() == 1 && GetParam() == 1) {
        ASSERT_EQ(z2.losses[i], z0.losses[i]) << "step " << i + 1;
      } else {
        ASSERT_LE(rel, 1e-5) << "step " << i + 1 << ": " << z2.losses[i] << " vs stage 0's "
                             << z0.losses[i];
      }
    }
    if (comm->rank() == 0) {
      std::printf("[ zero2 ] %d ranks, grad_accum %lld, overlap %d: worst |dloss|/loss against "
                  "stage 0 %.3g\n", comm->size(), (long long)GetParam(), int(overlap), worst);
    }
    // Every rank ends with the same weights (the all-gather after the sharded update).
    const int64_t n = int64_t(z2.params.size());
    const int p = comm->size();
    Tensor mine = Tensor::empty({n}, DType::f32), all = Tensor::empty({n * p}, DType::f32);
    std::memcpy(mine.raw(), z2.params.data(), mine.nbytes());
    comm->all_gather(mine, all);
    for (int q = 0; q < p; ++q) {
      EXPECT_EQ(std::memcmp(all.data<float>() + q * n, z2.params.data(), mine.nbytes()), 0)
          << "rank " << q << "'s weights differ from rank " << comm->rank() << "'s";
    }
  }
}

// ZeRO 3 takes the weights from gathered shards instead of a whole copy: the same bits as the
// copy stage 2 all-gathers, so stage 2's run bit for bit (overlapped, after the backward, and
// keeping the gathered weights from the forward to the backward).
TEST_P(DataParallelTest, ZeroStageThreeComputesStageTwosBits) {
  std::shared_ptr<Communicator> comm = world();
  const Result& z2 = train_dp(GetParam(), 2);
  for (const auto& [overlap, keep] : {std::pair{true, false}, std::pair{false, false},
                                      std::pair{true, true}}) {
    const Result& z3 = train_dp(GetParam(), 3, overlap, keep);
    for (size_t i = 0; i < z2.losses.size(); ++i) {
      ASSERT_EQ(z3.losses[i], z2.losses[i]) << "overlap " << overlap << " keep_gathered "
                                            << keep << ", step " << i + 1;
    }
    EXPECT_EQ(std::memcmp(z3.params.data(), z2.params.data(), z2.params.size() * 4), 0)
        << "overlap " << overlap << " keep_gathered " << keep;
  }
}

// What the step communicated: stages 0 and 1 all-reduce every gradient once per step (only the
// last micro-batch communicates), stage 2 reduce-scatters them every micro-batch; stages 1 and 2
// all-gather the parameters. Bus bytes follow nccl-tests' factors.
// A trainer built again on the same model (a Python user rebinding `trainer`): the old one,
// destroyed after the new one attached, takes none of the new one's hooks with it, so the
// new one reduces the gradients (stage 0) and gathers the weights (stage 3) as a trainer
// built once does, bit for bit; and the model keeps no pointer to a destroyed trainer.
TEST(DataParallelRebuilt, ATrainerBuiltAgainOnTheModelStepsAsOneBuiltOnce) {
  for (const int stage : {0, 3}) {
    Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 7);
    ParallelConfig par;
    par.zero_stage = stage;
    par.bucket_bytes = kBucketBytes;
    auto old = std::make_unique<Trainer>(m, config(1), text_data(), nullptr, world(), par);
    Trainer t(m, config(1), text_data(), nullptr, world(), par);
    old.reset();
    Result r;
    for (int i = 0; i < 20; ++i) r.losses.push_back(t.step().loss);
    const Tensor p = t.master_weights();
    r.params.assign(p.data<float>(), p.data<float>() + p.numel());
    const Result& once = train_dp(1, stage);
    EXPECT_EQ(r.losses, once.losses) << "stage " << stage;
    EXPECT_EQ(r.params, once.params) << "stage " << stage;
  }
  Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 7);
  ParallelConfig par;
  par.zero_stage = 3;
  {
    Trainer t(m, config(1), text_data(), nullptr, world(), par);
    EXPECT_NE(m.grad_hooks(), nullptr);
  }
  EXPECT_EQ(m.grad_hooks(), nullptr);
  EXPECT_EQ(m.param_hooks(), nullptr);
  if (world()->size() > 1) {  // a shard without its trainer: the forward says what it needs
    EXPECT_NE(test::error_of([&] { m.logits(Tensor::zeros({1, 8}, DType::i32)); })
                  .find("ParamHooks that gather them"),
              std::string::npos);
  }
}

TEST_P(DataParallelTest, CommunicationPerStepIsWhatTheStageImplies) {
  std::shared_ptr<Communicator> comm = world();
  const int64_t accum = GetParam();
  const double n = comm->size();
  for (int stage : {0, 1, 2}) {
    Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 7);
    const int64_t grad_bytes = m.param_buffer().nbytes();
    ParallelConfig par;
    par.zero_stage = stage;
    par.bucket_bytes = kBucketBytes;
    Trainer t(m, config(accum), text_data(), nullptr, comm, par);
    t.step();
    const CommStats& s = t.data_parallel()->stats();
    const int64_t buckets = int64_t(t.data_parallel()->buckets().size());
    EXPECT_GE(buckets, 3) << "small buckets split the model";
    if (comm->size() == 1) {
      EXPECT_EQ(s.collectives, stage == 2 ? buckets * accum : 0) << "stage " << stage;
      continue;
    }
    const int64_t grads = stage == 2 ? grad_bytes * accum : grad_bytes;
    const int64_t params = stage == 0 ? 0 : grad_bytes;
    EXPECT_EQ(s.payload_bytes, grads + params) << "stage " << stage;
    EXPECT_EQ(s.collectives, (stage == 2 ? buckets * accum : buckets) + (stage == 0 ? 0 : 1));
    const double bus = (stage == 2 ? (n - 1) / n : 2 * (n - 1) / n) * double(grads) +
                       (n - 1) / n * double(params);
    EXPECT_NEAR(double(s.bus_bytes), bus, double(s.collectives)) << "stage " << stage;
    EXPECT_GT(s.reduce_seconds, 0);
    EXPECT_GE(s.exposed_seconds, 0);
  }
  // Stage 3: stage 2's reduce-scatters, and every micro-batch two gathers of the weights: each
  // unit before its forward and before its backward (gpt2-tiny ties its head to the embedding,
  // which the head gathers once more in the forward); with keep_gathered one.
  for (bool keep : {false, true}) {
    Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 7);
    const int64_t psi = m.parameter_count();
    const auto units = m.unit_ranges();
    const int64_t embed = units.front().second - units.front().first;
    ParallelConfig par;
    par.zero_stage = 3;
    par.bucket_bytes = kBucketBytes;
    par.keep_gathered = keep;
    Trainer t(m, config(accum), text_data(), nullptr, comm, par);
    t.step();
    const CommStats& s = t.data_parallel()->stats();
    const int64_t buckets = int64_t(t.data_parallel()->buckets().size());
    const int64_t gathered = keep ? psi : 2 * psi + embed;  // elements per micro-batch
    const int64_t gathers = keep ? int64_t(units.size()) : 2 * int64_t(units.size()) + 1;
    EXPECT_EQ(s.unit_gathers, gathers * accum) << "keep " << keep;
    EXPECT_EQ(s.collectives, (buckets + gathers) * accum) << "keep " << keep;
    EXPECT_EQ(s.payload_bytes, 4 * (psi + gathered) * accum) << "keep " << keep;
    const double bus = (n - 1) / n * double(4 * (psi + gathered) * accum);
    EXPECT_NEAR(double(s.bus_bytes), bus, double(s.collectives)) << "keep " << keep;
    EXPECT_GT(s.gather_seconds, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Accum, DataParallelTest, ::testing::Values(1, 2),
                         [](const auto& info) { return "accum" + std::to_string(info.param); });

}  // namespace
}  // namespace nuri

namespace nuri {
namespace {

// Per-rank bytes of gradients plus optimizer state, from the allocators, against the ZeRO
// formulas for nuri's dtypes on the CPU backend (f32 compute, so the f32 parameters are also the
// masters; the 4Ψ of parameters are on every rank and not counted here):
//   stage 0: 4Ψ (f32 gradients) + 8Ψ (f32 AdamW m and v)
//   stage 1: 4Ψ + 8Ψ/N
//   stage 2: 4Ψ/N (the gradient shard) + 8Ψ/N + S, where S is the bucket staging: at most two
//            buckets (the one the backward fills and the one being reduced; DataParallel holds
//            the backward back when a third would be needed) plus, for tied embeddings, the
//            embedding's bucket, which the LM head writes at the start of the backward and the
//            embedding at its end. S is "up to 2B + E"; for stage 2 the test takes a deep, narrow
//            model whose buckets are small next to Ψ/N.
// (GPU ranks, where the masters are optimizer state and sharded with it: test_dp_device.cpp.)
// ZeRO 3 keeping its units gathered: weights loaded from a checkpoint or a model file replace
// the units an evaluation left gathered, so the next evaluation and step compute with the loaded
// weights (they went on with the old ones, silently, before).
TEST(Zero, LoadedWeightsReplaceTheUnitsKeptGathered) {
  std::shared_ptr<Communicator> comm = world();
  const std::string root = std::filesystem::temp_directory_path().string() + "/nuri_dp_keep_" +
                           std::to_string(::getppid());
  const std::string file = root + "/model.safetensors";
  if (comm->rank() == 0) std::filesystem::remove_all(root);
  comm->barrier();
  ParallelConfig par;
  par.zero_stage = 3;
  par.keep_gathered = true;
  Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 7);
  Trainer t(m, config(1), text_data(), text_data(), comm, par);
  t.step();
  const float at_one = t.evaluate();
  t.save_checkpoint(root);
  t.save_model(file);
  const float after_step = t.step().loss;
  t.step();
  const float at_three = t.evaluate();  // leaves every unit gathered
  ASSERT_NE(at_three, at_one);
  t.load_checkpoint(CheckpointReader::find(root));
  EXPECT_EQ(t.evaluate(), at_one);
  EXPECT_EQ(t.step().loss, after_step);  // step 2 again, from step 1's weights
  t.step();
  t.evaluate();
  t.load_model_file(file);
  EXPECT_EQ(t.evaluate(), at_one);
  comm->barrier();
  if (comm->rank() == 0) std::filesystem::remove_all(root);
}

// ZeRO 2's global norm from the ranks' shard norms: squares taken in f64, so shard norms whose
// squares overflow f32 give the finite norm one process would.
TEST(Zero, TheGlobalNormOfHugeShardNormsIsFinite) {
  std::shared_ptr<Communicator> comm = world();
  DataParallel dp(comm, ParallelConfig{2});
  const float norm = dp.global_norm(1e20f);
  EXPECT_EQ(norm, float(std::sqrt(double(comm->size())) * double(1e20f)));
}

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

TEST(Zero, StageTwoHoldsAGradientShardAndAtMostTwoBuckets) {
  std::shared_ptr<Communicator> comm = world();
  const int n = comm->size();
  ModelConfig cfg = model_preset("gpt2-tiny");
  cfg.n_layer = 48;  // 48 buckets of one layer each, ~2 % of the per-rank total at 4 ranks
  cfg.max_seq_len = 16;
  Transformer m(cfg, make_backend("cpu"), 7);
  const double psi = double(m.param_buffer().numel());
  const std::shared_ptr<Allocator> alloc = m.backend().allocator();
  TrainConfig tc = config(1);
  tc.micro_batch = 1;
  tc.seq_len = 16;
  ParallelConfig par;
  par.zero_stage = 2;
  par.bucket_bytes = 64 << 10;
  const int64_t before = alloc->stats().current_bytes;
  Trainer t(m, tc, text_data(), nullptr, comm, par);
  EXPECT_FALSE(m.grad_buffer().defined()) << "stage 2 frees the model's gradient buffer";
  // The Trainer allocated AdamW's shard and the gradient shard (and a few hundred bytes of batch
  // buffers) and freed the model's gradient buffer (4Ψ bytes, now the shard's job).
  const double opt_bytes = double(alloc->stats().current_bytes - before) + 4 * psi -
                           double(t.data_parallel()->gradient_shard().nbytes());
  for (int i = 0; i < 2; ++i) t.step();
  const DataParallel& dp = *t.data_parallel();
  const double grad_peak = double(dp.gradient_allocator()->stats().peak_bytes);
  const auto buckets = dp.buckets();
  const double embed = 4.0 * double(buckets.back().second - buckets.back().first);
  double largest = 0;
  for (size_t i = 0; i + 1 < buckets.size(); ++i) {
    largest = std::max(largest, 4.0 * double(buckets[i].second - buckets[i].first));
  }
  const double shard = 4 * std::ceil(psi / n);
  const double formula = shard + 8 * psi / n + 2 * largest + embed;
  const double measured = grad_peak + opt_bytes;
  if (comm->rank() == 0) {
    std::printf("[ zero ] stage 2, %d ranks: gradients + optimizer %.0f bytes (gradient peak "
                "%.0f), formula 12psi/N + 2B + E = %.0f (psi = %.0f, B = %.0f, E = %.0f)\n",
                n, measured, grad_peak, formula, psi, largest, embed);
  }
  EXPECT_LE(grad_peak, shard + 2 * largest + embed) << "more buckets alive than two";
  EXPECT_GE(grad_peak, shard + embed) << "the shard and the embedding's bucket are needed";
  EXPECT_NEAR(measured, formula, 0.05 * formula);
  if (n > 1) {
    EXPECT_LT(measured, 4 * psi + 8 * psi / n) << "stage 2 must hold less than stage 1";
  }
}

}  // namespace
}  // namespace nuri

namespace nuri {
namespace {

// ZeRO 3 per rank: the shards of the f32 weights (which the CPU also computes with), of the
// gradients and of AdamW's moments, 16Ψ/N together, persistent; while a step runs, at most two
// gathered units (the one computing and the next one's prefetch, or the head with the tied
// embedding) and stage 2's bucket staging (2B + E). A deep, narrow model, so no unit is large.
TEST(Zero, StageThreeHoldsShardsAndAtMostTwoGatheredUnits) {
  std::shared_ptr<Communicator> comm = world();
  const int n = comm->size();
  ModelConfig cfg = model_preset("gpt2-tiny");
  cfg.n_layer = 48;
  cfg.max_seq_len = 16;
  Transformer m(cfg, make_backend("cpu"), 7);
  const double psi = double(m.parameter_count());
  const std::shared_ptr<Allocator> alloc = m.backend().allocator();
  TrainConfig tc = config(1);
  tc.micro_batch = 1;
  tc.seq_len = 16;
  ParallelConfig par;
  par.zero_stage = 3;
  par.bucket_bytes = 64 << 10;
  const int64_t before = alloc->stats().current_bytes;  // the whole weights and gradients
  Trainer t(m, tc, text_data(), nullptr, comm, par);
  EXPECT_TRUE(m.parameters_sharded() && m.parameters().empty());
  // Now: the shards of the weights, of the gradients and of AdamW's state (and a few hundred
  // bytes of batch buffers) instead of the whole weights (4Ψ) and gradients (4Ψ), which went back
  // to the allocator.
  const double held = double(alloc->stats().current_bytes - before) + 8 * psi;
  for (int i = 0; i < 2; ++i) t.step();
  const DataParallel& dp = *t.data_parallel();
  const double shard = 4 * std::ceil(psi / n);
  const double persistent = held;
  if (comm->rank() == 0) {
    std::printf("[ zero ] stage 3, %d ranks: persistent %.0f bytes, formula 16psi/N = %.0f; "
                "gathered peak %.0f bytes\n", n, persistent, 16 * psi / n,
                double(dp.stats().gathered_peak_bytes));
  }
  EXPECT_NEAR(persistent, 16 * psi / n, 0.05 * 16 * psi / n);
  const auto units = m.unit_ranges();
  int64_t block = 0;
  for (size_t u = 1; u + 1 < units.size(); ++u) {
    block = std::max(block, units[u].second - units[u].first);
  }
  const int64_t embed = units.front().second - units.front().first;
  const int64_t head = units.back().second - units.back().first;
  const int64_t two = 4 * std::max({2 * block, block + embed, head + embed});
  EXPECT_LE(dp.stats().gathered_peak_bytes, two) << "more than two units gathered at once";
  EXPECT_GE(dp.stats().gathered_peak_bytes, 4 * (embed + head)) << "the tied head needs both";
  const auto buckets = dp.buckets();
  double largest = 0;
  for (size_t i = 0; i + 1 < buckets.size(); ++i) {
    largest = std::max(largest, 4.0 * double(buckets[i].second - buckets[i].first));
  }
  const double grad_peak = double(dp.gradient_allocator()->stats().peak_bytes);
  EXPECT_LE(grad_peak, shard + 2 * largest + 4.0 * double(embed));
}

}  // namespace
}  // namespace nuri
