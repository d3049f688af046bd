// Pipeline parallelism's stage split and schedules (issue #23, nuri/parallel/pipeline.h).
// - The split: contiguous, covering every block once, the largest stage cost as small as any
//   split allows (checked against every split of small models), the head weighed in, explicit
//   splits honoured, bad ones refused.
// - The schedules: every forward and backward once, in order; simulated with a backward twice a
//   forward, 1F1B's idle share is (p − 1)/(m + p − 1) and stage r holds min(p − r, m)
//   micro-batches; interleaving with v chunks, (p − 1)/(v·m + p − 1).
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "nuri/core/error.h"
#include "nuri/parallel/pipeline.h"
#include "test_util.h"

namespace nuri {
namespace {

double stage_cost(const UnitCosts& u, const std::vector<int64_t>& first, size_t s) {
  double c = 0;
  for (int64_t i = first[s]; i < first[s + 1]; ++i) c += u.blocks[size_t(i)];
  if (s == 0) c += u.embedding;
  if (s + 2 == first.size()) c += u.head;
  return c;
}

double largest(const UnitCosts& u, const std::vector<int64_t>& first) {
  double m = 0;
  for (size_t s = 0; s + 1 < first.size(); ++s) m = std::max(m, stage_cost(u, first, s));
  return m;
}

using test::error_of;

TEST(PipelineStages, NoOtherSplitHasASmallerLargestStage) {
  // Small models with heads from light to heavier than several blocks: every split of L blocks
  // into pp non-empty stages, against the chosen one.
  for (const int64_t vocab : {64, 4000, 50257}) {
    ModelConfig c = model_preset("gpt2-tiny");
    c.n_layer = 7;
    c.vocab_size = vocab;
    const UnitCosts u = unit_costs(c, 64);
    for (int pp = 1; pp <= 4; ++pp) {
      const std::vector<int64_t> got = pipeline_stages(c, pp, 64);
      ASSERT_EQ(got.size(), size_t(pp) + 1);
      EXPECT_EQ(got.front(), 0);
      EXPECT_EQ(got.back(), c.n_layer);
      for (int s = 0; s < pp; ++s) EXPECT_LT(got[size_t(s)], got[size_t(s) + 1]) << "stage " << s;
      double best = std::numeric_limits<double>::infinity();
      std::vector<int64_t> f(size_t(pp) + 1, 0);
      f.back() = c.n_layer;
      std::function<void(int)> each = [&](int s) {  // every choice of the cuts f[1..pp-1]
        if (s == pp) {
          best = std::min(best, largest(u, f));
          return;
        }
        for (int64_t i = f[size_t(s) - 1] + 1; i <= c.n_layer - (pp - s); ++i) {
          f[size_t(s)] = i;
          each(s + 1);
        }
      };
      each(1);
      EXPECT_NEAR(largest(u, got), best, 1e-9 * best) << "vocab " << vocab << ", pp " << pp;
    }
  }
}

TEST(PipelineStages, TheHeadWeighsOnTheLastStage) {
  // gpt2-124M: the LM head over 50304 columns costs about as much as 5 blocks at T = 1024, so
  // the last of 2 stages takes fewer blocks; Llama 1B's small-vocabulary head barely moves it.
  const ModelConfig gpt2 = model_preset("gpt2-124M");
  const UnitCosts u = unit_costs(gpt2, 1024);
  EXPECT_GT(u.head, 3 * u.blocks[0]);
  const std::vector<int64_t> two = pipeline_stages(gpt2, 2, 1024);
  EXPECT_GE(two[1], 8) << "stage 0 owns blocks [0, " << two[1] << ")";
  const std::vector<int64_t> four = pipeline_stages(gpt2, 4, 1024);
  EXPECT_LT(four[4] - four[3], four[1] - four[0]);
  ModelConfig even = model_preset("llama-tiny");
  even.n_layer = 8;
  even.vocab_size = 64;  // a head lighter than a block
  EXPECT_EQ(pipeline_stages(even, 4, 64), (std::vector<int64_t>{0, 2, 4, 6, 8}));
  EXPECT_EQ(pipeline_stages(even, 1, 64), (std::vector<int64_t>{0, 8}));
  const std::string words = stages_summary(gpt2, two, 1024);
  EXPECT_EQ(words.rfind(std::to_string(two[1]) + "+" + std::to_string(12 - two[1]) +
                            " blocks (costs ", 0), 0u)
      << words;
}

TEST(PipelineStages, AnExplicitSplitIsUsedAndABadOneRefused) {
  const ModelConfig c = model_preset("gpt2-124M");  // 12 blocks
  EXPECT_EQ(pipeline_stages(c, 3, 1024, {5, 4, 3}), (std::vector<int64_t>{0, 5, 9, 12}));
  EXPECT_NE(error_of([&] { pipeline_stages(c, 13, 1024); }).find("choose pp in [1, 12]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { pipeline_stages(c, 0, 1024); }).find("choose pp in [1, 12]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { pipeline_stages(c, 3, 1024, {6, 6}); }).find("gives 2 stages, pp is 3"),
            std::string::npos);
  EXPECT_NE(error_of([&] { pipeline_stages(c, 3, 1024, {6, 0, 6}); })
                .find("stage 1 0 blocks"),
            std::string::npos);
  EXPECT_NE(error_of([&] { pipeline_stages(c, 3, 1024, {5, 5, 5}); })
                .find("sum to 15, the model has 12"),
            std::string::npos);
}

// Every rank runs each chunk's forward and backward of every micro-batch once, the forwards of a
// chunk in micro-batch order and so the backwards.
void expect_complete(const std::vector<std::vector<PipelineOp>>& s, int p, int m, int v) {
  ASSERT_EQ(s.size(), size_t(p));
  for (int r = 0; r < p; ++r) {
    std::vector<std::vector<int>> next(2, std::vector<int>(size_t(v), 0));
    for (const PipelineOp& o : s[size_t(r)]) {
      ASSERT_TRUE(o.chunk >= 0 && o.chunk < v);
      EXPECT_EQ(o.micro, next[o.backward][size_t(o.chunk)]++) << "rank " << r;
    }
    for (int c = 0; c < v; ++c) {
      EXPECT_EQ(next[0][size_t(c)], m) << "rank " << r << " chunk " << c;
      EXPECT_EQ(next[1][size_t(c)], m) << "rank " << r << " chunk " << c;
    }
  }
}

TEST(PipelineSchedule, OneFOneBHasTheBubbleAndTheActivationsOfItsFormula) {
  for (int p : {1, 2, 3, 4, 8}) {
    for (int m : {1, 2, 4, 7, 8, 16, 32}) {
      const auto s = pipeline_schedule(p, m);
      expect_complete(s, p, m, 1);
      // Rank r's order: min(p - r - 1, m) forwards before its first backward.
      for (int r = 0; r < p; ++r) {
        int warm = 0;
        while (!s[size_t(r)][size_t(warm)].backward) ++warm;
        EXPECT_EQ(warm, std::min(p - r, m)) << "p " << p << " m " << m << " rank " << r;
      }
      // With a backward twice a forward and free transfers, the idle share is
      // (p - 1) / (m + p - 1) (every stage waits p - 1 forward-backward pairs in all), and
      // stage 0 holds min(p, m) micro-batches' activations at once, stage r min(p - r, m).
      const ScheduleTiming t = simulate_schedule(s, 1);
      EXPECT_NEAR(t.bubble(), pipeline_bubble_formula(p, m), 1e-12) << "p " << p << " m " << m;
      EXPECT_DOUBLE_EQ(t.makespan, 3.0 * (m + p - 1)) << "p " << p << " m " << m;
      for (int r = 0; r < p; ++r) EXPECT_EQ(t.in_flight[size_t(r)][0], std::min(p - r, m));
    }
  }
}

TEST(PipelineSchedule, InterleavingDividesTheBubbleByV) {
  for (int p : {2, 4}) {
    for (int v : {2, 3}) {
      for (int m : {p, 2 * p, 4 * p, 8 * p}) {
        const auto s = pipeline_schedule(p, m, v);
        expect_complete(s, p, m, v);
        const ScheduleTiming t = simulate_schedule(s, v);
        const double want = pipeline_bubble_formula(p, m, v);
        EXPECT_NEAR(t.bubble(), want, 1e-12) << "p " << p << " v " << v << " m " << m;
        EXPECT_LT(t.bubble(), pipeline_bubble_formula(p, m, 1)) << "p " << p << " m " << m;
      }
    }
  }
  EXPECT_NE(error_of([] { pipeline_schedule(4, 6, 2); }).find("6 micro-batches is not a multiple"),
            std::string::npos);
}

}  // namespace
}  // namespace nuri
