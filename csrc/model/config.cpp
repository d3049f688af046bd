// Model presets and validation. Messages name the field, its value and what would be valid.
#include "nuri/model/config.h"

#include <cmath>
#include <sstream>

#include "nuri/core/error.h"

namespace nuri {

const char* norm_name(NormKind k) { return k == NormKind::layernorm ? "layernorm" : "rmsnorm"; }
const char* position_name(PositionKind k) { return k == PositionKind::learned ? "learned" : "rope"; }
const char* mlp_name(MlpKind k) { return k == MlpKind::gelu ? "gelu" : "swiglu"; }

void ModelConfig::validate() const {
  NURI_CHECK(vocab_size > 0, "vocab_size (", vocab_size, ") must be positive");
  NURI_CHECK(vocab_size < (int64_t(1) << 31), "vocab_size (", vocab_size,
             ") must fit token ids in int32");
  NURI_CHECK(d_model > 0, "d_model (", d_model, ") must be positive");
  NURI_CHECK(n_layer > 0, "n_layer (", n_layer, ") must be positive");
  NURI_CHECK(n_head > 0, "n_head (", n_head, ") must be positive");
  NURI_CHECK(d_model % n_head == 0, "n_head (", n_head, ") must divide d_model (", d_model, ")");
  NURI_CHECK(n_kv_head > 0 && n_head % n_kv_head == 0, "n_kv_head (", n_kv_head,
             ") must divide n_head (", n_head, ")");
  NURI_CHECK(d_ff > 0, "d_ff (", d_ff, ") must be positive");
  NURI_CHECK(max_seq_len > 0, "max_seq_len (", max_seq_len, ") must be positive");
  NURI_CHECK(norm_eps > 0.f && std::isfinite(norm_eps), "norm_eps (", norm_eps,
             ") must be a positive number");
  if (position == PositionKind::rope) {
    NURI_CHECK(head_dim() % 2 == 0, "rope needs an even head dim; d_model / n_head = ", d_model,
               " / ", n_head, " = ", head_dim());
    NURI_CHECK(rope_theta > 0.f && std::isfinite(rope_theta), "rope_theta (", rope_theta,
               ") must be a positive number");
  }
}

int64_t ModelConfig::num_params() const {
  const int64_t c = d_model, d = head_dim(), qkv = (n_head + 2 * n_kv_head) * d;
  const int64_t norm_params = norm == NormKind::layernorm && bias ? 2 * c : c;
  int64_t layer = norm_params * 2;
  layer += qkv * c + (bias ? qkv : 0);                 // q, k, v projections
  layer += n_head * d * c + (bias ? c : 0);            // output projection
  const int64_t up = mlp == MlpKind::swiglu ? 2 * d_ff : d_ff;
  layer += up * c + (bias ? up : 0) + d_ff * c + (bias ? c : 0);
  int64_t n = vocab_size * c + n_layer * layer + norm_params;
  if (position == PositionKind::learned) n += max_seq_len * c;
  if (!tied_embeddings) n += vocab_size * c;
  return n;
}

std::string ModelConfig::summary() const {
  std::ostringstream os;
  os << "vocab_size=" << vocab_size << " d_model=" << d_model << " n_layer=" << n_layer
     << " n_head=" << n_head << " n_kv_head=" << n_kv_head << " d_ff=" << d_ff
     << " max_seq_len=" << max_seq_len << " norm=" << norm_name(norm)
     << " position=" << position_name(position) << " mlp=" << mlp_name(mlp)
     << " bias=" << (bias ? "true" : "false") << " tied=" << (tied_embeddings ? "true" : "false");
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
  return {"gpt2-tiny", "gpt2-124M", "gpt2-350M", "gpt2-774M", "gpt2-1558M", "llama-tiny", "llama-1B"};
}

ModelConfig model_preset(const std::string& name) {
  if (name == "gpt2-124M") return gpt2(768, 12, 12);
  if (name == "gpt2-350M") return gpt2(1024, 24, 16);
  if (name == "gpt2-774M") return gpt2(1280, 36, 20);
  if (name == "gpt2-1558M") return gpt2(1600, 48, 25);
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

}  // namespace nuri
