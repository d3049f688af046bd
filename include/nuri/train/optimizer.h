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

  /// One update of every parameter from the model's gradients: lr for this step, and the factor
  /// every gradient is multiplied by first (gradient clipping). Weight decay only where the
  /// parameter is a matrix.
  void step(float lr, float grad_scale = 1.f);

  int64_t steps_done() const { return step_; }
  const AdamWParams& hyper_params() const { return hp_; }
  const Tensor& m_buffer() const { return m_; }
  const Tensor& v_buffer() const { return v_; }

 private:
  Transformer& model_;
  AdamWParams hp_;
  Tensor m_, v_;
  std::vector<AdamWTensor> tensors_;
  int64_t step_ = 0;
};

}  // namespace nuri
