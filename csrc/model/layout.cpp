// The units' parameter declarations (csrc/model/units.h): names, shapes, init rules and the
// views they bind to, for GPT-2 names (gelu models) and Llama names (swiglu models). Fused
// products rely on adjacency: q_proj, k_proj, v_proj are consecutive (and their biases too),
// gate_proj precedes up_proj.
#include <cmath>

#include "model/units.h"

namespace nuri {

namespace model {

namespace {

// Declares one unit's parameters in order, each bound to a field or taking part in a fused view.
class Declarer {
 public:
  Declarer(const ModelConfig& cfg, int64_t& offset, UnitDecl& unit)
      : cfg_(cfg), offset_(offset), u_(unit) {}

  void add(std::string name, Shape shape, InitKind init, Field field, float std = 0.02f,
           int64_t init_rows = -1) {
    ParamSpec p;
    p.name = std::move(name);
    p.shape = std::move(shape);
    p.offset = offset_;
    p.decay = p.shape.size() >= 2;  // matrices only
    p.init = init;
    p.init_std = std;
    p.init_rows = init_rows;
    offset_ += p.numel();
    u_.params.push_back(std::move(p));
    u_.fields.push_back(field);
  }
  void matrix(const std::string& name, int64_t rows, int64_t cols, Field f, float std = 0.02f) {
    add(name, {rows, cols}, InitKind::normal, f, std);
  }
  void zeros(const std::string& name, int64_t n, Field f) { add(name, {n}, InitKind::zeros, f); }
  void norm(const std::string& prefix, Field w, Field b) {
    add(prefix + ".weight", {cfg_.d_model}, InitKind::ones, w);
    if (cfg_.norm == NormKind::layernorm && cfg_.bias) zeros(prefix + ".bias", cfg_.d_model, b);
  }
  /// The next `names` parameters, consecutive, also viewed as one tensor of `shape` at `field`.
  void fused(Field field, const std::vector<std::pair<std::string, int64_t>>& rows, int64_t cols,
             float std = 0.02f) {
    const size_t first = u_.params.size();
    int64_t total = 0;
    for (const auto& [name, n] : rows) {
      if (cols > 0) matrix(name, n, cols, nullptr, std);
      else zeros(name, n, nullptr);
      total += n;
    }
    u_.fused.push_back({field, first, cols > 0 ? Shape{total, cols} : Shape{total}});
  }

 private:
  const ModelConfig& cfg_;
  int64_t& offset_;
  UnitDecl& u_;
};

void declare_embedding(const ModelConfig& cfg, Declarer& d) {
  const bool gpt2 = cfg.mlp == MlpKind::gelu;
  d.add(gpt2 ? "wte.weight" : "model.embed_tokens.weight", {cfg.padded_vocab(), cfg.d_model},
        InitKind::normal, &UnitWeights::wte, 0.02f, cfg.vocab_size);
  if (cfg.position == PositionKind::learned) {
    d.matrix(gpt2 ? "wpe.weight" : "model.embed_positions.weight", cfg.max_seq_len, cfg.d_model,
             &UnitWeights::wpe);
  }
}

void declare_block(const ModelConfig& cfg, int64_t l, Declarer& d) {
  const int64_t c = cfg.d_model, f = cfg.d_ff;
  const int64_t hq = cfg.n_head * cfg.head_dim(), hkv = cfg.n_kv_head * cfg.head_dim();
  // GPT-2's scaled init for the projections that write into the residual stream.
  const float resid_std = 0.02f / std::sqrt(2.f * float(cfg.n_layer));
  using W = UnitWeights;
  if (cfg.mlp == MlpKind::gelu) {
    const std::string p = "h." + std::to_string(l) + ".";
    d.norm(p + "ln_1", &W::ln1_w, &W::ln1_b);
    d.matrix(p + "attn.c_attn.weight", hq + 2 * hkv, c, &W::qkv_w);
    if (cfg.bias) d.zeros(p + "attn.c_attn.bias", hq + 2 * hkv, &W::qkv_b);
    d.matrix(p + "attn.c_proj.weight", c, hq, &W::o_w, resid_std);
    if (cfg.bias) d.zeros(p + "attn.c_proj.bias", c, &W::o_b);
    d.norm(p + "ln_2", &W::ln2_w, &W::ln2_b);
    d.matrix(p + "mlp.c_fc.weight", f, c, &W::fc_w);
    if (cfg.bias) d.zeros(p + "mlp.c_fc.bias", f, &W::fc_b);
    d.matrix(p + "mlp.c_proj.weight", c, f, &W::proj_w, resid_std);
    if (cfg.bias) d.zeros(p + "mlp.c_proj.bias", c, &W::proj_b);
    return;
  }
  const std::string p = "model.layers." + std::to_string(l) + ".";
  d.norm(p + "input_layernorm", &W::ln1_w, &W::ln1_b);
  // q, k, v consecutive: one [(H + 2Hkv)·D, C] view
  d.fused(&W::qkv_w, {{p + "self_attn.q_proj.weight", hq}, {p + "self_attn.k_proj.weight", hkv},
                      {p + "self_attn.v_proj.weight", hkv}}, c);
  if (cfg.bias) {
    d.fused(&W::qkv_b, {{p + "self_attn.q_proj.bias", hq}, {p + "self_attn.k_proj.bias", hkv},
                        {p + "self_attn.v_proj.bias", hkv}}, 0);
  }
  d.matrix(p + "self_attn.o_proj.weight", c, hq, &W::o_w, resid_std);
  if (cfg.bias) d.zeros(p + "self_attn.o_proj.bias", c, &W::o_b);
  d.norm(p + "post_attention_layernorm", &W::ln2_w, &W::ln2_b);
  // gate, up consecutive: one [2F, C] view whose output is [gate | up]
  d.fused(&W::fc_w, {{p + "mlp.gate_proj.weight", f}, {p + "mlp.up_proj.weight", f}}, c);
  if (cfg.bias) d.fused(&W::fc_b, {{p + "mlp.gate_proj.bias", f}, {p + "mlp.up_proj.bias", f}}, 0);
  d.matrix(p + "mlp.down_proj.weight", c, f, &W::proj_w, resid_std);
  if (cfg.bias) d.zeros(p + "mlp.down_proj.bias", c, &W::proj_b);
}

void declare_head(const ModelConfig& cfg, Declarer& d) {
  const bool gpt2 = cfg.mlp == MlpKind::gelu;
  d.norm(gpt2 ? "ln_f" : "model.norm", &UnitWeights::lnf_w, &UnitWeights::lnf_b);
  if (!cfg.tied_embeddings) {
    d.add("lm_head.weight", {cfg.padded_vocab(), cfg.d_model}, InitKind::normal,
          &UnitWeights::lm_head, 0.02f, cfg.vocab_size);
  }
}

}  // namespace

std::vector<UnitDecl> model_units(const ModelConfig& cfg) {
  cfg.validate();
  std::vector<UnitDecl> units;
  int64_t offset = 0;
  auto unit = [&](UnitKind kind, int64_t layer, std::string name, auto&& declare) {
    UnitDecl u;
    u.kind = kind;
    u.layer = layer;
    u.name = std::move(name);
    u.lo = offset;
    Declarer d(cfg, offset, u);
    declare(d);
    u.hi = offset;
    units.push_back(std::move(u));
  };
  unit(UnitKind::embedding, -1, "embedding", [&](Declarer& d) { declare_embedding(cfg, d); });
  for (int64_t l = 0; l < cfg.n_layer; ++l) {
    unit(UnitKind::block, l, "block " + std::to_string(l),
         [&](Declarer& d) { declare_block(cfg, l, d); });
  }
  unit(UnitKind::head, -1, "head", [&](Declarer& d) { declare_head(cfg, d); });
  return units;
}

ViewFn views_of(const Tensor& flat) {
  return [flat](int64_t offset, const Shape& shape) {
    return flat.slice(0, offset, offset + shape_numel(shape)).view(shape);
  };
}

ViewFn views_of_region(const Tensor& region, int64_t lo, int64_t hi) {
  return [region, lo, hi](int64_t offset, const Shape& shape) {
    const int64_t n = shape_numel(shape);
    if (offset < lo || offset + n > hi) return Tensor();
    return region.slice(0, offset - lo, offset - lo + n).view(shape);
  };
}

UnitWeights bind_unit(const UnitDecl& u, const ViewFn& view) {
  UnitWeights w;
  for (size_t i = 0; i < u.params.size(); ++i) {
    if (u.fields[i]) w.*u.fields[i] = view(u.params[i].offset, u.params[i].shape);
  }
  for (const auto& f : u.fused) w.*f.field = view(u.params[f.first].offset, f.shape);
  return w;
}

void named_views(const UnitDecl& u, const ViewFn& view, std::vector<NamedTensor>& named) {
  for (const ParamSpec& p : u.params) named.push_back({p.name, view(p.offset, p.shape), p.decay});
}

}  // namespace model

std::vector<ParamSpec> param_layout(const ModelConfig& cfg) {
  std::vector<ParamSpec> out;
  for (const model::UnitDecl& u : model::model_units(cfg)) {
    out.insert(out.end(), u.params.begin(), u.params.end());
  }
  return out;
}

}  // namespace nuri
