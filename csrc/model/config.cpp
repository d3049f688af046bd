// Model presets and validation. Messages name the field, its value and what would be valid.
#include "nuri/model/config.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/json_checked.h"
#include "nuri/core/error.h"
#include "nuri/core/settings.h"

namespace nuri {

const Settings& model_settings() {
  static const Settings s = [] {
    Settings t;
    using C = ModelConfig;
    t.add("vocab_size", &C::vocab_size, "token ids the model embeds and predicts")
        .at_least(1).at_most(double((int64_t(1) << 31) - 1));
    t.add("d_model", &C::d_model, "width of the residual stream").at_least(1);
    t.add("n_layer", &C::n_layer, "transformer blocks").at_least(1);
    // Setting n_head on a model with full attention keeps it full: n_kv_head follows (GPT-2
    // with 24 heads stays GPT-2, not grouped-query with the preset's 12 kv heads). A grouped-
    // query model's n_kv_head stays, and n_kv_head set after n_head is what it says.
    t.custom(
         "n_head", SettingKind::integer, "attention heads (query heads)",
         [](const void* o) { return SettingValue(static_cast<const C*>(o)->n_head); },
         [](void* o, const SettingValue& v) {
           auto* c = static_cast<C*>(o);
           const int64_t heads = std::get<int64_t>(v);
           if (c->n_kv_head == c->n_head) c->n_kv_head = heads;
           c->n_head = heads;
         })
        .at_least(1)
        .at_most(double(std::numeric_limits<int64_t>::max()));
    t.add("n_kv_head", &C::n_kv_head,
          "key/value heads: grouped-query attention when fewer than n_head").at_least(1);
    t.add("d_ff", &C::d_ff, "hidden width of the MLP (per branch for swiglu)").at_least(1);
    t.add("max_seq_len", &C::max_seq_len, "longest sequence (learned positions' rows)")
        .at_least(1);
    t.choice("norm", &C::norm, {{"layernorm", NormKind::layernorm}, {"rmsnorm", NormKind::rmsnorm}},
             "normalization");
    t.add("norm_eps", &C::norm_eps, "epsilon of the normalization").above(0);
    t.choice("position", &C::position,
             {{"learned", PositionKind::learned}, {"rope", PositionKind::rope}},
             "position encoding");
    t.add("rope_theta", &C::rope_theta, "RoPE base frequency").above(0);
    t.choice("rope_scaling", &C::rope_scaling,
             {{"none", RopeScalingKind::none},
              {"linear", RopeScalingKind::linear},
              {"llama3", RopeScalingKind::llama3}},
             "RoPE frequencies rescaled for a longer context: none, linear, llama3");
    t.add("rope_factor", &C::rope_factor, "RoPE scaling factor (linear, llama3)").above(0);
    t.add("rope_low_freq_factor", &C::rope_low_freq_factor, "llama3 RoPE scaling: low_freq_factor")
        .above(0);
    t.add("rope_high_freq_factor", &C::rope_high_freq_factor,
          "llama3 RoPE scaling: high_freq_factor")
        .above(0);
    t.add("rope_original_max_len", &C::rope_original_max_len,
          "llama3 RoPE scaling: the context first trained on (original_max_position_embeddings)")
        .at_least(1);
    t.choice("mlp", &C::mlp, {{"gelu", MlpKind::gelu}, {"swiglu", MlpKind::swiglu}},
             "MLP: gelu (GPT-2 names) or swiglu (Llama names)");
    t.add("bias", &C::bias, "biases in linear layers (and layernorm)");
    t.add("qkv_bias", &C::qkv_bias, "biases on the q, k and v projections only (Qwen2)");
    t.add("tied_embeddings", &C::tied_embeddings, "the LM head reuses the token embedding");
    t.add("head_dim", &C::head_dim_override, "width of an attention head; 0: d_model / n_head")
        .at_least(0);
    t.add("sliding_window", &C::sliding_window,
          "sliding-window attention's window; 0: none (longer sequences are refused)")
        .at_least(0);
    return t;
  }();
  return s;
}

const char* norm_name(NormKind k) { return k == NormKind::layernorm ? "layernorm" : "rmsnorm"; }
const char* position_name(PositionKind k) { return k == PositionKind::learned ? "learned" : "rope"; }
const char* mlp_name(MlpKind k) { return k == MlpKind::gelu ? "gelu" : "swiglu"; }

namespace {
const Schema& model_schema() {  // the model's fields as the top level of a JSON object
  static const Schema s{{"", "model", model_settings()}};
  return s;
}
}  // namespace

std::string model_config_to_json(const ModelConfig& c, int indent) {
  return settings_to_json(model_schema(), &c, indent);
}

ModelConfig model_config_from_json(const std::string& json, const std::string& origin) {
  ModelConfig c;
  settings_from_json(model_schema(), &c, json, origin);
  try {
    c.validate();
  } catch (const Error& e) {
    throw ConfigError((origin.empty() ? "" : origin + ": ") + e.what());
  }
  return c;
}

namespace {
/// The parameter count in N: int64_t, or double to see whether the count fits int64_t.
template <class N>
N count_params(const ModelConfig& m) {
  const N c = N(m.d_model), d = N(m.head_dim()), qkv = (N(m.n_head) + 2 * N(m.n_kv_head)) * d;
  const N norm_params = m.norm == NormKind::layernorm && m.bias ? 2 * c : c;
  N layer = norm_params * 2;
  layer += qkv * c + (m.bias || m.qkv_bias ? qkv : 0);  // q, k, v projections
  layer += N(m.n_head) * d * c + (m.bias ? c : 0);     // output projection
  const N up = m.mlp == MlpKind::swiglu ? 2 * N(m.d_ff) : N(m.d_ff);
  layer += up * c + (m.bias ? up : 0) + N(m.d_ff) * c + (m.bias ? c : 0);
  N n = N(m.vocab_size) * c + N(m.n_layer) * layer + norm_params;
  if (m.position == PositionKind::learned) n += N(m.max_seq_len) * c;
  if (!m.tied_embeddings) n += N(m.vocab_size) * c;
  return n;
}
}  // namespace

void ModelConfig::validate() const {
  model_settings().check_bounds(this, "");  // each field's range (numbers finite)
  NURI_CHECK(head_dim_override > 0 || d_model % n_head == 0, "n_head (", n_head,
             ") must divide d_model (", d_model, "), or head_dim must be given");
  NURI_CHECK(n_head % n_kv_head == 0, "n_kv_head (", n_kv_head, ") must divide n_head (", n_head,
             "): set n_kv_head to a divisor of n_head (n_head itself for full attention, fewer "
             "for grouped-query attention)");
  // Element counts and byte sizes are int64_t: 2^56 parameters (a quarter of an exabyte in
  // f32, with room for the sizes) is far beyond any machine, and keeps every one of them exact.
  const double params = count_params<double>(*this);
  NURI_CHECK(params < 0x1p56, "the model would have ", params, " parameters (", summary(),
             "), too many to count in 64 bits: a field is far too large");
  if (position == PositionKind::rope) {
    NURI_CHECK(head_dim() % 2 == 0, "rope needs an even head dim, got ", head_dim(),
               head_dim_override > 0 ? " (head_dim)" : " (d_model / n_head)");
    check_rope("model config", rope());
  } else {
    NURI_CHECK(rope_scaling == RopeScalingKind::none, "rope_scaling ",
               rope_scaling_name(rope_scaling), " needs position = rope");
  }
  NURI_CHECK(!(qkv_bias && bias), "qkv_bias adds biases to q, k and v only; with bias = true "
             "every linear layer has them already: set one of the two");
  NURI_CHECK(!(qkv_bias && mlp == MlpKind::gelu), "qkv_bias is for Llama-style models (mlp = "
             "swiglu); GPT-2-style models take bias");
}

Rope ModelConfig::rope() const {
  Rope r;
  r.theta = double(rope_theta);
  r.scaling = rope_scaling;
  r.factor = double(rope_factor);
  r.low_freq_factor = double(rope_low_freq_factor);
  r.high_freq_factor = double(rope_high_freq_factor);
  r.original_context = double(rope_original_max_len);
  return r;
}

void check_sliding_window(const ModelConfig& cfg, int64_t seq_len) {
  NURI_CHECK(cfg.sliding_window == 0 || seq_len <= cfg.sliding_window, "sequence length ",
             seq_len, " is longer than the model's sliding window (", cfg.sliding_window,
             "): nuri has no sliding-window attention and would attend to the whole prefix; "
             "train and evaluate with seq_len <= ", cfg.sliding_window);
}


int64_t ModelConfig::num_params() const { return count_params<int64_t>(*this); }

std::string ModelConfig::summary() const {
  std::ostringstream os;
  os << "vocab_size=" << vocab_size << " d_model=" << d_model << " n_layer=" << n_layer
     << " n_head=" << n_head << " n_kv_head=" << n_kv_head << " d_ff=" << d_ff
     << " max_seq_len=" << max_seq_len << " norm=" << norm_name(norm)
     << " position=" << position_name(position) << " mlp=" << mlp_name(mlp)
     << " bias=" << (bias ? "true" : "false") << " tied=" << (tied_embeddings ? "true" : "false");
  if (qkv_bias) os << " qkv_bias=true";
  if (head_dim_override > 0) os << " head_dim=" << head_dim_override;
  if (rope_scaling != RopeScalingKind::none) {
    os << " rope_scaling=" << rope_scaling_name(rope_scaling) << " rope_factor=" << rope_factor;
  }
  if (sliding_window > 0) os << " sliding_window=" << sliding_window;
  return os.str();
}

namespace {

ModelConfig gpt2(int64_t d, int64_t layers, int64_t heads) {
  ModelConfig c;  // defaults are GPT-2's
  c.d_model = d;
  c.n_layer = layers;
  c.n_head = c.n_kv_head = heads;
  c.d_ff = 4 * d;
  return c;
}

ModelConfig llama(int64_t vocab, int64_t d, int64_t layers, int64_t heads, int64_t kv,
                  int64_t ff, int64_t seq) {
  ModelConfig c;
  c.vocab_size = vocab;
  c.d_model = d;
  c.n_layer = layers;
  c.n_head = heads;
  c.n_kv_head = kv;
  c.d_ff = ff;
  c.max_seq_len = seq;
  c.norm = NormKind::rmsnorm;
  c.position = PositionKind::rope;
  c.mlp = MlpKind::swiglu;
  c.bias = false;
  c.tied_embeddings = false;
  return c;
}

}  // namespace

std::vector<std::string> model_preset_names() {
  return {"demo",       "gpt2-tiny",  "gpt2-124M", "gpt2-350M",
          "gpt2-774M",  "gpt2-1558M", "llama-tiny", "llama-1B"};
}

ModelConfig model_preset(const std::string& name) {
  if (name == "gpt2-124M") return gpt2(768, 12, 12);
  if (name == "gpt2-350M") return gpt2(1024, 24, 16);
  if (name == "gpt2-774M") return gpt2(1280, 36, 20);
  if (name == "gpt2-1558M") return gpt2(1600, 48, 25);
  if (name == "demo") {  // nuri-train's default: GPT-2 style, byte vocabulary, 3.3M parameters
    ModelConfig c = gpt2(256, 4, 8);
    c.vocab_size = 257;
    c.max_seq_len = 256;
    return c;
  }
  if (name == "gpt2-tiny") {  // for tests: byte-level vocabulary, 2 small layers
    ModelConfig c = gpt2(64, 2, 4);
    c.vocab_size = 257;
    c.max_seq_len = 128;
    return c;
  }
  if (name == "llama-tiny") {
    ModelConfig c = llama(257, 64, 2, 4, 2, 176, 128);
    c.norm_eps = 1e-5f;
    return c;
  }
  if (name == "llama-1B") {  // TinyLlama-1.1B: 22 layers, GQA 32/4, SwiGLU 5632
    ModelConfig c = llama(32000, 2048, 22, 32, 4, 5632, 2048);
    c.norm_eps = 1e-5f;
    return c;
  }
  std::string list;
  for (const auto& n : model_preset_names()) list += (list.empty() ? "" : ", ") + n;
  NURI_CHECK(false, "unknown model preset '", name, "'; presets: ", list);
}

bool context_setting(const std::string& key) {
  static const char* const keys[] = {"max_seq_len",          "rope_theta",
                                     "rope_scaling",         "rope_factor",
                                     "rope_low_freq_factor", "rope_high_freq_factor",
                                     "rope_original_max_len"};
  return std::find(std::begin(keys), std::end(keys), key) != std::end(keys);
}

std::vector<ModelSettingDifference> model_config_differences(const std::string& recorded,
                                                             const ModelConfig& config) {
  const nlohmann::json theirs = json_checked::parse(recorded);
  const nlohmann::ordered_json mine = nlohmann::ordered_json::parse(model_config_to_json(config));
  std::vector<ModelSettingDifference> out;
  for (const auto& [key, value] : mine.items()) {
    if (!theirs.contains(key)) {
      out.push_back({key, "", value.dump()});
      continue;
    }
    const nlohmann::json& t = theirs[key];
    const bool same = t.is_number() && value.is_number()
                          ? float(t.get<double>()) == float(value.get<double>())
                          : t == nlohmann::json(value);
    if (!same) out.push_back({key, t.dump(), value.dump()});
  }
  return out;
}

}  // namespace nuri
