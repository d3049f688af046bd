// Pipeline stages of the model (issue #23) on NURI_TEST_BACKEND ("cpu" in test_model, "cuda-emu"
// in the emulated trees' test_device_train):
// - stages chained in one process (each stage's output copied into the next one's input, its
//   input gradient into the previous one's output gradient) are the whole model: the same loss
//   and the same gradients bit for bit, except the tied wte's, which is the first stage's plus
//   the last stage's share (one process adds the two into one buffer as it goes, so the sum
//   rounds differently); two micro-batches in flight, with and without recomputation;
// - a stage holding p micro-batches keeps p times one micro-batch's activations (its blocks'
//   and its input's, the formula of test_recompute) beside one backward scratch;
// - misuse is an error that says what to call.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "nuri/core/error.h"
#include "nuri/core/rng.h"
#include "head64_model.h"
#include "nuri/model/transformer.h"
#include "test_util.h"

#ifndef NURI_TEST_BACKEND
#error "NURI_TEST_BACKEND names the backend under test"
#endif

namespace nuri {
namespace {

using test::error_of;

ModelConfig stage_model(bool llama) { return test::head64_model(llama); }

Tensor host_copy(Backend& be, const Tensor& t) {
  Tensor h = Tensor::empty(t.shape(), t.dtype());
  be.copy(t, h);
  return h;
}

Tensor ids(int k, int which) {
  Tensor t = Tensor::empty({2, 16}, DType::i32);
  const Philox rng(3, uint64_t(2 * k + which));
  for (int64_t i = 0; i < 32; ++i) t.data<int32_t>()[i] = int32_t(rng.uniform(uint64_t(i)) * 63.99f);
  return t;
}

class Stages : public ::testing::TestWithParam<bool> {};

TEST_P(Stages, ChainedStagesAreTheWholeModel) {
  const bool llama = GetParam();
  const ModelConfig cfg = stage_model(llama);
  for (const Recompute rc : {Recompute::none, Recompute::full}) {
    SCOPED_TRACE(recompute_name(rc));
    std::shared_ptr<Backend> be = make_backend(NURI_TEST_BACKEND);
    Transformer whole(cfg, be, 7);
    whole.set_recompute(rc);
    const std::vector<int64_t> first{0, 1, 2, 3};
    std::vector<std::unique_ptr<Transformer>> st;
    for (size_t s = 0; s + 1 < first.size(); ++s) {
      st.push_back(std::make_unique<Transformer>(cfg, be, 7, WeightShard{}, TensorParallelRank{},
                                                 PipelineStage{first[s], first[s + 1]}));
      st.back()->set_recompute(rc);
      st.back()->set_micro_batch_slots(2);
      st.back()->prepare(2, 16);
    }
    EXPECT_TRUE(st[0]->first_stage() && !st[0]->last_stage());
    EXPECT_TRUE(!st[2]->first_stage() && st[2]->last_stage());
    // A stage's own flat layout: its units alone (a tied model's last stage: the embedding too).
    EXPECT_EQ(st[1]->layout().front().offset, 0);
    EXPECT_EQ(st[2]->layout().front().name == whole.layout().front().name, cfg.tied_embeddings);
    float want = 0;
    for (int k = 0; k < 2; ++k) {
      want += whole.forward(ids(k, 0), ids(k, 1));
      whole.backward(0.5f);
    }
    // Both forwards first (two slots), then both backwards.
    float got = 0;
    for (int k = 0; k < 2; ++k) {
      for (size_t s = 0; s < st.size(); ++s) {
        if (s > 0) {
          const auto [x, r] = st[s]->stage_input();
          const auto [ox, orr] = st[s - 1]->stage_output(k);
          be->copy(ox, x);
          be->copy(orr, r);
        }
        const Tensor loss = st[s]->forward_stage(k, ids(k, 0), ids(k, 1));
        if (s + 1 == st.size()) got += host_copy(*be, loss).data<float>()[0];
        else EXPECT_FALSE(loss.defined());
      }
    }
    EXPECT_EQ(got, want);
    for (int k = 0; k < 2; ++k) {
      for (size_t s = st.size(); s-- > 0;) {
        if (s + 1 < st.size()) be->copy(st[s + 1]->stage_input_grad(), st[s]->stage_output_grad());
        st[s]->backward_stage(k, 0.5f);
      }
    }
    std::map<std::string, Tensor> grads;
    for (const auto& s : st) {
      for (const NamedTensor& g : s->gradients()) {
        const Tensor h = host_copy(*be, g.tensor);
        if (!grads.count(g.name)) {
          grads[g.name] = h;
          continue;
        }
        for (int64_t i = 0; i < h.numel(); ++i) grads[g.name].data<float>()[i] += h.data<float>()[i];
      }
    }
    ASSERT_EQ(grads.size(), whole.gradients().size());
    for (const NamedTensor& g : whole.gradients()) {
      const Tensor want_g = host_copy(*be, g.tensor);
      const Tensor& mine = grads.at(g.name);
      double worst = 0, top = 0;
      for (int64_t i = 0; i < mine.numel(); ++i) {
        worst = std::max(worst, double(std::abs(mine.data<float>()[i] - want_g.data<float>()[i])));
        top = std::max(top, double(std::abs(want_g.data<float>()[i])));
      }
      if (cfg.tied_embeddings && g.name == whole.layout().front().name) {
        EXPECT_LE(worst, 8 * FLT_EPSILON * top) << g.name;  // a few roundings of the largest
      } else {
        EXPECT_EQ(worst, 0.0) << g.name;
      }
    }
  }
}

// p micro-batches in flight on stage 0 (1F1B's first stage): p times its blocks' activations
// and its input (the embedding's output; on a device the token ids too), and once the backward
// scratch and the buffer the next stage's gradient arrives in.
TEST_P(Stages, ActivationsGrowWithTheMicroBatchesInFlight) {
  const bool llama = GetParam();
  const ModelConfig cfg = stage_model(llama);
  const int64_t b = 2, t = 16, bt = b * t, c = cfg.d_model;
  for (const int p : {1, 2, 4}) {
    std::shared_ptr<Backend> be = make_backend(NURI_TEST_BACKEND);
    Transformer s0(cfg, be, 7, WeightShard{}, TensorParallelRank{}, PipelineStage{0, 2});
    s0.set_micro_batch_slots(p);
    const int64_t before = be->allocator()->category_bytes(MemoryCategory::activations);
    for (int k = 0; k < p; ++k) s0.forward_stage(k, ids(k, 0), Tensor());
    const int64_t got = be->allocator()->category_bytes(MemoryCategory::activations) - before;
    const int64_t e = int64_t(dtype_size(s0.compute_dtype()));
    const int64_t d = cfg.head_dim(), h = cfg.n_head, hkv = cfg.n_kv_head, f = cfg.d_ff;
    const int64_t fp = llama ? 2 * f : f, stats = llama ? 1 : 2;
    // A block keeping everything (test_recompute's formula); block 0's input is the embedding's.
    const int64_t block = e * bt * (6 * c + (h + 2 * hkv) * d + h * d + fp + f) +
                          4 * bt * 2 * stats + 4 * b * h * t;
    const int64_t ids_bytes = be->device().is_cpu() ? 0 : 4 * bt;
    const int64_t per_micro_batch = 2 * block - e * bt * c + e * bt * c + ids_bytes;
    const int64_t scratch = e * bt * (2 * c + (h + 2 * hkv) * d + h * d + fp + f);
    EXPECT_EQ(got, p * per_micro_batch + scratch + e * bt * c) << "p " << p;
  }
}

TEST_P(Stages, MisuseIsAClearError) {
  const ModelConfig cfg = stage_model(GetParam());
  std::shared_ptr<Backend> be = make_backend(NURI_TEST_BACKEND);
  Transformer mid(cfg, be, 1, WeightShard{}, TensorParallelRank{}, PipelineStage{1, 2});
  const Tensor tok = ids(0, 0);
  EXPECT_NE(error_of([&] { mid.forward(tok, tok); }).find("run its micro-batches with forward_stage()"),
            std::string::npos);
  EXPECT_NE(error_of([&] { mid.stage_input(); }).find("call prepare(batch, sequence length)"),
            std::string::npos);
  mid.prepare(2, 16);
  EXPECT_NE(error_of([&] { mid.stage_output(2); }).find("slot 2 is outside the model's 1"),
            std::string::npos);
  EXPECT_NE(error_of([&] { mid.backward_stage(0); }).find("needs a forward"), std::string::npos);
  EXPECT_NE(error_of([&] {
              Transformer(cfg, be, 1, WeightShard{}, TensorParallelRank{}, PipelineStage{3, 3});
            }).find("a stage holds a non-empty range of the model's 3 blocks"),
            std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Models, Stages, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "llama" : "gpt2"; });

}  // namespace
}  // namespace nuri
