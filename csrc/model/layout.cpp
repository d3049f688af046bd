// The parameter layout: names, shapes, offsets and init rules, for GPT-2 names (gelu models) and
// Llama names (swiglu models). Fused products rely on adjacency: q_proj, k_proj, v_proj are
// consecutive (and their biases too), gate_proj precedes up_proj.
#include <cmath>

#include "nuri/model/transformer.h"

namespace nuri {

std::vector<ParamSpec> param_layout(const ModelConfig& cfg) {
  cfg.validate();
  const int64_t c = cfg.d_model, d = cfg.head_dim(), f = cfg.d_ff, vp = cfg.padded_vocab();
  const int64_t hq = cfg.n_head * d, hkv = cfg.n_kv_head * d;
  const bool gpt2 = cfg.mlp == MlpKind::gelu;
  const bool norm_bias = cfg.norm == NormKind::layernorm && cfg.bias;
  // GPT-2's scaled init for the projections that write into the residual stream.
  const float resid_std = 0.02f / std::sqrt(2.f * float(cfg.n_layer));
  std::vector<ParamSpec> out;
  int64_t offset = 0;
  auto add = [&](std::string name, Shape shape, InitKind init, float std = 0.02f,
                 int64_t init_rows = -1) {
    ParamSpec p;
    p.name = std::move(name);
    p.shape = std::move(shape);
    p.offset = offset;
    p.decay = p.shape.size() >= 2;  // matrices only
    p.init = init;
    p.init_std = std;
    p.init_rows = init_rows;
    offset += p.numel();
    out.push_back(std::move(p));
  };
  auto matrix = [&](const std::string& name, int64_t rows, int64_t cols, float std = 0.02f) {
    add(name, {rows, cols}, InitKind::normal, std);
  };
  auto vec0 = [&](const std::string& name, int64_t n) { add(name, {n}, InitKind::zeros); };
  auto norm = [&](const std::string& prefix) {
    add(prefix + ".weight", {c}, InitKind::ones);
    if (norm_bias) vec0(prefix + ".bias", c);
  };

  const std::string emb = gpt2 ? "wte.weight" : "model.embed_tokens.weight";
  add(emb, {vp, c}, InitKind::normal, 0.02f, cfg.vocab_size);
  if (cfg.position == PositionKind::learned) {
    matrix(gpt2 ? "wpe.weight" : "model.embed_positions.weight", cfg.max_seq_len, c);
  }
  for (int64_t l = 0; l < cfg.n_layer; ++l) {
    const std::string p = gpt2 ? "h." + std::to_string(l) + "." : "model.layers." + std::to_string(l) + ".";
    if (gpt2) {
      norm(p + "ln_1");
      matrix(p + "attn.c_attn.weight", hq + 2 * hkv, c);
      if (cfg.bias) vec0(p + "attn.c_attn.bias", hq + 2 * hkv);
      matrix(p + "attn.c_proj.weight", c, hq, resid_std);
      if (cfg.bias) vec0(p + "attn.c_proj.bias", c);
      norm(p + "ln_2");
      matrix(p + "mlp.c_fc.weight", f, c);
      if (cfg.bias) vec0(p + "mlp.c_fc.bias", f);
      matrix(p + "mlp.c_proj.weight", c, f, resid_std);
      if (cfg.bias) vec0(p + "mlp.c_proj.bias", c);
    } else {
      norm(p + "input_layernorm");
      matrix(p + "self_attn.q_proj.weight", hq, c);
      matrix(p + "self_attn.k_proj.weight", hkv, c);
      matrix(p + "self_attn.v_proj.weight", hkv, c);
      if (cfg.bias) {
        vec0(p + "self_attn.q_proj.bias", hq);
        vec0(p + "self_attn.k_proj.bias", hkv);
        vec0(p + "self_attn.v_proj.bias", hkv);
      }
      matrix(p + "self_attn.o_proj.weight", c, hq, resid_std);
      if (cfg.bias) vec0(p + "self_attn.o_proj.bias", c);
      norm(p + "post_attention_layernorm");
      matrix(p + "mlp.gate_proj.weight", f, c);
      matrix(p + "mlp.up_proj.weight", f, c);
      if (cfg.bias) {
        vec0(p + "mlp.gate_proj.bias", f);
        vec0(p + "mlp.up_proj.bias", f);
      }
      matrix(p + "mlp.down_proj.weight", c, f, resid_std);
      if (cfg.bias) vec0(p + "mlp.down_proj.bias", c);
    }
  }
  norm(gpt2 ? "ln_f" : "model.norm");
  if (!cfg.tied_embeddings) add("lm_head.weight", {vp, c}, InitKind::normal, 0.02f, cfg.vocab_size);
  return out;
}

}  // namespace nuri
