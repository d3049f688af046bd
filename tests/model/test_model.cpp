// Model configuration, parameter layout and initialization: published parameter counts,
// Hugging Face names, fused views that alias the named tensors, init that depends only on
// (seed, name), validation messages, and the whole model's gradient along random directions.
#include <gtest/gtest.h>

#include "test_util.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <string>

#include "nuri/core/rng.h"
#include "nuri/model/transformer.h"

namespace nuri {
namespace {

using test::error_of;

TEST(ModelConfig, PresetsHaveThePublishedParameterCounts) {
  EXPECT_EQ(model_preset("gpt2-124M").num_params(), 124439808);    // Hugging Face gpt2
  EXPECT_EQ(model_preset("llama-1B").num_params(), 1100048384);    // TinyLlama-1.1B
  EXPECT_EQ(model_preset("gpt2-124M").padded_vocab(), 50304);
  for (const auto& name : model_preset_names()) {
    const ModelConfig c = model_preset(name);
    EXPECT_NO_THROW(c.validate()) << name;
    // The layout holds exactly num_params() plus the padded embedding rows.
    int64_t total = 0;
    for (const auto& p : param_layout(c)) total += p.numel();
    const int64_t pad = (c.padded_vocab() - c.vocab_size) * c.d_model * (c.tied_embeddings ? 1 : 2);
    EXPECT_EQ(total, c.num_params() + pad) << name;
  }
}

TEST(ModelConfig, ValidationMessagesNameFieldAndValues) {
  ModelConfig c = model_preset("gpt2-124M");
  c.d_model = 770;
  EXPECT_NE(error_of([&] { c.validate(); }).find("n_head (12) must divide d_model (770)"), std::string::npos);
  c = model_preset("llama-tiny");
  c.n_kv_head = 3;
  EXPECT_NE(error_of([&] { c.validate(); }).find("n_kv_head (3) must divide n_head (4)"), std::string::npos);
  c = model_preset("llama-tiny");
  c.d_model = 60;
  c.n_head = 4;
  c.n_kv_head = 4;
  c.d_model = 4 * 15;  // odd head dim with rope
  EXPECT_NE(error_of([&] { c.validate(); }).find("rope needs an even head dim"), std::string::npos);
  EXPECT_NE(error_of([] { model_preset("gpt5"); }).find("unknown model preset 'gpt5'; presets: demo, gpt2-tiny"),
            std::string::npos);
  // What Llama 3.1, Qwen2 and Mistral add (issue #25).
  c = model_preset("llama-tiny");
  c.d_model = 62;  // 4 heads do not divide it: fine with head_dim given
  c.head_dim_override = 32;
  EXPECT_NO_THROW(c.validate());
  c.head_dim_override = 0;
  EXPECT_NE(error_of([&] { c.validate(); }).find("n_head (4) must divide d_model (62), or head_dim must be given"),
            std::string::npos);
  c.head_dim_override = 33;
  EXPECT_NE(error_of([&] { c.validate(); }).find("rope needs an even head dim, got 33 (head_dim)"),
            std::string::npos);
  c = model_preset("llama-tiny");
  c.rope_scaling = RopeScalingKind::llama3;
  c.rope_low_freq_factor = 4;
  c.rope_high_freq_factor = 2;
  EXPECT_NE(error_of([&] { c.validate(); }).find("model config: llama3 rope scaling needs 0 < low_freq_factor < high_freq_factor, got 4 and 2"),
            std::string::npos);
  c = model_preset("gpt2-tiny");
  c.rope_scaling = RopeScalingKind::linear;
  EXPECT_NE(error_of([&] { c.validate(); }).find("rope_scaling linear needs position = rope"), std::string::npos);
  c = model_preset("llama-tiny");
  c.qkv_bias = c.bias = true;
  EXPECT_NE(error_of([&] { c.validate(); }).find("with bias = true every linear layer has them already"),
            std::string::npos);
  c = model_preset("gpt2-tiny");
  c.bias = false;
  c.qkv_bias = true;
  EXPECT_NE(error_of([&] { c.validate(); }).find("qkv_bias is for Llama-style models"), std::string::npos);
  c = model_preset("llama-tiny");
  c.sliding_window = 16;
  EXPECT_NO_THROW(check_sliding_window(c, 16));
  EXPECT_NE(error_of([&] { check_sliding_window(c, 17); }).find("sequence length 17 is longer than the model's sliding window (16)"),
            std::string::npos);
}

TEST(ModelConfig, QkvBiasAndAWiderHeadAreInTheLayoutAndTheCount) {
  ModelConfig c = model_preset("llama-tiny");  // d_model 64, 4 heads, 2 kv heads
  c.qkv_bias = true;
  c.head_dim_override = 32;  // q 128 wide, k and v 64: not d_model / n_head = 16
  std::map<std::string, Shape> shapes;
  int64_t total = 0;
  for (const auto& p : param_layout(c)) {
    shapes[p.name] = p.shape;
    total += p.numel();
  }
  EXPECT_EQ(shapes.at("model.layers.0.self_attn.q_proj.weight"), (Shape{128, 64}));
  EXPECT_EQ(shapes.at("model.layers.1.self_attn.k_proj.bias"), (Shape{64}));
  EXPECT_EQ(shapes.at("model.layers.0.self_attn.o_proj.weight"), (Shape{64, 128}));
  EXPECT_EQ(shapes.count("model.layers.0.self_attn.o_proj.bias"), 0u);
  EXPECT_EQ(shapes.count("model.layers.0.mlp.down_proj.bias"), 0u);
  EXPECT_EQ(total, c.num_params() + (c.padded_vocab() - c.vocab_size) * c.d_model * 2);
}

TEST(Transformer, NamesAndFusedViewsFollowHuggingFace) {
  Transformer gpt(model_preset("gpt2-tiny"), make_backend("cpu"), 1);
  EXPECT_EQ(gpt.parameters().front().name, "wte.weight");
  EXPECT_EQ(gpt.parameter("h.1.attn.c_attn.weight").shape(), (Shape{192, 64}));
  EXPECT_EQ(gpt.parameter("h.0.mlp.c_proj.weight").shape(), (Shape{64, 256}));
  EXPECT_FALSE(gpt.parameters().back().decay);  // ln_f.bias
  EXPECT_NE(error_of([&] { gpt.parameter("h.0.attn.c_attn"); }).find("did you mean: h.0.attn.c_attn.weight"),
            std::string::npos);
  Transformer llama(model_preset("llama-tiny"), make_backend("cpu"), 1);
  const Tensor& q = llama.parameter("model.layers.0.self_attn.q_proj.weight");
  const Tensor& k = llama.parameter("model.layers.0.self_attn.k_proj.weight");
  const Tensor& v = llama.parameter("model.layers.0.self_attn.v_proj.weight");
  EXPECT_EQ(q.shape(), (Shape{64, 64}));
  EXPECT_EQ(k.shape(), (Shape{32, 64}));  // 2 kv heads of 16
  // q, k, v adjacent: the fused QKV product reads one [(H + 2Hkv)·D, C] block.
  EXPECT_EQ(k.data<float>(), q.data<float>() + q.numel());
  EXPECT_EQ(v.data<float>(), k.data<float>() + k.numel());
  const Tensor& gate = llama.parameter("model.layers.1.mlp.gate_proj.weight");
  EXPECT_EQ(llama.parameter("model.layers.1.mlp.up_proj.weight").data<float>(),
            gate.data<float>() + gate.numel());
  EXPECT_EQ(llama.parameters().back().name, "lm_head.weight");
  // A ZeRO 3 shard, even of the whole range (one rank), has no named parameters to give.
  Transformer whole(model_preset("gpt2-tiny"), make_backend("cpu"), 1,
                    WeightShard{0, gpt.parameter_count()});
  EXPECT_NE(error_of([&] { whole.parameter("wte.weight"); }).find("ZeRO 3 shards"),
            std::string::npos);
  Transformer half(model_preset("gpt2-tiny"), make_backend("cpu"), 1,
                   WeightShard{0, gpt.parameter_count() / 2});
  EXPECT_NE(error_of([&] { half.parameter("wte.weight"); }).find("ZeRO 3 shards"),
            std::string::npos);
}

TEST(Transformer, InitDependsOnlyOnSeedAndName) {
  ModelConfig small = model_preset("gpt2-tiny"), deeper = small;
  deeper.n_layer = 3;
  Transformer a(small, make_backend("cpu"), 7), b(deeper, make_backend("cpu"), 7),
      c(small, make_backend("cpu"), 8);
  const Tensor& wa = a.parameter("h.1.attn.c_attn.weight");
  const Tensor& wb = b.parameter("h.1.attn.c_attn.weight");
  const Tensor& wc = c.parameter("h.1.attn.c_attn.weight");
  int same_ab = 0, same_ac = 0;
  double ss = 0;
  for (int64_t i = 0; i < wa.numel(); ++i) {
    same_ab += wa.data<float>()[i] == wb.data<float>()[i];
    same_ac += wa.data<float>()[i] == wc.data<float>()[i];
    ss += double(wa.data<float>()[i]) * wa.data<float>()[i];
  }
  EXPECT_EQ(same_ab, wa.numel());  // the same tensor in a deeper model: the same values
  EXPECT_LT(same_ac, 5);           // another seed: other values
  EXPECT_NEAR(std::sqrt(ss / double(wa.numel())), 0.02, 0.002);
  // The residual projections use GPT-2's scaled std 0.02 / sqrt(2·n_layer); padded rows are 0.
  const Tensor& proj = a.parameter("h.0.mlp.c_proj.weight");
  double sp = 0;
  for (int64_t i = 0; i < proj.numel(); ++i) sp += double(proj.data<float>()[i]) * proj.data<float>()[i];
  EXPECT_NEAR(std::sqrt(sp / double(proj.numel())), 0.02 / std::sqrt(4.0), 0.001);
  const Tensor& wte = a.parameter("wte.weight");
  for (int64_t i = 257 * 64; i < wte.numel(); ++i) ASSERT_EQ(wte.data<float>()[i], 0.f);
  EXPECT_EQ(a.parameter("h.0.ln_1.weight").data<float>()[5], 1.f);
}

// The init draws a chunk of 2^24 weights at a time into one host buffer: across the chunks'
// edges the weights are still the definition's (Philox normal of (seed, name) at each logical
// element times the std; padded rows 0), and building the model takes no host memory beyond its
// own buffers and that one chunk (the process's peak resident set, reset first).
TEST(Transformer, InitDrawsChunksAndHoldsNoHostCopyOfTheWeights) {
  ModelConfig cfg = model_preset("gpt2-124M");
  cfg.n_layer = 1;  // 45M weights, 38.6M of them wte's (layout offset 0): across two chunk edges
  test::reset_peak_rss();
  const int64_t before = test::peak_rss_kib();
  Transformer m(cfg, make_backend("cpu"), 11);
  const int64_t grown = (test::peak_rss_kib() - before) * 1024;
  const int64_t psi = m.parameter_count();
  ASSERT_GT(psi, 2 * (int64_t(1) << 24));
  // f32 weights and gradients (8 bytes a weight), one 64 MiB chunk, and slack for the
  // allocator and the test's own pages; a host copy of the weights would add 4 bytes a weight.
  EXPECT_LE(grown, 8 * psi + (int64_t(80) << 20)) << "of " << psi << " weights";
  EXPECT_GE(grown, 8 * psi) << "the buffers were not touched?";
  const Tensor& wte = m.parameter("wte.weight");
  const Philox rng(11, stream_id("init/wte.weight"));
  const int64_t drawn = cfg.vocab_size * cfg.d_model;
  int64_t differ = 0;
  for (int64_t i = 0; i < wte.numel(); ++i) {
    const float want = i < drawn ? rng.normal(uint64_t(i)) * 0.02f + 0.f : 0.f;
    differ += wte.data<float>()[i] != want;
  }
  EXPECT_EQ(differ, 0) << "of " << wte.numel();
}

// WeightInit::zeros (a model whose weights are read next): every weight 0, nothing drawn; the
// weights written into it then compute what the seeded model does, bit for bit.
Tensor batch(int64_t b, int64_t t, int64_t vocab, uint64_t seed);
TEST(Transformer, ZerosInitHoldsZerosUntilWeightsAreWritten) {
  for (const char* preset : {"gpt2-tiny", "llama-tiny"}) {
    const ModelConfig cfg = model_preset(preset);
    Transformer seeded(cfg, make_backend("cpu"), 5);
    Transformer z(cfg, make_backend("cpu"), 5, WeightShard{}, TensorParallelRank{},
                  PipelineStage{}, WeightInit::zeros);
    const Tensor& p = z.param_buffer();
    int64_t nonzero = 0;
    for (int64_t i = 0; i < p.numel(); ++i) nonzero += p.data<float>()[i] != 0.f;
    EXPECT_EQ(nonzero, 0) << preset;
    const Tensor x = batch(2, 16, 257, 1), y = batch(2, 16, 257, 2);
    z.load_weights(seeded.param_buffer());
    EXPECT_EQ(z.forward(x, y), seeded.forward(x, y)) << preset;
  }
}

Tensor batch(int64_t b, int64_t t, int64_t vocab, uint64_t seed) {
  Tensor x = Tensor::empty({b, t}, DType::i32);
  Philox rng(seed, 3);
  for (int64_t i = 0; i < x.numel(); ++i) x.data<int32_t>()[i] = int32_t(rng.bits(uint64_t(i)) % uint32_t(vocab));
  return x;
}

// The whole model's gradient against a central difference of its own loss along a random
// direction of all parameters (float32 forward, so the step is large and the bound loose).
TEST(Transformer, GradientMatchesDirectionalDerivative) {
  for (const char* preset : {"gpt2-tiny", "llama-tiny"}) {
    Transformer m(model_preset(preset), make_backend("cpu"), 3);
    const Tensor x = batch(2, 16, 257, 1), y = batch(2, 16, 257, 2);
    m.forward(x, y);
    m.backward(1.f);
    const Tensor& p = m.param_buffer();
    const Tensor& g = m.grad_buffer();
    std::vector<float> u(size_t(p.numel())), p0(p.data<float>(), p.data<float>() + p.numel());
    Philox(9, 9).fill_normal(u.data(), p.numel(), 0, 0.f, 1.f);
    double dot = 0, gnorm = 0;
    for (int64_t i = 0; i < p.numel(); ++i) {
      dot += double(g.data<float>()[i]) * u[size_t(i)];
      gnorm += double(g.data<float>()[i]) * g.data<float>()[i];
    }
    const float h = 1e-3f;
    auto loss_at = [&](float s) {
      for (int64_t i = 0; i < p.numel(); ++i) p.data<float>()[i] = p0[size_t(i)] + s * u[size_t(i)];
      return double(m.forward(x, y));
    };
    const double numeric = (loss_at(h) - loss_at(-h)) / (2 * h);
    EXPECT_NEAR(numeric, dot, 2e-3 * std::sqrt(gnorm) + 1e-3 * std::abs(dot)) << preset;
  }
}

// Packed documents (a document mask): a window of three documents gives the loss and the
// gradients of the three run alone, each weighted by its share of the tokens: attention stays
// inside each document, and GPT-2's position table is read from each one's start (rotary
// positions need nothing: their scores depend on the distance alone). Without the mask the
// later documents read the earlier ones: another loss.
TEST(Transformer, PackedDocumentsTrainAsIfEachStoodAlone) {
  constexpr int32_t kSep = 256;  // the byte vocabulary's end-of-text
  const std::vector<int64_t> lens = {5, 7, 4};
  const int64_t t = 16;
  std::vector<int32_t> tok, tgt;
  Philox rng(41, 3);
  for (const int64_t n : lens) {
    for (int64_t i = 0; i < n; ++i) {  // ids < 256 (no separator) and the separator last
      tok.push_back(i + 1 < n ? int32_t(rng.bits(tok.size()) % 256u) : kSep);
      tgt.push_back(int32_t(rng.bits(1000 + tgt.size()) % 257u));
    }
  }
  ASSERT_EQ(int64_t(tok.size()), t);
  auto ids = [](const std::vector<int32_t>& v, size_t at, int64_t n) {
    Tensor x = Tensor::empty({1, n}, DType::i32);
    std::memcpy(x.raw(), v.data() + at, size_t(n) * sizeof(int32_t));
    return x;
  };
  for (const char* preset : {"gpt2-tiny", "llama-tiny"}) {
    SCOPED_TRACE(preset);
    const ModelConfig cfg = model_preset(preset);
    Transformer packed(cfg, make_backend("cpu"), 3), alone(cfg, make_backend("cpu"), 3);
    const float plain = packed.forward(ids(tok, 0, t), ids(tgt, 0, t));
    packed.set_document_separator(kSep);
    packed.zero_grad();
    const float loss = packed.forward(ids(tok, 0, t), ids(tgt, 0, t));
    packed.backward(1.f);
    alone.zero_grad();
    double sum = 0;
    size_t at = 0;
    for (const int64_t n : lens) {
      const float part = alone.forward(ids(tok, at, n), ids(tgt, at, n));
      alone.backward(float(n) / float(t));
      sum += double(n) * part;
      at += size_t(n);
    }
    EXPECT_NEAR(loss, sum / double(t), 2e-6 * std::abs(loss));
    EXPECT_GT(std::abs(plain - loss), 1e-3) << "the mask changes nothing here";
    const float* g = packed.grad_buffer().data<float>();
    const float* h = alone.grad_buffer().data<float>();
    double largest = 0, err = 0;
    for (int64_t i = 0; i < packed.grad_buffer().numel(); ++i) {
      largest = std::max(largest, double(std::abs(h[i])));
      err = std::max(err, double(std::abs(g[i] - h[i])));
    }
    EXPECT_GT(largest, 0);
    EXPECT_LE(err, 1e-5 * largest);
  }
}

// Incremental decoding (what generate() runs): Transformer::decode gives at every position the
// logits of a whole forward of the window (the prompt's rows in one call, then a row a call,
// then the window started anew), with and without a document separator (GPT-2's positions then
// restart at each document); misuse is a clear error.
TEST(Transformer, DecodingRowByRowGivesTheWholeForwardsLogits) {
  const int64_t w = 70;  // past the 64 rows that decode's attention span rounds to
  for (const char* preset : {"gpt2-tiny", "llama-tiny"}) {
    for (const int64_t sep : {int64_t(-1), int64_t(7)}) {
      SCOPED_TRACE(std::string(preset) + " separator " + std::to_string(sep));
      Transformer m(model_preset(preset), make_backend("cpu"), 3);
      m.set_document_separator(sep);
      Tensor tokens = batch(1, w, 257, 5);
      for (const int64_t at : {9, 23, 64}) tokens.data<int32_t>()[at] = 7;
      const Tensor full = m.logits(tokens);  // [1, W, Vp]
      const int64_t vp = full.size(2);
      const std::vector<float> ref(full.data<float>(), full.data<float>() + full.numel());
      auto expect_row = [&](const Tensor& got, int64_t pos) {
        ASSERT_EQ(got.numel(), vp);
        double largest = 0, err = 0;
        for (int64_t j = 0; j < vp; ++j) {
          const double want = ref[size_t(pos * vp + j)];
          largest = std::max(largest, std::abs(want));
          err = std::max(err, std::abs(double(got.data<float>()[j]) - want));
        }
        EXPECT_LE(err, 1e-5 * largest) << "position " << pos;
      };
      expect_row(m.decode(tokens, 0, 6), 5);  // the prompt's rows at once
      for (int64_t r1 = 7; r1 <= w; ++r1) expect_row(m.decode(tokens, r1 - 1, r1), r1 - 1);
      expect_row(m.decode(tokens, 0, 3), 2);  // started anew (the rows past 3 hold old values)
      expect_row(m.decode(tokens, 3, 12), 11);
      expect_row(m.decode(tokens, 5, 8), 7);  // rows the cache holds, computed again
      Tensor other = Tensor::empty({1, w}, DType::i32);
      std::memcpy(other.raw(), tokens.raw(), size_t(w) * sizeof(int32_t));
      other.data<int32_t>()[2] += 1;
      EXPECT_NE(error_of([&] { m.decode(other, 8, 9); }).find(
                    "decode(): token 2 is " + std::to_string(other.data<int32_t>()[2]) +
                    " where the cached rows were computed with " +
                    std::to_string(tokens.data<int32_t>()[2])),
                std::string::npos);
      m.set_document_separator(sep < 0 ? 7 : -1);
      EXPECT_NE(error_of([&] { m.decode(tokens, 8, 9); }).find(
                    "decode(): the document separator changed since the cached rows were "
                    "computed; start again with r0 = 0"),
                std::string::npos);
      m.set_document_separator(sep);
      expect_row(m.decode(tokens, 8, 12), 11);
      EXPECT_NE(error_of([&] { m.decode(tokens, 13, 14); }).find(
                    "decode(): rows from 13 need the rows before cached, and the cache holds "
                    "12; call with r0 <= 12"),
                std::string::npos);
      EXPECT_NE(error_of([&] { m.decode(tokens, 5, 5); }).find(
                    "decode(): the rows [5, 5) must be a nonempty range inside the window of 70"),
                std::string::npos);
      EXPECT_NE(error_of([&] { m.decode(batch(1, 129, 257, 6), 0, 4); }).find(
                    "decode(): the window of 129 exceeds max_seq_len 128 of the model"),
                std::string::npos);
      EXPECT_NE(error_of([&] { m.decode(batch(1, 20, 257, 6), 3, 4); }).find(
                    "need the cache of a window of 20 started with r0 = 0, and the cache is of "
                    "another window"),
                std::string::npos);
      m.end_decode();
    }
  }
}

// Gradient hooks (data parallelism): the backward completes grad_units() in order, and with
// hooks that own the storage (a region per unit, here fresh zeroed buffers) it computes the same
// bits as into the model's own buffer, for tied (gpt2) and untied, rope (llama) layouts, with two
// micro-batches accumulated into the same regions.
TEST(Transformer, HooksThatOwnTheGradientsSeeTheSameBits) {
  struct Hooks : GradHooks {
    std::vector<std::pair<int64_t, int64_t>> order;
    std::map<int64_t, Tensor> regions;  // by lo; kept across backward calls (accumulation)
    Tensor region(int64_t lo, int64_t hi) override {
      auto it = regions.find(lo);
      if (it == regions.end()) it = regions.emplace(lo, Tensor::zeros({hi - lo})).first;
      EXPECT_EQ(it->second.numel(), hi - lo);
      return it->second;
    }
    void ready(int64_t lo, int64_t hi) override { order.push_back({lo, hi}); }
  };
  for (const char* preset : {"gpt2-tiny", "llama-tiny"}) {
    ModelConfig cfg = model_preset(preset);
    Transformer ref(cfg, make_backend("cpu"), 3), m(cfg, make_backend("cpu"), 3);
    Hooks hooks;
    m.set_grad_hooks(&hooks, /*own_storage=*/true);
    EXPECT_FALSE(m.grad_buffer().defined()) << preset;
    for (uint64_t mb = 0; mb < 2; ++mb) {
      const Tensor x = batch(2, 16, 257, 1 + 2 * mb), y = batch(2, 16, 257, 2 + 2 * mb);
      ref.forward(x, y);
      ref.backward(0.5f);
      m.forward(x, y);
      m.backward(0.5f);
    }
    const auto& units = m.grad_units();
    ASSERT_EQ(units.size(), size_t(cfg.n_layer + 2)) << preset;
    ASSERT_EQ(hooks.order.size(), 2 * units.size()) << preset;
    int64_t covered = 0;
    for (size_t u = 0; u < units.size(); ++u) {
      EXPECT_EQ(hooks.order[u], units[u]) << preset << " unit " << u;
      EXPECT_EQ(hooks.order[units.size() + u], units[u]) << preset << " unit " << u;
      if (u > 0) {
        EXPECT_EQ(units[u].second, units[u - 1].first) << "descending, contiguous";
      }
      covered += units[u].second - units[u].first;
      const Tensor& mine = hooks.regions.at(units[u].first);
      const Tensor want = ref.grad_buffer().slice(0, units[u].first, units[u].second);
      EXPECT_EQ(std::memcmp(mine.raw(), want.raw(), want.nbytes()), 0) << preset << " unit " << u;
    }
    EXPECT_EQ(units.back().first, 0);
    EXPECT_EQ(covered, ref.param_buffer().numel()) << preset;
    EXPECT_THROW(m.set_grad_hooks(&hooks, false), Error) << "the storage cannot come back";
    m.set_grad_hooks(nullptr);
    const Tensor x = batch(2, 16, 257, 1);
    m.forward(x, x);
    EXPECT_THROW(m.backward(), Error) << "no hooks to give the gradients to";
  }
}

TEST(Transformer, BadInputsAreClearErrors) {
  Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 1);
  Tensor x = batch(1, 8, 257, 1), y = batch(1, 8, 257, 2);
  x.data<int32_t>()[5] = 300;
  EXPECT_NE(error_of([&] { m.forward(x, y); }).find("tokens: id 300 at batch 0, position 5 is outside the vocabulary [0, 257)"),
            std::string::npos);
  EXPECT_NE(error_of([&] { m.backward(); }).find("backward() needs a forward"), std::string::npos);
  EXPECT_NE(error_of([&] { m.forward(batch(1, 200, 257, 1), batch(1, 200, 257, 1)); })
                .find("sequence length 200 exceeds max_seq_len 128"),
            std::string::npos);
  EXPECT_NE(error_of([&] { m.forward(batch(1, 8, 257, 1), batch(1, 9, 257, 1)); }).find("must have the shape of tokens"),
            std::string::npos);
}

TEST(Transformer, PeakMemoryComesFromTheAllocator) {
  Transformer m(model_preset("gpt2-tiny"), make_backend("cpu"), 1);
  const int64_t params_bytes = m.param_buffer().numel() * 4;
  const int64_t before = m.memory().current_bytes;
  EXPECT_EQ(before, 2 * params_bytes);  // parameters and gradients
  m.forward(batch(2, 32, 257, 1), batch(2, 32, 257, 2));
  const int64_t after_plan = m.memory().current_bytes;
  EXPECT_GT(after_plan, before);  // activations planned
  m.backward();
  m.forward(batch(2, 32, 257, 3), batch(2, 32, 257, 4));  // same shape: no new allocation
  EXPECT_EQ(m.memory().current_bytes, after_plan);
  EXPECT_GE(m.memory().peak_bytes, after_plan);
}

}  // namespace
}  // namespace nuri
