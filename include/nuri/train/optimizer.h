// AdamW state for a Transformer: first and second moments in two flat f32 buffers with the
// parameters' layout, so checkpoints and ZeRO sharding can treat them as plain ranges.
#pragma once

#include <vector>

#include "nuri/model/transformer.h"

namespace nuri {

class AdamW {
 public:
  /// Zero moments for every parameter of `model`. `hp.step` and `hp.lr` are set per step.
  AdamW(Transformer& model, const AdamWParams& hp);
  /// ZeRO stage 1: moments for the flat parameter range [lo, hi) only (this rank's shard of
  /// model.param_buffer()); step() updates just that range of the parameters and of the bf16
  /// compute copy. The values are those of the whole-model AdamW on that range (the update is
  /// elementwise), except that stochastic rounding draws other bits (its counter follows the
  /// tensor list, which the shard cuts differently).
  /// `grads` holds the gradients of [lo, hi) where the model holds none (ZeRO stage 2: the
  /// rank's reduced gradient shard); undefined: model.grad_buffer()'s range.
  AdamW(Transformer& model, const AdamWParams& hp, int64_t lo, int64_t hi,
        const Tensor& grads = Tensor());

  /// One update of every parameter from the model's gradients: lr for this step, and the factor
  /// every gradient is multiplied by first (gradient clipping). Weight decay only where the
  /// parameter is a matrix.
  void step(float lr, float grad_scale = 1.f);

  int64_t steps_done() const { return step_; }
  /// Restores the update count (a checkpoint's): bias correction and stochastic rounding go on
  /// from there.
  void set_steps_done(int64_t steps) { step_ = steps; }
  const AdamWParams& hyper_params() const { return hp_; }
  const Tensor& m_buffer() const { return m_; }
  const Tensor& v_buffer() const { return v_; }
  /// The flat parameter range this optimizer updates: [0, P) unless sharded.
  int64_t shard_begin() const { return lo_; }
  int64_t shard_end() const { return hi_; }

 private:
  Transformer& model_;
  AdamWParams hp_;
  Tensor m_, v_;
  std::vector<AdamWTensor> tensors_;
  int64_t step_ = 0;
  int64_t lo_ = 0, hi_ = 0;
};

}  // namespace nuri
