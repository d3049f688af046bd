// AdamW over the model's parameter views; the moments are flat buffers laid out like the params.
#include "nuri/train/optimizer.h"

namespace nuri {

AdamW::AdamW(Transformer& model, const AdamWParams& hp) : model_(model), hp_(hp) {
  Backend& be = model.backend();
  m_ = be.empty(model.param_buffer().shape());
  v_ = be.empty(model.param_buffer().shape());
  be.zero(m_);
  be.zero(v_);
  const auto& params = model.parameters();
  const auto& grads = model.gradients();
  // A bf16 compute copy (model.compute_buffer()) is rewritten by the same update.
  const Tensor& copy = model.compute_buffer();
  NURI_CHECK(!copy.defined() || copy.dtype() == DType::bf16, "AdamW: the model computes in ",
             dtype_name(model.compute_dtype()), "; the update writes f32 masters and bf16 copies");
  int64_t offset = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i].tensor;
    const int64_t n = p.numel();
    AdamWTensor t{p, grads[i].tensor, m_.slice(0, offset, offset + n).view(p.shape()),
                  v_.slice(0, offset, offset + n).view(p.shape()), params[i].decay};
    if (copy.defined()) t.param_bf16 = copy.slice(0, offset, offset + n).view(p.shape());
    tensors_.push_back(t);
    offset += n;
  }
}

void AdamW::step(float lr, float grad_scale) {
  AdamWParams hp = hp_;
  hp.step = ++step_;
  hp.lr = lr;
  hp.grad_scale = grad_scale;
  model_.backend().adamw(tensors_, hp);
}

}  // namespace nuri
