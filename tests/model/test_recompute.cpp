// Activation recomputation (issue #21) on NURI_TEST_BACKEND ("cpu" in test_model, "cuda-emu" in
// the emulated trees' test_device_train): a GPT-2-style and a Llama-style model (GQA, RoPE,
// SwiGLU) give the same loss and every gradient bit for bit with recompute none, selective,
// full and full on every 2nd block, over two micro-batches and an AdamW step between them; and
// the activation bytes each mode keeps, measured from the allocator, match the README's formula
// and, to the byte, the planner's activation plan (nuri/model/memory.h).
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "head64_model.h"
#include "nuri/model/memory.h"
#include "nuri/train/trainer.h"

#ifndef NURI_TEST_BACKEND
#error "NURI_TEST_BACKEND names the backend under test"
#endif

namespace nuri {
namespace {

// Three blocks, so every-2nd differs.
ModelConfig recompute_model(bool llama) { return test::head64_model(llama); }

std::shared_ptr<TokenFile> recompute_data() {
  std::vector<uint32_t> t(4096);
  for (size_t i = 0; i < t.size(); ++i) t[i] = uint32_t((i * 7 + i / 13) % 64);
  return TokenFile::from_tokens(t, "pattern", 64);
}

struct Trained {
  std::vector<float> losses;
  std::vector<std::vector<uint8_t>> grads;  // every gradient's bytes after the last backward
};

Trained train(bool llama, Recompute mode, int64_t every) {
  Transformer m(recompute_model(llama), make_backend(NURI_TEST_BACKEND), 3);
  TrainConfig c;
  c.steps = 2;
  c.micro_batch = 2;
  c.seq_len = 32;
  c.grad_accum = 2;
  c.warmup_steps = 1;
  c.recompute = mode;
  c.recompute_every = every;
  Trainer trainer(m, c, recompute_data(), nullptr);
  EXPECT_EQ(m.recompute(), mode);
  Trained r;
  for (int s = 0; s < 2; ++s) r.losses.push_back(trainer.step().loss);
  for (const NamedTensor& g : m.gradients()) {
    Tensor host = Tensor::empty(g.tensor.shape(), DType::f32);
    m.backend().copy(g.tensor, host);
    const auto* p = static_cast<const uint8_t*>(host.raw());
    r.grads.emplace_back(p, p + host.numel() * 4);
  }
  return r;
}

class Recomputation : public ::testing::TestWithParam<bool> {};

TEST_P(Recomputation, LossesAndGradientsAreTheSameBits) {
  const bool llama = GetParam();
  const Trained none = train(llama, Recompute::none, 1);
  for (const auto& [mode, every] : std::vector<std::pair<Recompute, int64_t>>{
           {Recompute::selective, 1}, {Recompute::full, 1}, {Recompute::full, 2}}) {
    const Trained r = train(llama, mode, every);
    const std::string what = std::string(recompute_name(mode)) + " every " + std::to_string(every);
    ASSERT_EQ(r.losses.size(), none.losses.size());
    for (size_t i = 0; i < r.losses.size(); ++i) {
      EXPECT_EQ(std::memcmp(&r.losses[i], &none.losses[i], 4), 0)
          << what << ": step " << i + 1 << " loss " << r.losses[i] << " vs " << none.losses[i];
    }
    ASSERT_EQ(r.grads.size(), none.grads.size());
    for (size_t i = 0; i < r.grads.size(); ++i) {
      EXPECT_TRUE(r.grads[i] == none.grads[i]) << what << ": gradient " << i << " differs";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, Recomputation, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "llama" : "gpt2"; });

// The activation bytes of the README's formula (per block per micro-batch, e bytes per
// activation, BT = batch x sequence): none keeps e·BT·(6C + (H+2Hkv)·D + H·D + F' + F) +
// 4·BT·2s + 4·B·H·T (s = 2 statistics per norm for layernorm, 1 for rmsnorm; F' = F, or 2F for
// SwiGLU's gate|up); selective keeps e·BT·(3C + (H+2Hkv)·D + H·D + F' + [F for GELU]) + 4·B·H·T;
// full keeps e·BT·C. Blocks that do not keep a tensor share one of it; block 0's input is the
// embedding's output.
int64_t block_bytes(const ModelConfig& m, Recompute mode, int64_t b, int64_t t, int64_t e) {
  const int64_t bt = b * t, c = m.d_model, d = m.head_dim(), h = m.n_head, hkv = m.n_kv_head;
  const int64_t f = m.d_ff, fp = m.mlp == MlpKind::swiglu ? 2 * f : f;
  const int64_t stats = m.norm == NormKind::layernorm ? 2 : 1;
  const int64_t products = (h + 2 * hkv) * d + h * d + fp;
  switch (mode) {
    case Recompute::none:
      return e * bt * (6 * c + products + f) + 4 * bt * 2 * stats + 4 * b * h * t;
    case Recompute::selective:
      return e * bt * (3 * c + products + (m.mlp == MlpKind::gelu ? f : 0)) + 4 * b * h * t;
    case Recompute::full: return e * bt * c;
  }
  return 0;
}

TEST_P(Recomputation, ActivationBytesMatchTheFormula) {
  const bool llama = GetParam();
  ModelConfig cfg = recompute_model(llama);
  cfg.n_layer = 6;
  const int64_t b = 2, t = 32, bt = b * t, L = cfg.n_layer;
  Tensor tokens = Tensor::empty({b, t}, DType::i32);
  for (int64_t i = 0; i < bt; ++i) tokens.data<int32_t>()[i] = int32_t(i % 64);
  int64_t measured[3];
  for (Recompute mode : {Recompute::none, Recompute::selective, Recompute::full}) {
    Transformer m(cfg, make_backend(NURI_TEST_BACKEND), 1);
    m.set_recompute(mode);
    const int64_t before = m.memory().current_bytes;
    m.forward(tokens, tokens);
    measured[int(mode)] = m.memory().current_bytes - before;
    // The blocks: each keeps block_bytes, block 0's input being the embedding output; what the
    // recomputing blocks drop is one shared block's worth.
    const int64_t e = int64_t(dtype_size(m.compute_dtype())), c = cfg.d_model;
    const int64_t blocks = L * block_bytes(cfg, mode, b, t, e) - e * bt * c +
                           block_bytes(cfg, Recompute::none, b, t, e) -
                           block_bytes(cfg, mode, b, t, e);
    // Besides the blocks: the embedding output, the backward's gradient scratch, the head (final
    // norm, logits, the losses), and on a device the step's token ids.
    const int64_t d = cfg.head_dim(), f = cfg.d_ff, fp = llama ? 2 * f : f;
    const int64_t stats = cfg.norm == NormKind::layernorm ? 2 : 1;
    const int64_t scratch = e * bt * (2 * c + (cfg.n_head + 2 * cfg.n_kv_head) * d +
                                      cfg.n_head * d + fp + f);
    const int64_t head = e * bt * (2 * c + cfg.padded_vocab()) + 4 * bt * (stats + 2) + 4;
    const int64_t ids = m.backend().device().is_cpu() ? 0 : 2 * 4 * bt;
    const int64_t expected = blocks + e * bt * c + scratch + head + ids;
    EXPECT_NEAR(double(measured[int(mode)]), double(expected), 0.05 * double(expected))
        << recompute_name(mode);
    // The planner's count (nuri/model/memory.h) is the allocator's, to the byte (on a device
    // besides the backend's workspace, which the cross-entropy's id check made one block).
    ActivationShape shape;
    shape.b = b;
    shape.t = t;
    shape.act = m.compute_dtype();
    shape.recompute = mode;
    shape.device = !m.backend().device().is_cpu();
    const int64_t workspace = shape.device ? device_block_bytes(12) : 0;
    EXPECT_EQ(measured[int(mode)],
              activation_bytes(cfg, shape, shape.device ? device_block_bytes : nullptr) + workspace)
        << recompute_name(mode);
    // And what the blocks keep alone, the README's per-block figure, stands out between modes.
  }
  // Full recomputation of every 2nd block, with two micro-batch slots (a pipeline stage's) and
  // a document mask (each slot's bounds).
  {
    Transformer m(cfg, make_backend(NURI_TEST_BACKEND), 1);
    m.set_recompute(Recompute::full, 2);
    m.set_micro_batch_slots(2);
    m.set_document_separator(3);
    const int64_t before = m.memory().current_bytes;
    m.forward_stage(0, tokens, tokens);
    m.forward_stage(1, tokens, tokens);
    ActivationShape shape;
    shape.b = b;
    shape.t = t;
    shape.act = m.compute_dtype();
    shape.recompute = Recompute::full;
    shape.every = 2;
    shape.slots = 2;
    shape.device = !m.backend().device().is_cpu();
    shape.documents = true;
    EXPECT_EQ(m.memory().current_bytes - before,
              activation_bytes(cfg, shape, shape.device ? device_block_bytes : nullptr) +
                  (shape.device ? device_block_bytes(12) : 0));
  }
  const int64_t e = std::string(NURI_TEST_BACKEND) == "cpu" ? 4 : 2;
  for (Recompute mode : {Recompute::selective, Recompute::full}) {
    const double saved = double(measured[int(Recompute::none)] - measured[int(mode)]);
    const double formula = double((L - 1) * (block_bytes(cfg, Recompute::none, b, t, e) -
                                             block_bytes(cfg, mode, b, t, e)));
    EXPECT_NEAR(saved, formula, 0.05 * formula) << recompute_name(mode);
  }
}

}  // namespace
}  // namespace nuri
