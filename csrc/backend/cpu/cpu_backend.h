// The CPU backend: fp32 compute, GEMM through BLAS (gemm.h), everything else as cache-friendly
// loops parallelized with OpenMP. It is the reference every other backend is tested against, so
// each op favours a clear, exact formulation; speed comes from BLAS and from loop order.
// Each op family is defined in its own file (matmul.cpp, norm.cpp, attention.cpp, ...).
#pragma once

#include "nuri/backend/backend.h"

namespace nuri {

class CpuBackend final : public Backend {
 public:
  CpuBackend();
  std::string name() const override { return "cpu"; }
  Device device() const override { return Device::cpu(); }
  std::shared_ptr<Allocator> allocator() const override { return alloc_; }
  void zero(const Tensor& t) override;
  void copy(const Tensor& src, const Tensor& dst) override;

  void matmul(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
              Activation act, const Tensor& pre,
              const Tensor& residual) override;
  void matmul_backward_input(const Tensor& dy, const Tensor& w, const Tensor& dx, bool accumulate,
                             const Tensor& gelu_pre) override;
  void matmul_backward_weight(const Tensor& dy, const Tensor& x, const Tensor& dw,
                              bool accumulate) override;
  void matmul_backward_bias(const Tensor& dy, const Tensor& dbias, bool accumulate) override;

  void gelu(const Tensor& x, const Tensor& y) override;
  void gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx) override;
  void swiglu(const Tensor& x, const Tensor& y) override;
  void swiglu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx) override;

  void embedding(const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                 const Tensor& positions, const Tensor& out) override;
  void embedding_backward(const Tensor& tokens, const Tensor& dout, const Tensor& dwte,
                          const Tensor& dwpe, const Tensor& positions, bool accumulate) override;
  void embedding_shard(const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                       const Tensor& positions, const Tensor& out, int64_t row_lo,
                       int64_t vocab_size) override;
  void embedding_shard_backward(const Tensor& tokens, const Tensor& dout, const Tensor& dwte,
                                const Tensor& dwpe, const Tensor& positions, int64_t row_lo,
                                int64_t vocab_size, bool accumulate) override;

  void layernorm(const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias,
                 float eps, const Tensor& sum, const Tensor& y, const Tensor& mean,
                 const Tensor& rstd) override;
  void layernorm_backward(const Tensor& dy, const Tensor& s, const Tensor& weight,
                          const Tensor& mean, const Tensor& rstd, const Tensor& dsum,
                          const Tensor& ds, const Tensor& dweight, const Tensor& dbias,
                          bool accumulate) override;
  void rmsnorm(const Tensor& x, const Tensor& residual, const Tensor& weight, float eps,
               const Tensor& sum, const Tensor& y, const Tensor& rstd) override;
  void rmsnorm_backward(const Tensor& dy, const Tensor& s, const Tensor& weight,
                        const Tensor& rstd, const Tensor& dsum, const Tensor& ds,
                        const Tensor& dweight, bool accumulate) override;

  void rope(const Tensor& x, const Tensor& y, const Rope& rope, int64_t pos_offset) override;
  void rope_backward(const Tensor& dy, const Tensor& dx, const Rope& rope,
                     int64_t pos_offset) override;

  void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                 const Tensor& lse, const AttentionOptions& opt) override;
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                          const Tensor& lse, const Tensor& dout, const Tensor& dq,
                          const Tensor& dk, const Tensor& dv,
                          const AttentionOptions& opt) override;
  void attention_decode(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const AttentionOptions& opt) override;

  void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t vocab_size,
                     int32_t ignore_index, const Tensor& losses, const Tensor& lse,
                     const Tensor& loss) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                              int64_t vocab_size, int32_t ignore_index, float dloss,
                              const Tensor& dlogits) override;
  void cross_entropy_shard(const Tensor& logits, const Tensor& targets, int64_t vocab_size,
                           int32_t ignore_index, int64_t col_lo, const Tensor& losses,
                           const Tensor& lse) override;
  void cross_entropy_merge(const Tensor& part_lse, const Tensor& part_losses, const Tensor& targets,
                           int32_t ignore_index, const Tensor& losses, const Tensor& lse,
                           const Tensor& loss) override;
  void cross_entropy_shard_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                                    int64_t vocab_size, int32_t ignore_index, int64_t col_lo,
                                    float dloss, const Tensor& dlogits) override;

  void global_norm(const std::vector<Tensor>& grads, const Tensor& out) override;
  void adamw(const std::vector<AdamWTensor>& tensors, const AdamWParams& hp) override;

 private:
  std::shared_ptr<Allocator> alloc_;
};

}  // namespace nuri
