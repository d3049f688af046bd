// AdamW over the model's parameter views; the moments are flat buffers laid out like the params.
#include "nuri/train/optimizer.h"

#include <algorithm>

namespace nuri {

AdamW::AdamW(Transformer& model, const AdamWParams& hp)
    : model_(model), hp_(hp), hi_(model.parameter_count()) {
  NURI_CHECK(!model.masters_sharded(), "AdamW: the model holds the master weights of [",
             model.master_begin(), ", ", model.master_end(), ") only; give the optimizer that "
             "shard (the constructor with lo and hi)");
  Backend& be = model.backend();
  MemoryScope state(MemoryCategory::optimizer);
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

AdamW::AdamW(Transformer& model, const AdamWParams& hp, int64_t lo, int64_t hi,
             const Tensor& grads)
    : model_(model), hp_(hp), lo_(lo), hi_(hi) {
  const int64_t total = model.parameter_count();
  NURI_CHECK(0 <= lo && lo <= hi && hi <= total, "AdamW: shard [", lo, ", ", hi,
             ") is not a range of the ", total, " parameters");
  // Sharded masters (ZeRO on a GPU): the model's master buffer is exactly this shard.
  const bool own = model.masters_sharded();
  NURI_CHECK(!own || (model.master_begin() == lo && model.master_end() == hi), "AdamW: shard [",
             lo, ", ", hi, ") differs from the master weights the model holds, [",
             model.master_begin(), ", ", model.master_end(), ")");
  const int64_t p0 = own ? lo : 0;  // flat index of param_buffer()'s first element
  const Tensor g = grads.defined() ? grads : model.grad_buffer();
  NURI_CHECK(g.defined(), "AdamW: the model holds no gradients (its hooks own them); pass the "
             "shard's gradients");
  const int64_t g0 = grads.defined() ? lo : 0;  // flat index of g's first element
  NURI_CHECK(g.dtype() == DType::f32 && g.numel() == (grads.defined() ? hi - lo : total),
             "AdamW: gradients ", g.str(), " do not match the shard [", lo, ", ", hi, ")");
  Backend& be = model.backend();
  MemoryScope state(MemoryCategory::optimizer);
  m_ = be.empty({hi - lo});
  v_ = be.empty({hi - lo});
  be.zero(m_);
  be.zero(v_);
  const Tensor& copy = model.compute_buffer();
  NURI_CHECK(!copy.defined() || copy.dtype() == DType::bf16, "AdamW: the model computes in ",
             dtype_name(model.compute_dtype()), "; the update writes f32 masters and bf16 copies");
  for (const ParamSpec& spec : model.layout()) {  // in order, unpadded, in the flat buffers
    const int64_t a = std::max(spec.offset, lo), b = std::min(spec.offset + spec.numel(), hi);
    if (a < b) {
      AdamWTensor t{model.param_buffer().slice(0, a - p0, b - p0), g.slice(0, a - g0, b - g0),
                    m_.slice(0, a - lo, b - lo), v_.slice(0, a - lo, b - lo), spec.decay};
      const int64_t c0 = model.compute_begin();  // ZeRO 3: the copy is this shard too
      if (copy.defined()) t.param_bf16 = copy.slice(0, a - c0, b - c0);
      tensors_.push_back(t);
    }
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
