// Decoder-only transformer configuration: GPT-2 and Llama-style models are points in one space
// (norm, position encoding, MLP, bias, tied embeddings). Parameter names follow the Hugging Face
// names of the family picked by the MLP: gelu -> GPT-2 names, swiglu -> Llama names.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nuri/core/rope.h"

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
  /// RoPE's frequencies rescaled for a longer context (nuri/core/rope.h): none, linear (by
  /// rope_factor), llama3 (rope_factor, the low and high frequency factors, and the context
  /// the model was first trained on).
  RopeScalingKind rope_scaling = RopeScalingKind::none;
  float rope_factor = 1.f;
  float rope_low_freq_factor = 1.f;
  float rope_high_freq_factor = 4.f;
  int64_t rope_original_max_len = 8192;
  MlpKind mlp = MlpKind::gelu;
  bool bias = true;             ///< biases in linear layers (and layernorm)
  bool qkv_bias = false;        ///< biases on q, k and v only (Qwen2), when bias is false
  bool tied_embeddings = true;  ///< the LM head reuses the token embedding
  /// Width of an attention head; 0: d_model / n_head. Otherwise q is n_head × head_dim wide
  /// and the output projection maps that back to d_model (Gemma, Mistral NeMo, Qwen3).
  int64_t head_dim_override = 0;
  /// Sliding-window attention's window (Mistral); 0: none. nuri attends to the whole causal
  /// prefix, which is the same as long as no sequence is longer than the window: a longer one
  /// is refused.
  int64_t sliding_window = 0;

  int64_t head_dim() const { return head_dim_override > 0 ? head_dim_override : d_model / n_head; }
  /// RoPE's theta and scaling.
  Rope rope() const;
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

/// A model setting where a recorded config differs from a model's: its JSON values ("" where the
/// record lacks the key).
struct ModelSettingDifference {
  std::string key, recorded, mine;
};
/// The settings, in table order, where `recorded` (a model config as JSON, e.g. a checkpoint's
/// or a model file's) differs from `config`; numbers compare as float32, as the fields are (an
/// older checkpoint wrote 1e-5f as 1.0000000116860974e-05).
std::vector<ModelSettingDifference> model_config_differences(const std::string& recorded,
                                                             const ModelConfig& config);
/// Whether model setting `key` is a context setting: max_seq_len and RoPE's frequencies
/// (rope_theta, rope_scaling and its factors, rope_original_max_len). A model with RoPE
/// positions may differ in them from the model whose weights it starts from (checkpoint.init,
/// Trainer::load_model_file): max_seq_len only bounds its sequences, and the RoPE settings
/// change what the weights compute, not their shapes (fine-tuning for a longer context). A
/// model with learned positions has a weight row per position.
bool context_setting(const std::string& key);

/// Named presets: demo (nuri-train's default: 3.3M parameters, byte vocabulary), gpt2-tiny,
/// gpt2-124M, gpt2-350M, gpt2-774M, gpt2-1558M, llama-tiny, llama-1B (TinyLlama-1.1B's shape). Throws nuri::Error listing the names otherwise.
ModelConfig model_preset(const std::string& name);
std::vector<std::string> model_preset_names();

const char* norm_name(NormKind k);
const char* position_name(PositionKind k);
const char* mlp_name(MlpKind k);

/// Throws nuri::Error when sequences of length `seq_len` are longer than the model's sliding
/// window (nuri attends to the whole prefix, so it would compute another model).
void check_sliding_window(const ModelConfig& cfg, int64_t seq_len);

}  // namespace nuri
