// The trainer: learning-rate schedule, gradient accumulation equal to one large batch, the
// non-finite policy, evaluation, and sampling.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "nuri/core/settings.h"
#include "nuri/train/trainer.h"

namespace nuri {
namespace {

std::shared_ptr<TokenFile> text_data() {
  std::string text;
  for (int i = 0; i < 300; ++i) text += "to be or not to be, that is the question. ";
  return TokenFile::from_tokens(ByteTokenizer().encode(text), "hamlet", 257);
}

TEST(LearningRate, WarmupThenCosineToTheFloor) {
  TrainConfig c;
  c.lr = 1.0f;
  c.min_lr_ratio = 0.1f;
  c.warmup_steps = 10;
  c.steps = 110;
  EXPECT_FLOAT_EQ(learning_rate(c, 0), 0.1f);
  EXPECT_FLOAT_EQ(learning_rate(c, 9), 1.0f);
  EXPECT_FLOAT_EQ(learning_rate(c, 10), 1.0f);
  EXPECT_NEAR(learning_rate(c, 10 + 50), 0.1f + 0.9f * 0.5f * (1 + std::cos(M_PI * 50 / 99.0)), 1e-6);
  EXPECT_FLOAT_EQ(learning_rate(c, 109), 0.1f);
}

// 1 micro-batch of 4 and 2 of 2 and 4 of 1 see the same global batch: the same gradients.
TEST(Trainer, GradientAccumulationEqualsOneLargeBatch) {
  std::vector<float> first_grads;
  for (int64_t accum : {1, 2, 4}) {
    Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 5);
    TrainConfig c;
    c.steps = 1;
    c.micro_batch = 4 / accum;
    c.grad_accum = accum;
    c.seq_len = 32;
    c.grad_clip = 0;
    Trainer t(m, c, text_data(), nullptr);
    t.step();
    const Tensor& g = m.grad_buffer();
    std::vector<float> grads(g.data<float>(), g.data<float>() + g.numel());
    if (first_grads.empty()) {
      first_grads = grads;
      continue;
    }
    double max_err = 0, max_ref = 0;
    for (size_t i = 0; i < grads.size(); ++i) {
      max_err = std::max(max_err, double(std::abs(grads[i] - first_grads[i])));
      max_ref = std::max(max_ref, double(std::abs(first_grads[i])));
    }
    EXPECT_LT(max_err / max_ref, 1e-5) << "accum " << accum;
  }
}

// train.global_batch: grad_accum derived for each number of data-parallel ranks, the numbers
// named where the micro-batch does not divide it.
TEST(TrainConfig, GlobalBatchGivesTheGradientAccumulationOfEachAllocation) {
  TrainConfig c;
  c.micro_batch = 2;
  c.grad_accum = 7;  // replaced
  c.global_batch = 24;
  EXPECT_EQ(with_global_batch(c, 1).grad_accum, 12);
  EXPECT_EQ(with_global_batch(c, 4).grad_accum, 3);
  EXPECT_EQ(with_global_batch(c, 12).grad_accum, 1);
  EXPECT_EQ(with_global_batch(with_global_batch(c, 4), 4).grad_accum, 3);  // idempotent
  c.global_batch = 0;
  EXPECT_EQ(with_global_batch(c, 4).grad_accum, 7);  // 0: as given
  c.global_batch = 24;
  auto message = [&](int64_t dp) {
    try {
      with_global_batch(c, dp);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message(8), "train.global_batch 24 is not a multiple of train.micro_batch 2 x 8 "
                        "data-parallel ranks = 16 sequences; choose micro_batch among 1, 3 on 8 "
                        "ranks");
  EXPECT_EQ(message(5), "train.global_batch 24 is not a multiple of train.micro_batch 2 x 5 "
                        "data-parallel ranks = 10 sequences; no micro-batch size divides it on 5 "
                        "ranks: choose a global batch that is a multiple of the ranks");
  // Many divisors: the ten smallest named, and how many there are; a prime quotient of 10^9 is
  // found without trying every size up to it.
  c.micro_batch = 7;
  c.global_batch = 720;
  EXPECT_EQ(message(1), "train.global_batch 720 is not a multiple of train.micro_batch 7 x 1 "
                        "data-parallel ranks = 7 sequences; choose micro_batch among 1, 2, 3, 4, "
                        "5, 6, 8, 9, 10, 12, ... (30 in all) on 1 ranks");
  c.global_batch = 2 * 1000000007LL;
  EXPECT_EQ(message(2), "train.global_batch 2000000014 is not a multiple of train.micro_batch 7 "
                        "x 2 data-parallel ranks = 14 sequences; choose micro_batch among 1, "
                        "1000000007 on 2 ranks");
  c.micro_batch = 2;
  c.global_batch = 24;
  // The Trainer derives it: 24 sequences a step as 12 micro-batches of 2.
  Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 5);
  c.seq_len = 32;
  Trainer t(m, c, text_data(), nullptr);
  EXPECT_EQ(t.config().grad_accum, 12);
}

// Validation batches are global batches: a layout that splits one into other micro-batches
// evaluates the same sequences (one micro-batch of 8 against 4 of 2, and 8 of 1).
TEST(Trainer, EvaluationIsTheSameOnEverySplitOfTheGlobalBatch) {
  std::vector<float> vals;
  for (int64_t accum : {1, 4, 8}) {
    Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 5);
    TrainConfig c;
    c.micro_batch = 8 / accum;
    c.grad_accum = accum;
    c.seq_len = 32;
    c.eval_batches = 3;
    Trainer t(m, c, text_data(), text_data());
    vals.push_back(t.evaluate());
  }
  for (size_t i = 1; i < vals.size(); ++i) {
    EXPECT_LE(std::abs(vals[i] - vals[0]), 1e-6f * vals[0]) << vals[i] << " vs " << vals[0];
  }
  // Fewer validation sequences than one global batch: named, not a NaN.
  Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 5);
  TrainConfig c;
  c.micro_batch = 8;
  c.seq_len = 32;
  const std::vector<uint32_t> few = ByteTokenizer().encode(std::string(200, 'a'));
  Trainer t(m, c, text_data(), TokenFile::from_tokens(few, "few", 257));
  try {
    t.evaluate();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind("validation data: ", 0), 0u) << m;
    EXPECT_NE(m.find("fewer than one global batch of 8"), std::string::npos) << m;
    EXPECT_NE(m.find("(a validation batch is a global batch: micro_batch 8 x grad_accum 1 x 1 "
                     "ranks)"), std::string::npos) << m;
  }
}

TEST(Trainer, NonFiniteStepsAreSkippedOrStop) {
  for (NonFinitePolicy policy : {NonFinitePolicy::skip, NonFinitePolicy::stop}) {
    Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 5);
    TrainConfig c;
    c.steps = 3;
    c.micro_batch = 2;
    c.seq_len = 16;
    c.on_nonfinite = policy;
    Trainer t(m, c, text_data(), nullptr);
    EXPECT_FALSE(t.step().skipped);
    const float keep = m.parameter("h.0.ln_1.weight").data<float>()[0];
    m.parameter("h.0.ln_1.weight").data<float>()[0] = std::numeric_limits<float>::infinity();
    if (policy == NonFinitePolicy::skip) {
      const StepStats s = t.step();
      EXPECT_TRUE(s.skipped);
      EXPECT_EQ(t.skipped_steps(), 1);
      EXPECT_TRUE(std::isinf(m.parameter("h.0.ln_1.weight").data<float>()[0]));  // no update
      m.parameter("h.0.ln_1.weight").data<float>()[0] = keep;
      EXPECT_FALSE(t.step().skipped);
    } else {
      try {
        t.step();
        ADD_FAILURE() << "expected an error";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("at step 2"), std::string::npos) << e.what();
      }
    }
  }
}

// A global batch whose every target is masked (fine-tuning windows of prompt alone) has nothing
// to learn: its loss is NaN (a mean over nothing) and the weights stay as they were, where
// AdamW's moments and weight decay would still move them, without counting as a skipped step.
// The steps around it update.
TEST(Trainer, AGlobalBatchWithNothingToTrainDoesNotUpdate) {
  auto data = text_data();
  std::vector<uint8_t> mask(size_t(data->size()), 0);
  std::fill(mask.begin(), mask.begin() + mask.size() / 2, uint8_t(1));  // the first half trained
  data->set_mask(mask);
  Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 5);
  TrainConfig c;
  c.steps = 40;
  c.micro_batch = 2;
  c.seq_len = 16;
  c.weight_decay = 0.1f;
  Trainer t(m, c, data, nullptr);
  int untrained = 0, trained = 0, trained_before = 0;
  const Tensor& w = m.parameter("h.0.ln_1.weight");
  for (int i = 0; i < 40; ++i) {
    const std::vector<float> before(w.data<float>(), w.data<float>() + w.numel());
    const StepStats s = t.step();
    EXPECT_FALSE(s.skipped);
    const bool same = std::equal(before.begin(), before.end(), w.data<float>());
    if (s.untrained) {
      ++untrained;
      EXPECT_TRUE(std::isnan(s.loss)) << s.loss;
      EXPECT_TRUE(same) << "step " << s.step;
      if (trained > 0) ++trained_before;  // AdamW's moments were not zero
    } else {
      ++trained;
      EXPECT_TRUE(std::isfinite(s.loss));
      EXPECT_FALSE(same) << "step " << s.step;
    }
  }
  EXPECT_GT(trained_before, 0);
  EXPECT_GT(trained, 1);
  EXPECT_EQ(t.skipped_steps(), 0);
}

// Under on_nonfinite = skip, skip_limit skipped steps in a row stop the run as diverged, naming
// the streak and the checkpoint to go back to; a step that updates starts the count again.
TEST(Trainer, SkippedStepsInARowStopTheRun) {
  Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 5);
  TrainConfig c;
  c.steps = 10;
  c.micro_batch = 2;
  c.seq_len = 16;
  c.skip_limit = 3;
  Trainer t(m, c, text_data(), nullptr);
  float& w = m.parameter("h.0.ln_1.weight").data<float>()[0];
  const float keep = w;
  EXPECT_FALSE(t.step().skipped);  // 1
  w = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(t.step().skipped);  // 2
  EXPECT_TRUE(t.step().skipped);  // 3
  w = keep;
  EXPECT_FALSE(t.step().skipped);  // 4: the count starts again
  w = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(t.step().skipped);  // 5
  EXPECT_TRUE(t.step().skipped);  // 6
  try {
    t.step();  // 7: the third in a row
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "3 steps in a row (5 to 7) had a non-finite loss or gradient norm: the run has "
                  "diverged (train.skip_limit = 3). Lower the learning rate (train.lr = 0.002) "
                  "and resume from a checkpoint of step 3 or earlier (step 4's update, the last "
                  "one made, may be what diverged)"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(t.skipped_steps(), 5);
}

// A step with no trained target inside a streak of skipped ones neither updates nor ends it: the
// message names the last update made, before the streak (it named one step too late for each).
TEST(Trainer, AStreakThroughAStepWithNothingToTrainNamesTheLastUpdate) {
  auto data = text_data();
  std::vector<uint8_t> mask(size_t(data->size()), 0);
  std::fill(mask.begin(), mask.begin() + mask.size() / 2, uint8_t(1));
  data->set_mask(mask);
  TrainConfig c;
  c.steps = 60;
  c.micro_batch = 2;
  c.seq_len = 16;
  c.skip_limit = 3;
  std::vector<bool> untrained;  // step k + 1's; the data order alone decides it
  {
    Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 5);
    Trainer t(m, c, data, nullptr);
    for (int i = 0; i < 60; ++i) untrained.push_back(t.step().untrained);
  }
  int u = 0;  // an untrained step after two trained ones
  for (int k = 2; k < 40 && u == 0; ++k) {
    if (untrained[size_t(k)] && !untrained[size_t(k - 1)] && !untrained[size_t(k - 2)]) u = k + 1;
  }
  ASSERT_GT(u, 0) << "no untrained step after two trained ones in 40";
  Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 5);
  Trainer t(m, c, data, nullptr);
  for (int s = 1; s <= u - 2; ++s) EXPECT_EQ(t.step().untrained, untrained[size_t(s - 1)]);
  m.parameter("h.0.ln_1.weight").data<float>()[0] = std::numeric_limits<float>::infinity();
  int skipped = 0, step = u - 2;
  while (skipped < 3) skipped += untrained[size_t(step++)] ? 0 : 1;  // step: where the 3rd is
  const int quiet = step - (u - 2) - 3;
  ASSERT_GT(quiet, 0);
  std::string what;
  for (int s = u - 1; s <= step && what.empty(); ++s) {
    try {
      t.step();
    } catch (const Error& e) {
      what = e.what();
      EXPECT_EQ(s, step);
    }
  }
  EXPECT_NE(what.find("3 steps in a row (" + std::to_string(u - 1) + " to " +
                      std::to_string(step) + ", " + std::to_string(quiet) +
                      " of them with no trained target) had a non-finite loss"),
            std::string::npos)
      << what;
  EXPECT_NE(what.find("resume from a checkpoint of step " + std::to_string(u - 3) +
                      " or earlier (step " + std::to_string(u - 2) + "'s update"),
            std::string::npos)
      << what;
}

// The streak goes on across a checkpoint (a preempted diverging run would otherwise never
// reach skip_limit, its count starting again at every allocation).
TEST(Trainer, ASkippedStreakGoesOnAfterAResume) {
  const std::filesystem::path root =
      std::filesystem::temp_directory_path() / ("nuri_streak_" + std::to_string(::getpid()));
  TrainConfig c;
  c.steps = 10;
  c.micro_batch = 2;
  c.seq_len = 16;
  c.skip_limit = 3;
  {
    Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 5);
    Trainer t(m, c, text_data(), nullptr);
    EXPECT_FALSE(t.step().skipped);  // 1
    m.parameter("h.0.ln_1.weight").data<float>()[0] = std::numeric_limits<float>::infinity();
    EXPECT_TRUE(t.step().skipped);  // 2
    EXPECT_TRUE(t.step().skipped);  // 3
    t.save_checkpoint(root.string());
  }
  Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 5);
  Trainer t(m, c, text_data(), nullptr);
  t.load_checkpoint(root.string());
  try {
    t.step();  // 4: the third in a row
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("3 steps in a row (2 to 4)"), std::string::npos)
        << e.what();
  }
  std::filesystem::remove_all(root);
}

// Token ids beyond the model's vocabulary are refused when the trainer is made, not when a
// batch happens to sample one (thousands of steps in).
TEST(Trainer, DataBeyondTheVocabularyIsRefusedAtTheStart) {
  Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 5);
  TrainConfig c;
  c.micro_batch = 2;
  c.seq_len = 16;
  std::vector<uint32_t> ids(20000, 7);
  ids[12345] = 5000;
  auto data = TokenFile::from_tokens(ids, "ids");
  try {
    Trainer t(m, c, data, nullptr);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ids: token id 5000 at token index 12345"),
              std::string::npos)
        << e.what();
  }
  try {  // the validation data too
    Trainer t(m, c, text_data(), data);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is >= vocab_size 257"), std::string::npos) << e.what();
  }
}

TEST(Trainer, LearnsAndSamples) {
  Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 5);
  TrainConfig c;
  c.steps = 120;
  c.micro_batch = 4;
  c.seq_len = 64;
  c.lr = 3e-3f;
  c.warmup_steps = 5;
  c.eval_batches = 2;
  auto data = text_data();
  Trainer t(m, c, data, data);
  const float before = t.evaluate();
  for (int i = 0; i < c.steps; ++i) t.step();
  const float after = t.evaluate();
  EXPECT_GT(before, 5.0f);  // about ln(257) untrained
  EXPECT_LT(after, 0.5f);   // the repeated sentence is learned (0.16 measured here)
  // One global batch of 4 samples per step, wrapping into the next epoch.
  const int64_t per_epoch = (data->size() - 1) / c.seq_len / c.micro_batch;
  EXPECT_EQ(t.data_position().epoch, c.steps / per_epoch);
  EXPECT_EQ(t.data_position().batch, c.steps % per_epoch);
  const auto enc = ByteTokenizer().encode("to be or");
  const std::vector<int32_t> prompt(enc.begin(), enc.end());
  SampleOptions greedy;
  greedy.max_new_tokens = 24;
  greedy.temperature = 0;
  const auto g1 = t.generate(prompt, greedy), g2 = t.generate(prompt, greedy);
  EXPECT_EQ(g1, g2);
  // Exact strings differ with the CPU's BLAS kernels; a memorized phrase must appear.
  EXPECT_NE(ByteTokenizer().decode(g1).find("be, that is"), std::string::npos)
      << ByteTokenizer().decode(g1);
  SampleOptions topk1 = greedy;
  topk1.temperature = 1.0f;
  topk1.top_k = 1;  // top-1 sampling is greedy
  EXPECT_EQ(t.generate(prompt, topk1), g1);
  SampleOptions warm;
  warm.max_new_tokens = 30;
  warm.temperature = 1.5f;
  warm.seed = 11;
  EXPECT_EQ(t.generate(prompt, warm), t.generate(prompt, warm));  // reproducible per seed
  // The key/value cache (Transformer::decode) draws the tokens of whole forwards, greedy and
  // sampled, and on once the window (gpt2-tiny's 128 positions) is full and slides.
  for (SampleOptions opt : {greedy, warm}) {
    opt.max_new_tokens = 130;
    SampleOptions whole = opt;
    whole.cache = false;
    const auto cached = t.generate(prompt, opt);
    EXPECT_EQ(cached, t.generate(prompt, whole)) << "temperature " << opt.temperature;
    EXPECT_EQ(cached.size(), 130u);
  }

  // stop: the greedy tokens up to and including the first stop token drawn, with the cache and
  // without; stop tokens never drawn change nothing.
  for (const bool cache : {true, false}) {
    SampleOptions s = greedy;
    s.cache = cache;
    s.stop = {g1[5]};
    const auto first = std::find(g1.begin(), g1.end(), g1[5]);
    EXPECT_EQ(t.generate(prompt, s), std::vector<int32_t>(g1.begin(), first + 1));
  }
  SampleOptions never = greedy;
  for (int32_t id = 0; never.stop.size() < 2; ++id) {
    if (std::find(g1.begin(), g1.end(), id) == g1.end()) never.stop.push_back(id);
  }
  EXPECT_EQ(t.generate(prompt, never), g1);

  // top_p: the nucleus of the next token's distribution (at temperature 2), from the model's
  // logits: the fewest likeliest tokens whose probabilities sum to 0.8. Drawn with 200 seeds,
  // every first token is in it, and more than one of it is drawn; without top_p some are not.
  Tensor tokens = Tensor::empty({1, int64_t(prompt.size())}, DType::i32);
  std::copy(prompt.begin(), prompt.end(), tokens.data<int32_t>());
  m.logits(tokens);
  const Tensor row = m.logits_row(int64_t(prompt.size()) - 1);
  const int64_t vocab = m.config().vocab_size;
  std::vector<double> p(static_cast<size_t>(vocab));
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  const float* l = row.data<float>();
  const double top = *std::max_element(l, l + vocab);
  double z = 0;
  for (int64_t i = 0; i < vocab; ++i) z += p[size_t(i)] = std::exp((l[i] - top) / 2.0);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  std::set<int32_t> nucleus;
  for (double kept = 0; kept < 0.8 * z;) {
    kept += p[size_t(order[nucleus.size()])];
    nucleus.insert(order[nucleus.size()]);
  }
  SampleOptions nuc;
  nuc.max_new_tokens = 1;
  nuc.temperature = 2.0f;
  nuc.top_p = 0.8f;
  SampleOptions all = nuc;
  all.top_p = 1.0f;
  std::set<int32_t> drawn;
  int outside = 0;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    nuc.seed = all.seed = seed;
    const int32_t a = t.generate(prompt, nuc).at(0), b = t.generate(prompt, all).at(0);
    EXPECT_TRUE(nucleus.count(a)) << "seed " << seed << " drew " << a << ", outside the "
                                  << nucleus.size() << " tokens of the nucleus";
    drawn.insert(a);
    outside += !nucleus.count(b);
  }
  EXPECT_GT(drawn.size(), 1u) << "the nucleus holds " << nucleus.size() << " tokens";
  EXPECT_GT(outside, 0) << "without top_p every draw fell in the nucleus";
  std::printf("[top_p] nucleus of %zu tokens, %zu drawn; without top_p %d of 200 outside it\n",
              nucleus.size(), drawn.size(), outside);
  SampleOptions tiny = warm;  // a nucleus of one token: the greedy one, whatever the seed
  tiny.max_new_tokens = greedy.max_new_tokens;
  tiny.top_p = 1e-6f;
  EXPECT_EQ(t.generate(prompt, tiny), g1);

  // Bad options are refused, naming them.
  auto refused = [&](const SampleOptions& o, const std::string& needle) {
    try {
      t.generate(prompt, o);
      ADD_FAILURE() << "no error; expected one containing \"" << needle << "\"";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  for (const float bad : {0.0f, 1.5f, std::nanf("")}) {
    SampleOptions o = warm;
    o.top_p = bad;
    refused(o, "top_p (");
  }
  for (const int32_t bad : {-1, int32_t(vocab)}) {
    SampleOptions o = greedy;
    o.stop = {3, bad};
    refused(o, "stop token " + std::to_string(bad) + " is not a token id of the model");
  }
}

TEST(TrainConfig, InvalidFieldsAreNamed) {
  TrainConfig c;
  c.grad_accum = 0;
  try {
    c.validate();
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "grad_accum: expected an integer >= 1, got 0");
  }
}

}  // namespace
}  // namespace nuri
