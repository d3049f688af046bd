// Fused attention on the CUDA backend: the validation of cpu/attention.cpp (same messages where
// the contract is the same), then the kernels of kernels/attention_fwd.cuh and attention_bwd.cuh.
// The kernels run on tensor cores, so q, k, v are bf16 or f16 (one dtype per call; out, dout,
// dq, dk, dv share it); lse is f32. f32 attention is the CPU backend's.
#include "attention.h"

#include <cmath>
#include <cstdint>

#include "backend/cuda/check.h"
#include "backend/cuda/cuda_backend.h"

namespace nuri {

namespace {

/// The dtype of q: bf16 or f16.
DType attention_dtype(const char* op, const Tensor& q) {
  NURI_CHECK(q.defined(), op, ": q is required but was not given");
  NURI_CHECK(q.dtype() == DType::bf16 || q.dtype() == DType::f16, op, ": q has dtype ",
             dtype_name(q.dtype()),
             "; attention on the CUDA backend runs on tensor cores and takes bf16 or f16 q, k, "
             "v (f32 attention is the cpu backend's)");
  return q.dtype();
}

// A [B, T, heads, D] view: on the device, dtype dt, unit stride in D.
void check_view(const char* op, const char* name, const Tensor& t, DType dt) {
  cuda::check_dev(op, name, t, dt, /*contiguous=*/false);
  NURI_CHECK(t.dim() == 4, op, ": ", name, " must be [B, T, heads, head_dim], got shape ",
             shape_str(t.shape()));
  NURI_CHECK(t.stride(3) == 1, op, ": ", name, " must have unit stride in its last dim (shape ",
             shape_str(t.shape()), ", strides ", shape_str(t.strides()), ")");
}

// The strides of a checked view whose rows must also be 16-byte aligned (cp.async tiles).
kernels::AttnStrides aligned_rows(const char* op, const char* name, const Tensor& t) {
  const bool rows_aligned = t.stride(0) % 8 == 0 && t.stride(1) % 8 == 0 && t.stride(2) % 8 == 0 &&
                            reinterpret_cast<uintptr_t>(t.raw()) % 16 == 0;
  NURI_CHECK(rows_aligned, op, ": ", name, " (strides ", shape_str(t.strides()),
             ") must have 16-byte aligned rows on the CUDA backend: strides that are multiples "
             "of 8 elements and an aligned start (make a contiguous copy first)");
  return {t.stride(0), t.stride(1), t.stride(2)};
}

// An output or backward input of q's or k's shape: a checked view with aligned rows.
kernels::AttnStrides operand(const char* op, const char* name, const Tensor& t, DType dt,
                             const Shape& shape) {
  check_view(op, name, t, dt);
  cuda::check_shape(op, name, t, shape);
  return aligned_rows(op, name, t);
}

template <class T>
kernels::AttentionParams<T> check_inputs(const char* op, const Tensor& q, const Tensor& k,
                                         const Tensor& v, const Tensor& lse,
                                         const AttentionOptions& opt) {
  const DType dt = attention_dtype(op, q);
  check_view(op, "q", q, dt);
  check_view(op, "k", k, dt);
  check_view(op, "v", v, dt);
  const int64_t b = q.size(0), t = q.size(1), h = q.size(2), hkv = k.size(2), d = q.size(3);
  NURI_CHECK(t > 0 && d > 0, op, ": q has shape ", shape_str(q.shape()),
             "; the sequence length and head_dim must be positive");
  NURI_CHECK(k.size(0) == b && k.size(1) == t && k.size(3) == d, op, ": k has shape ",
             shape_str(k.shape()), ", expected (", b, ", ", t, ", n_kv_head, ", d,
             ") to match q ", shape_str(q.shape()));
  cuda::check_shape(op, "v", v, k.shape());
  NURI_CHECK(hkv > 0 && h % hkv == 0, op, ": n_kv_head (", hkv, ") must divide n_head (", h,
             ")");
  NURI_CHECK(kernels::attention_head_dim_supported(int(d)), op, ": head_dim ", d,
             " has no CUDA kernel; compiled head dims: 64, 128 (kernels/attention.h)");
  NURI_CHECK(b <= 65535 && h <= 65535 && t <= (int64_t(1) << 30), op, ": shape ",
             shape_str(q.shape()), " exceeds the CUDA kernels' grid limits");
  NURI_CHECK(std::isfinite(opt.scale), op, ": scale must be finite, got ", opt.scale);
  cuda::check_dev(op, "lse", lse, DType::f32);
  cuda::check_shape(op, "lse", lse, {b, h, t});
  kernels::AttentionParams<T> p;
  p.q_s = aligned_rows(op, "q", q);
  p.k_s = aligned_rows(op, "k", k);
  p.v_s = aligned_rows(op, "v", v);
  p.q = static_cast<const T*>(q.raw());
  p.k = static_cast<const T*>(k.raw());
  p.v = static_cast<const T*>(v.raw());
  p.lse = static_cast<float*>(lse.raw());
  p.batch = int(b), p.seq = int(t), p.heads = int(h), p.kv_heads = int(hkv), p.head_dim = int(d);
  p.scale = opt.scale != 0.f ? opt.scale : 1.f / std::sqrt(float(d));
  p.causal = opt.causal;
  p.deterministic = opt.deterministic;
  return p;
}

template <class T>
void forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
             const Tensor& lse, const AttentionOptions& opt, cudaStream_t stream) {
  const char* op = "attention";
  kernels::AttentionParams<T> p = check_inputs<T>(op, q, k, v, lse, opt);
  p.out_s = operand(op, "out", out, q.dtype(), q.shape());
  p.out = static_cast<T*>(out.raw());
  kernels::attention_forward(p, stream);
}

template <class T>
void backward(CudaBackend& be, const Tensor& q, const Tensor& k, const Tensor& v,
              const Tensor& out, const Tensor& lse, const Tensor& dout, const Tensor& dq,
              const Tensor& dk, const Tensor& dv, const AttentionOptions& opt) {
  const char* op = "attention_backward";
  kernels::AttentionParams<T> p = check_inputs<T>(op, q, k, v, lse, opt);
  const DType dt = q.dtype();
  p.out_s = operand(op, "out", out, dt, q.shape());
  p.dout_s = operand(op, "dout", dout, dt, q.shape());
  p.dq_s = operand(op, "dq", dq, dt, q.shape());  // views of a fused dQKV buffer are fine
  p.dk_s = operand(op, "dk", dk, dt, k.shape());
  p.dv_s = operand(op, "dv", dv, dt, v.shape());
  p.out = static_cast<T*>(out.raw());
  p.dout = static_cast<const T*>(dout.raw());
  p.dq = static_cast<T*>(dq.raw());
  p.dk = static_cast<T*>(dk.raw());
  p.dv = static_cast<T*>(dv.raw());
  void* ws = be.workspace(kernels::attention_backward_workspace_bytes(
      p.batch, p.seq, p.heads, p.head_dim, p.deterministic));
  kernels::attention_backward(p, ws, be.stream());
}

}  // namespace

void CudaBackend::attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                            const Tensor& lse, const AttentionOptions& opt) {
  if (attention_dtype("attention", q) == DType::bf16) {
    forward<__nv_bfloat16>(q, k, v, out, lse, opt, stream());
  } else {
    forward<__half>(q, k, v, out, lse, opt, stream());
  }
}

void CudaBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                     const Tensor& out, const Tensor& lse, const Tensor& dout,
                                     const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                     const AttentionOptions& opt) {
  if (attention_dtype("attention_backward", q) == DType::bf16) {
    backward<__nv_bfloat16>(*this, q, k, v, out, lse, dout, dq, dk, dv, opt);
  } else {
    backward<__half>(*this, q, k, v, out, lse, dout, dq, dk, dv, opt);
  }
}

}  // namespace nuri
