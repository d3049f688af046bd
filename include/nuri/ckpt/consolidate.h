// One model file from a sharded checkpoint (DESIGN.md, "Checkpoints"), written tensor by tensor:
// each parameter is assembled from the slices the ranks wrote and streamed out, so the memory it
// takes is the largest tensor's, never the model's.
#pragma once

#include <cstdint>
#include <string>

namespace nuri {

struct ConsolidateStats {
  int64_t tensors = 0;
  int64_t bytes = 0;       ///< of tensor data written
  int64_t peak_bytes = 0;  ///< the most host bytes held at once (one tensor)
};

/// Why `path` may not be written by an export of the checkpoint in `step_dir` ("" when it may):
/// it lies inside a checkpoint directory of the same root (step-*: its files could be
/// overwritten, and a later run's rotation deletes the directory), or it is the root's `latest`
/// or `ledger.jsonl`. A new file in the root itself is fine.
std::string checkpoint_owns(const std::string& step_dir, const std::string& path);

/// Writes the parameters of checkpoint `ckpt` (a checkpoint directory, or a root whose newest
/// one is taken) as one safetensors file at `out`: f32, nuri's (Hugging Face) names in layout
/// order, the model config in the metadata (nuri_model_config, as nuri.load reads it).
ConsolidateStats consolidate_checkpoint(const std::string& ckpt, const std::string& out);

}  // namespace nuri
