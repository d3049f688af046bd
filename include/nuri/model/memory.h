// What a model allocates for its activations, from its config and the step's shape alone: the
// tensors Transformer::prepare() plans (per micro-batch slot, the shared recomputation and
// backward scratch, the pipeline boundary buffers) and those the forward adds (each block's
// input). The planner (nuri/train/plan.h) predicts memory with it; tests/model/test_recompute.cpp
// holds it to the allocator's count on every backend, byte for byte.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "nuri/core/dtype.h"
#include "nuri/model/config.h"
#include "nuri/model/transformer.h"

namespace nuri {

/// The shape of a model's activations: micro-batch b × sequence t in `act` (the compute dtype),
/// a tensor-parallel place (with sequence parallelism or not), the recomputation mode and
/// period, the pipeline stage and its micro-batch slots, and whether the backend is a device
/// (which also holds each micro-batch's token ids).
struct ActivationShape {
  int64_t b = 1, t = 1;
  DType act = DType::f32;
  TensorParallelRank place{};
  bool sp = false;
  Recompute recompute = Recompute::none;
  int64_t every = 1;
  PipelineStage stage{};
  int slots = 1;
  bool device = false;
  /// A document mask (Transformer::set_document_separator): each slot's document bounds (and a
  /// learned-position model's first stage, its positions), copied in by every forward on a
  /// device (on the CPU the forward's host tensors are used).
  bool documents = false;
};

/// One planned activation tensor: what it is, its bytes, and how many of it.
struct PlannedTensor {
  std::string what;
  int64_t bytes = 0;
  int64_t count = 1;
};

/// Every activation tensor of `cfg` at `shape`, grouped ("slot: block input", "shared: qkv", ...).
std::vector<PlannedTensor> activation_plan(const ModelConfig& cfg, const ActivationShape& shape);

/// Their bytes, each rounded by `block` (an allocator's size class; default: as asked).
int64_t activation_bytes(const ModelConfig& cfg, const ActivationShape& shape,
                         const std::function<int64_t(int64_t)>& block = {});

}  // namespace nuri
