// A tiny GPT-2-style or Llama-style model (GQA, RoPE, SwiGLU, untied head) with head dim 64, the
// size the CUDA attention kernels take: what the recomputation and pipeline-stage tests run on
// every backend.
#pragma once

#include "nuri/model/config.h"

namespace nuri::test {

inline ModelConfig head64_model(bool llama) {
  ModelConfig c;
  c.vocab_size = 64;
  c.d_model = 128;
  c.n_layer = 3;
  c.n_head = 2;
  c.n_kv_head = llama ? 1 : 2;
  c.d_ff = 96;
  c.max_seq_len = 32;
  if (llama) {
    c.norm = NormKind::rmsnorm;
    c.position = PositionKind::rope;
    c.mlp = MlpKind::swiglu;
    c.bias = false;
    c.tied_embeddings = false;
  }
  return c;
}

}  // namespace nuri::test
