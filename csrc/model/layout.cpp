// The units' parameter declarations (csrc/model/units.h): names, shapes, init rules and the
// views they bind to, for GPT-2 names (gelu models) and Llama names (swiglu models). Fused
// products rely on adjacency: q_proj, k_proj, v_proj are consecutive (and their biases too),
// gate_proj precedes up_proj.
#include <cmath>

#include "model/units.h"

namespace nuri {

namespace model {

namespace {

// How tensor parallelism splits a tensor: the dimension (-1: not at all) and its parts along it
// (empty: one).
struct Split {
  int dim = -1;
  std::vector<int64_t> parts;
};

// Declares one unit's parameters in order, each bound to a field or taking part in a fused view.
// Shapes are logical (the whole model's); a tensor-parallel rank holds the slice `split` names.
class Declarer {
 public:
  Declarer(const ModelConfig& cfg, TensorParallelRank tp, int64_t& offset, UnitDecl& unit)
      : cfg_(cfg), tp_(tp), offset_(offset), u_(unit) {}

  static Split rows(std::vector<int64_t> parts = {}) { return {0, std::move(parts)}; }
  static Split cols() { return {1, {}}; }

  void add(std::string name, Shape logical, InitKind init, Field field, float std = 0.02f,
           int64_t init_rows = -1, Split split = {}) {
    ParamSpec p;
    p.name = std::move(name);
    p.logical = logical;
    p.shape = std::move(logical);
    p.split_dim = split.dim;
    p.parts = std::move(split.parts);
    p.tp = tp_;
    if (split.dim >= 0) p.shape[size_t(split.dim)] /= tp_.size;  // check_tensor_parallel: exact
    p.offset = offset_;
    p.decay = p.shape.size() >= 2;  // matrices only
    p.init = init;
    p.init_std = std;
    p.init_rows = init_rows;
    offset_ += p.numel();
    u_.params.push_back(std::move(p));
    u_.fields.push_back(field);
  }
  void matrix(const std::string& name, int64_t rows, int64_t cols, Field f, float std = 0.02f,
              Split split = {}) {
    add(name, {rows, cols}, InitKind::normal, f, std, -1, std::move(split));
  }
  void zeros(const std::string& name, int64_t n, Field f, Split split = {}) {
    add(name, {n}, InitKind::zeros, f, 0.02f, -1, std::move(split));
  }
  void norm(const std::string& prefix, Field w, Field b) {  // whole on every rank
    add(prefix + ".weight", {cfg_.d_model}, InitKind::ones, w);
    u_.params.back().norm = true;
    if (cfg_.norm == NormKind::layernorm && cfg_.bias) {
      zeros(prefix + ".bias", cfg_.d_model, b);
      u_.params.back().norm = true;
    }
  }
  /// The next `rows` parameters, consecutive, also viewed as one tensor at `field`: each split
  /// by rows (a rank's q, k, v or gate, up slices side by side).
  void fused(Field field, const std::vector<std::pair<std::string, int64_t>>& rows, int64_t cols,
             float std = 0.02f) {
    const size_t first = u_.params.size();
    int64_t total = 0;
    for (const auto& [name, n] : rows) {
      if (cols > 0) matrix(name, n, cols, nullptr, std, Declarer::rows());
      else zeros(name, n, nullptr, Declarer::rows());
      total += n / tp_.size;
    }
    u_.fused.push_back({field, first, cols > 0 ? Shape{total, cols} : Shape{total}});
  }

 private:
  const ModelConfig& cfg_;
  TensorParallelRank tp_;
  int64_t& offset_;
  UnitDecl& u_;
};

// wte_only: the last pipeline stage's copy for its tied head (no position table).
void declare_embedding(const ModelConfig& cfg, Declarer& d, bool wte_only = false) {
  const bool gpt2 = cfg.mlp == MlpKind::gelu;
  d.add(gpt2 ? "wte.weight" : "model.embed_tokens.weight", {cfg.padded_vocab(), cfg.d_model},
        InitKind::normal, &UnitWeights::wte, 0.02f, cfg.vocab_size, Declarer::rows());
  if (cfg.position == PositionKind::learned && !wte_only) {
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
  using D = Declarer;
  if (cfg.mlp == MlpKind::gelu) {
    const std::string p = "h." + std::to_string(l) + ".";
    d.norm(p + "ln_1", &W::ln1_w, &W::ln1_b);
    // c_attn is q, k and v rows in one tensor: each part is split by heads
    d.matrix(p + "attn.c_attn.weight", hq + 2 * hkv, c, &W::qkv_w, 0.02f, D::rows({hq, hkv, hkv}));
    if (cfg.bias) d.zeros(p + "attn.c_attn.bias", hq + 2 * hkv, &W::qkv_b, D::rows({hq, hkv, hkv}));
    d.matrix(p + "attn.c_proj.weight", c, hq, &W::o_w, resid_std, D::cols());
    if (cfg.bias) d.zeros(p + "attn.c_proj.bias", c, &W::o_b);
    d.norm(p + "ln_2", &W::ln2_w, &W::ln2_b);
    d.matrix(p + "mlp.c_fc.weight", f, c, &W::fc_w, 0.02f, D::rows());
    if (cfg.bias) d.zeros(p + "mlp.c_fc.bias", f, &W::fc_b, D::rows());
    d.matrix(p + "mlp.c_proj.weight", c, f, &W::proj_w, resid_std, D::cols());
    if (cfg.bias) d.zeros(p + "mlp.c_proj.bias", c, &W::proj_b);
    return;
  }
  const std::string p = "model.layers." + std::to_string(l) + ".";
  d.norm(p + "input_layernorm", &W::ln1_w, &W::ln1_b);
  // q, k, v consecutive: one [(H + 2Hkv)·D, C] view
  d.fused(&W::qkv_w, {{p + "self_attn.q_proj.weight", hq}, {p + "self_attn.k_proj.weight", hkv},
                      {p + "self_attn.v_proj.weight", hkv}}, c);
  if (cfg.bias || cfg.qkv_bias) {
    d.fused(&W::qkv_b, {{p + "self_attn.q_proj.bias", hq}, {p + "self_attn.k_proj.bias", hkv},
                        {p + "self_attn.v_proj.bias", hkv}}, 0);
  }
  d.matrix(p + "self_attn.o_proj.weight", c, hq, &W::o_w, resid_std, D::cols());
  if (cfg.bias) d.zeros(p + "self_attn.o_proj.bias", c, &W::o_b);
  d.norm(p + "post_attention_layernorm", &W::ln2_w, &W::ln2_b);
  // gate, up consecutive: one [2F, C] view whose output is [gate | up]
  d.fused(&W::fc_w, {{p + "mlp.gate_proj.weight", f}, {p + "mlp.up_proj.weight", f}}, c);
  if (cfg.bias) d.fused(&W::fc_b, {{p + "mlp.gate_proj.bias", f}, {p + "mlp.up_proj.bias", f}}, 0);
  d.matrix(p + "mlp.down_proj.weight", c, f, &W::proj_w, resid_std, D::cols());
  if (cfg.bias) d.zeros(p + "mlp.down_proj.bias", c, &W::proj_b);
}

void declare_head(const ModelConfig& cfg, Declarer& d) {
  const bool gpt2 = cfg.mlp == MlpKind::gelu;
  d.norm(gpt2 ? "ln_f" : "model.norm", &UnitWeights::lnf_w, &UnitWeights::lnf_b);
  if (!cfg.tied_embeddings) {
    d.add("lm_head.weight", {cfg.padded_vocab(), cfg.d_model}, InitKind::normal,
          &UnitWeights::lm_head, 0.02f, cfg.vocab_size, Declarer::rows());
  }
}

}  // namespace

std::vector<UnitDecl> model_units(const ModelConfig& cfg, TensorParallelRank tp,
                                  PipelineStage stage) {
  cfg.validate();
  check_tensor_parallel(cfg, tp.size);
  NURI_CHECK(tp.rank >= 0 && tp.rank < tp.size, "tensor-parallel rank ", tp.rank,
             " is outside a group of ", tp.size);
  const int64_t first = stage.first, last = stage.last < 0 ? cfg.n_layer : stage.last;
  NURI_CHECK(0 <= first && first < last && last <= cfg.n_layer, "pipeline stage of blocks [",
             stage.first, ", ", stage.last, "): a stage holds a non-empty range of the model's ",
             cfg.n_layer, " blocks");
  const bool has_head = last == cfg.n_layer;
  // The last stage of a tied model reads wte for its head: it holds the embedding unit too.
  const bool has_embedding = first == 0 || (has_head && cfg.tied_embeddings);
  std::vector<UnitDecl> units;
  int64_t offset = 0;
  auto unit = [&](UnitKind kind, int64_t layer, std::string name, auto&& declare) {
    UnitDecl u;
    u.kind = kind;
    u.layer = layer;
    u.name = std::move(name);
    u.lo = offset;
    Declarer d(cfg, tp, offset, u);
    declare(d);
    u.hi = offset;
    units.push_back(std::move(u));
  };
  if (has_embedding) {
    unit(UnitKind::embedding, -1, "embedding",
         [&](Declarer& d) { declare_embedding(cfg, d, /*wte_only=*/first > 0); });
    if (first > 0) {  // the tied head's copy of wte
      for (ParamSpec& p : units.back().params) p.replica = true;
    }
  }
  for (int64_t l = first; l < last; ++l) {
    unit(UnitKind::block, l, "block " + std::to_string(l),
         [&](Declarer& d) { declare_block(cfg, l, d); });
  }
  if (has_head) unit(UnitKind::head, -1, "head", [&](Declarer& d) { declare_head(cfg, d); });
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

void check_tensor_parallel(const ModelConfig& cfg, int t) {
  NURI_CHECK(t >= 1, "tensor parallelism of ", t, " ranks: it must be at least 1");
  if (t == 1) return;
  auto divides = [&](int64_t n, const char* what, const char* fix) {
    NURI_CHECK(n % t == 0, "tensor parallelism of ", t, " ranks does not divide ", what, " (", n,
               "): each rank takes 1/", t, " of them; ", fix);
  };
  divides(cfg.n_head, "n_head", "choose a tp that divides the number of heads");
  divides(cfg.n_kv_head, "n_kv_head", "choose a tp that divides the number of key/value heads");
  divides(cfg.d_ff, "d_ff", "choose a tp that divides the MLP width");
  divides(cfg.padded_vocab(), "the padded vocabulary",
          "the vocabulary is padded to a multiple of 64: choose a tp that divides it");
  const int64_t last_lo = cfg.padded_vocab() / t * (t - 1);
  NURI_CHECK(last_lo < cfg.vocab_size, "tensor parallelism of ", t, " ranks: the last rank's "
             "vocabulary rows [", last_lo, ", ", cfg.padded_vocab(), ") would all be padding "
             "(vocab_size ", cfg.vocab_size, "); choose a smaller tp");
}

void ParamSpec::for_each_run(
    const std::function<void(int64_t local, int64_t logical, int64_t n)>& fn) const {
  if (!split()) {
    fn(0, 0, numel());
    return;
  }
  if (split_dim == 0) {  // whole rows: one run per part
    const int64_t cols = shape[0] > 0 ? numel() / shape[0] : 0;
    const std::vector<int64_t> ps = parts.empty() ? std::vector<int64_t>{logical[0]} : parts;
    int64_t local_row = 0, logical_row = 0;
    for (const int64_t part : ps) {
      const int64_t mine = part / tp.size;
      fn(local_row * cols, (logical_row + tp.rank * mine) * cols, mine * cols);
      local_row += mine;
      logical_row += part;
    }
    return;
  }
  NURI_CHECK(split_dim == 1 && shape.size() == 2 && parts.empty(), "parameter ", name,
             ": tensor parallelism splits dimension 0 (by parts) or 1 of a matrix");
  const int64_t cols = shape[1];
  for (int64_t r = 0; r < shape[0]; ++r) fn(r * cols, r * logical[1] + tp.rank * cols, cols);
}

std::vector<ParamSpec> param_layout(const ModelConfig& cfg, TensorParallelRank tp,
                                    PipelineStage stage) {
  std::vector<ParamSpec> out;
  for (const model::UnitDecl& u : model::model_units(cfg, tp, stage)) {
    out.insert(out.end(), u.params.begin(), u.params.end());
  }
  return out;
}

std::vector<std::pair<int64_t, int64_t>> unit_ranges(const ModelConfig& cfg, TensorParallelRank tp,
                                                     PipelineStage stage) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const model::UnitDecl& u : model::model_units(cfg, tp, stage)) out.push_back({u.lo, u.hi});
  return out;
}

}  // namespace nuri
