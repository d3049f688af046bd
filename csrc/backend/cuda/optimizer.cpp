// AdamW and the global gradient norm on the CUDA backend: validation (the CPU backend's rules and
// messages), then one multi-tensor launch each (kernels/optimizer.cuh). Every tensor is f32; the
// optional bf16 copy of each updated parameter is rounded to nearest or stochastically, with the
// same random bits as the CPU backend.
#include "optimizer.h"  // kernels/

#include <cmath>
#include <limits>
#include <vector>

#include "backend/cuda/check.h"
#include "backend/cuda/cuda_backend.h"

namespace nuri {

void CudaBackend::global_norm(const std::vector<Tensor>& grads, const Tensor& out) {
  constexpr const char* op = "global_norm";
  cuda::check_dev(op, "out", out, DType::f32);
  cuda::check_shape(op, "out", out, {1});
  std::vector<kernels::NormTensorDesc> descs;
  descs.reserve(grads.size());
  for (const Tensor& g : grads) {
    cuda::check_dev(op, "grad", g, DType::f32);
    descs.push_back({g.data<float>(), g.numel(), 0});
  }
  void* ws = workspace(kernels::global_norm_workspace_bytes(descs.data(), int64_t(descs.size())));
  kernels::launch_global_norm(descs.data(), int64_t(descs.size()), out.data<float>(), ws, stream());
}

void CudaBackend::adamw(const std::vector<AdamWTensor>& tensors, const AdamWParams& hp) {
  constexpr const char* op = "adamw";
  NURI_CHECK(hp.step >= 1, op, ": step is 1-based, got ", hp.step);
  NURI_CHECK(hp.lr >= 0.f, op, ": learning rate must be >= 0, got ", hp.lr);
  NURI_CHECK(hp.beta1 >= 0.f && hp.beta1 < 1.f && hp.beta2 >= 0.f && hp.beta2 < 1.f, op,
             ": betas must be in [0, 1), got (", hp.beta1, ", ", hp.beta2, ")");
  NURI_CHECK(hp.eps > 0.f, op, ": eps must be positive, got ", hp.eps);
  NURI_CHECK(tensors.size() <= size_t(std::numeric_limits<int32_t>::max()), op, ": ",
             tensors.size(), " tensors are more than one launch can index");
  std::vector<kernels::AdamWTensorDesc> descs;
  descs.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const AdamWTensor& t = tensors[i];
    cuda::check_dev(op, "param", t.param, DType::f32);
    cuda::check_dev(op, "grad", t.grad, DType::f32);
    cuda::check_dev(op, "m", t.m, DType::f32);
    cuda::check_dev(op, "v", t.v, DType::f32);
    cuda::check_shape(op, "grad", t.grad, t.param.shape());
    cuda::check_shape(op, "m", t.m, t.param.shape());
    cuda::check_shape(op, "v", t.v, t.param.shape());
    __nv_bfloat16* copy = nullptr;
    if (t.param_bf16.defined()) {
      cuda::check_dev(op, "param_bf16", t.param_bf16, DType::bf16);
      cuda::check_shape(op, "param_bf16", t.param_bf16, t.param.shape());
      copy = reinterpret_cast<__nv_bfloat16*>(t.param_bf16.data<bf16_t>());
    }
    descs.push_back({t.param.data<float>(), t.grad.data<float>(), t.m.data<float>(),
                     t.v.data<float>(), copy, t.param.numel(), t.decay ? hp.weight_decay : 0.f,
                     int32_t(i), 0});
  }
  kernels::AdamWStep step{};
  step.lr = hp.lr;
  step.beta1 = hp.beta1;
  step.beta2 = hp.beta2;
  step.eps = hp.eps;
  step.grad_scale = hp.grad_scale;
  // The bias corrections exactly as the CPU backend computes them.
  step.bc1 = 1.f - float(std::pow(double(hp.beta1), double(hp.step)));
  step.bc2 = 1.f - float(std::pow(double(hp.beta2), double(hp.step)));
  step.seed = hp.seed;
  step.step = uint32_t(hp.step);
  step.stochastic_rounding = hp.stochastic_rounding;
  void* ws = workspace(kernels::adamw_workspace_bytes(int64_t(descs.size())));
  kernels::launch_adamw(descs.data(), int64_t(descs.size()), step, ws, stream());
}

}  // namespace nuri
