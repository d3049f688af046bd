// Decoder-only transformer configuration: GPT-2 and Llama-style models are points in one space
// (norm, position encoding, MLP, bias, tied embeddings). Parameter names follow the Hugging Face
// names of the family picked by the MLP: gelu -> GPT-2 names, swiglu -> Llama names.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace nuri {

class Settings;

enum class NormKind { layernorm, rmsnorm };
enum class PositionKind { learned, rope };
enum class MlpKind { gelu, swiglu };

struct ModelConfig {
  int64_t vocab_size = 50257;
  int64_t d_model = 768;
  int64_t n_layer = 12;
  int64_t n_head = 12;
  int64_t n_kv_head = 12;  ///< grouped-query attention when < n_head; must divide n_head
  int64_t d_ff = 3072;     ///< hidden width of the MLP (per branch for swiglu)
  int64_t max_seq_len = 1024;
  NormKind norm = NormKind::layernorm;
  float norm_eps = 1e-5f;
  PositionKind position = PositionKind::learned;
  float rope_theta = 10000.f;
  MlpKind mlp = MlpKind::gelu;
  bool bias = true;             ///< biases in linear layers (and layernorm)
  bool tied_embeddings = true;  ///< the LM head reuses the token embedding

  int64_t head_dim() const { return d_model / n_head; }
  /// vocab_size rounded up to a multiple of 64 (the logits' width; padded columns never count).
  int64_t padded_vocab() const { return (vocab_size + 63) / 64 * 64; }
  /// Throws nuri::Error with an actionable message for the first inconsistent field.
  void validate() const;
  /// Number of parameters (padded embedding rows not counted).
  int64_t num_params() const;
  /// One line: "d_model=768 n_layer=12 ...".
  std::string summary() const;
};

/// The settings table of ModelConfig (nuri/core/settings.h): every field's key, kind, range and
/// help; validate() checks the ranges from it.
const Settings& model_settings();

/// The config as a JSON object of every field (the "model" table of a run config), and back:
/// unknown keys, wrong types and out-of-range values are ConfigErrors naming the key (prefixed
/// by `origin`); the result is validated.
std::string model_config_to_json(const ModelConfig& c, int indent = -1);
ModelConfig model_config_from_json(const std::string& json, const std::string& origin = "");

/// Named presets: demo (nuri-train's default: 3.3M parameters, byte vocabulary), gpt2-tiny,
/// gpt2-124M, gpt2-350M, gpt2-774M, gpt2-1558M, llama-tiny, llama-1B (TinyLlama-1.1B's shape). Throws nuri::Error listing the names otherwise.
ModelConfig model_preset(const std::string& name);
std::vector<std::string> model_preset_names();

const char* norm_name(NormKind k);
const char* position_name(PositionKind k);
const char* mlp_name(MlpKind k);

}  // namespace nuri
