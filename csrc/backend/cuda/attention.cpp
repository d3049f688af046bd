// Fused attention on the CUDA backend: the validation of cpu/attention.cpp (same messages where
// the contract is the same), then the kernels of kernels/attention_fwd.cuh and attention_bwd.cuh.
// The kernels run on tensor cores, so q, k, v are bf16 or f16 (one dtype per call; out, dout,
// dq, dk, dv share it); lse is f32. f32 attention is the CPU backend's.
#include "attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <type_traits>
#include <vector>

#include "backend/cuda/check.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/outputs_agree.h"
#include "attention_decode.h"  // kernels/
#include "cuda_check.h"        // kernels/
#include "device_info.h"       // kernels/
#if defined(NURI_HAVE_CUDNN_FRONTEND)
#include "backend/cuda/cudnn_attention.h"
#endif

namespace nuri {

// The list the planner and the model check against is the one the kernels are compiled for.
static_assert([] {
  size_t n = 0;
  for (int d = 1; d <= 1024; ++d) {
    if (!kernels::attention_head_dim_supported(d)) continue;
    if (n >= std::size(kCudaAttentionHeadDims) || kCudaAttentionHeadDims[n] != d) return false;
    ++n;
  }
  return n == std::size(kCudaAttentionHeadDims);
}(), "kCudaAttentionHeadDims (nuri/backend/backend.h) differs from kernels/attention.h's list");

bool CudaBackend::attention_head_dim_supported(int64_t head_dim) const {
  return head_dim <= 1024 && kernels::attention_head_dim_supported(int(head_dim));
}

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
             " has no CUDA kernel; compiled head dims: ", cuda_attention_head_dims_text(),
             " (kernels/attention.h)");
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
  if (const Tensor& docs = opt.documents; docs.defined()) {
    NURI_CHECK(opt.causal, op, ": documents (a document mask) need causal attention");
    cuda::check_dev(op, "documents", docs, DType::i32);
    cuda::check_shape(op, "documents", docs, {2, b, t});
    p.key_start = static_cast<const int*>(docs.raw());
    p.query_end = p.key_start + b * t;
  }
  return p;
}

}  // namespace

/// The implementations of the attention ops and the choice between them
/// (CudaBackend::set_attention_path): nuri's sm_80-class kernels (every GPU; their forward with
/// 64- or 128-row query blocks), nuri's sm_90a kernels (H100/H200) and cuDNN's fused attention.
struct AttentionDispatch {
  /// The values of a contiguous device buffer of n elements of T (bf16, f16 or f32) on the host.
  template <class T>
  static std::vector<float> host_values(const void* p, size_t n) {
    std::vector<T> raw(n);
    NURI_CUDA_CHECK(cudaMemcpy(raw.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) {
      if constexpr (std::is_same_v<T, float>) {
        v[i] = raw[i];
      } else {
        v[i] = float(raw[i]);
      }
    }
    return v;
  }

  /// Milliseconds `f` takes on the stream.
  template <class F>
  static float time_ms(cudaStream_t stream, F&& f) {
    cudaEvent_t start, stop;
    NURI_CUDA_CHECK(cudaEventCreate(&start));
    NURI_CUDA_CHECK(cudaEventCreate(&stop));
    NURI_CUDA_CHECK(cudaEventRecord(start, stream));
    f();
    NURI_CUDA_CHECK(cudaEventRecord(stop, stream));
    NURI_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.f;
    NURI_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return ms;
  }

  /// Runs the op with implementation `path` (not automatic); "" when it ran, else why it
  /// declined (nothing was written then).
  template <class T>
  static std::string run_path(CudaBackend& be, AttentionPath path,
                              const kernels::AttentionParams<T>& p, bool backward) {
    switch (path) {
      case AttentionPath::cudnn: {
        if (p.key_start != nullptr) return "cuDNN's path takes no document mask";
#if defined(NURI_HAVE_CUDNN_FRONTEND)
        const cuda::Workspace ws = [&be](size_t bytes) { return be.workspace(bytes); };
        std::string why = backward ? cuda::cudnn_attention_backward(p, be.device_, be.stream(), ws)
                                   : cuda::cudnn_attention_forward(p, be.device_, be.stream(), ws);
        if (why.empty()) ++be.cudnn_attention_calls_;
        return why;
#else
        return "this build has no cuDNN frontend";
#endif
      }
      case AttentionPath::sm90: {
        std::string why;
        if (backward) {
          void* ws = be.workspace(kernels::attention_backward_workspace_bytes(
              p.batch, p.seq, p.heads, p.head_dim, /*deterministic=*/true));
          why = kernels::attention_backward_sm90(p, ws, be.stream());
        } else {
          why = kernels::attention_forward_sm90(p, be.stream());
        }
        if (why.empty()) ++be.sm90_attention_calls_;
        return why;
      }
      case AttentionPath::nuri:
      case AttentionPath::nuri128:  // the backward is nuri's
      case AttentionPath::automatic: break;
    }
    if (backward) {
      void* ws = be.workspace(kernels::attention_backward_workspace_bytes(
          p.batch, p.seq, p.heads, p.head_dim, p.deterministic));
      kernels::attention_backward(p, ws, be.stream());
    } else {
      kernels::attention_forward(p, be.stream(), path == AttentionPath::nuri128 ? 128 : 64);
    }
    return "";
  }

  /// The implementations `automatic` measures: nuri's kernels first, then for the forward
  /// nuri's 128-row blocks, the sm_90a kernels on an H100/H200 of a build that has them, then
  /// cuDNN where built. On the emulator, whose timings mean nothing, nuri's kernels alone,
  /// unless NURI_EMU_MEASURE=1 asks for the GPU's list (tests of the measuring).
  static std::vector<AttentionPath> candidates(const CudaBackend& be, bool backward) {
    std::vector<AttentionPath> r{AttentionPath::nuri};
#if defined(NURI_CUDA_EMULATION)
    if (!be.emu_measure_) return r;
#endif
    if (!backward) r.push_back(AttentionPath::nuri128);
    if (be.sm90_usable()) r.push_back(AttentionPath::sm90);
#if defined(NURI_HAVE_CUDNN_FRONTEND)
    r.push_back(AttentionPath::cudnn);
#endif
    return r;
  }

  /// Runs the op by the backend's path: a fixed one (an error where it declines), or under
  /// automatic the one measured fastest for this shape (measuring on its first call).
  template <class T>
  static void run(CudaBackend& be, const char* op, const kernels::AttentionParams<T>& p,
                  bool backward) {
    if (be.attention_path_ != AttentionPath::automatic) {
      const std::string why = run_path(be, be.attention_path_, p, backward);
      NURI_CHECK(why.empty(), op, " (NURI_ATTENTION=", attention_path_name(be.attention_path_),
                 "): ", why, "; use auto or nuri");
      return;
    }
    const std::vector<AttentionPath> paths = candidates(be, backward);
    if (paths.size() == 1) {
      run_path(be, AttentionPath::nuri, p, backward);
      return;
    }
    std::vector<int64_t> key{backward, std::is_same_v<T, __half>, p.batch, p.seq, p.heads,
                             p.kv_heads, p.head_dim, p.causal, backward && p.deterministic,
                             p.key_start != nullptr};
    for (const kernels::AttnStrides* s : {&p.q_s, &p.k_s, &p.out_s, &p.dq_s, &p.dk_s}) {
      key.insert(key.end(), {s->b, s->t, s->h});
    }
    if (auto it = be.attention_choice_.find(key); it != be.attention_choice_.end()) {
      // The choice was measured on contiguous outputs; where it declines these (an sm_90a map
      // the driver refuses), nuri's kernels run, at every such call.
      if (!run_path(be, it->second, p, backward).empty()) {
        run_path(be, AttentionPath::nuri, p, backward);
      }
      return;
    }
    be.attention_choice_[key] = choose(be, p, backward, paths);
  }

  /// The measurement: nuri's kernels into the real outputs, each other implementation into
  /// contiguous copies, each once to warm up and once timed; the fastest of those that agree
  /// with nuri's kernels is chosen.
  template <class T>
  static AttentionPath choose(CudaBackend& be, const kernels::AttentionParams<T>& p,
                              bool backward, const std::vector<AttentionPath>& paths) {
    const DType dt = std::is_same_v<T, __half> ? DType::f16 : DType::bf16;
    const int64_t b = p.batch, t = p.seq, h = p.heads, hkv = p.kv_heads, d = p.head_dim;
    const kernels::AttnStrides q_like{t * h * d, h * d, d}, kv_like{t * hkv * d, hkv * d, d};
    // Every implementation runs once to warm up before it is timed (a kernel's first launch
    // loads its module), nuri's too: its outputs are written twice, the same both times.
    run_path(be, AttentionPath::nuri, p, backward);
    const float t_nuri =
        time_ms(be.stream(), [&] { run_path(be, AttentionPath::nuri, p, backward); });
    AttentionPath best = AttentionPath::nuri;
    float t_best = t_nuri;
    for (size_t i = 1; i < paths.size(); ++i) {
      kernels::AttentionParams<T> c = p;
      Tensor o1, o2, o3, lse;  // this implementation's outputs
      if (!backward) {
        o1 = be.empty({b, t, h, d}, dt);
        lse = be.empty({b, h, t}, DType::f32);
        c.out = static_cast<T*>(o1.raw()), c.out_s = q_like, c.lse = static_cast<float*>(lse.raw());
      } else {
        o1 = be.empty({b, t, h, d}, dt), o2 = be.empty({b, t, hkv, d}, dt);
        o3 = be.empty({b, t, hkv, d}, dt);
        c.dq = static_cast<T*>(o1.raw()), c.dk = static_cast<T*>(o2.raw());
        c.dv = static_cast<T*>(o3.raw());
        c.dq_s = q_like, c.dk_s = kv_like, c.dv_s = kv_like;
      }
      if (!run_path(be, paths[i], c, backward).empty()) continue;  // declined
      const float ms = time_ms(be.stream(), [&] { run_path(be, paths[i], c, backward); });
      // Compare every output, nuri's read through its strides (a fused-QKV buffer's dq, dk and
      // dv are views of the rows of d_qkv), the candidate's contiguous.
      bool same = true;
      auto check = [&](const void* mine, const kernels::AttnStrides& s, int64_t heads,
                       const Tensor& theirs) {
        const int64_t span = cuda::view_span(b, t, heads, d, s.b, s.t, s.h);
        const std::vector<float> values = cuda::view_values(
            host_values<T>(mine, size_t(span)), b, t, heads, d, s.b, s.t, s.h);
        same = same && cuda::outputs_agree(values,
                                           host_values<T>(theirs.raw(), size_t(b * t * heads * d)),
                                           1.f / 32, 0.f);
      };
      if (!backward) {
        const size_t n_lse = size_t(b * h * t);
        same = cuda::outputs_agree(host_values<float>(p.lse, n_lse),
                                   host_values<float>(lse.raw(), n_lse), 1e-3f, 1e-3f);
        check(p.out, p.out_s, h, o1);
      } else {
        check(p.dq, p.dq_s, h, o1);
        check(p.dk, p.dk_s, hkv, o2);
        check(p.dv, p.dv_s, hkv, o3);
      }
      if (!same) {
        std::fprintf(stderr, "nuri: the %s attention %s disagrees with nuri's sm_80 kernels for "
                     "B=%lld T=%lld H=%lld Hkv=%lld D=%lld; it is not used for this shape\n",
                     attention_path_name(paths[i]), backward ? "backward" : "forward",
                     (long long)b, (long long)t, (long long)h, (long long)hkv, (long long)d);
        continue;
      }
      if (ms < t_best) best = paths[i], t_best = ms;
    }
    return best;
  }
};

namespace {

template <class T>
void forward(CudaBackend& be, const Tensor& q, const Tensor& k, const Tensor& v,
             const Tensor& out, const Tensor& lse, const AttentionOptions& opt) {
  const char* op = "attention";
  kernels::AttentionParams<T> p = check_inputs<T>(op, q, k, v, lse, opt);
  p.out_s = operand(op, "out", out, q.dtype(), q.shape());
  p.out = static_cast<T*>(out.raw());
  AttentionDispatch::run(be, op, p, false);
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
  AttentionDispatch::run(be, op, p, true);
}

}  // namespace

void CudaBackend::attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                            const Tensor& lse, const AttentionOptions& opt) {
  if (attention_dtype("attention", q) == DType::bf16) {
    forward<__nv_bfloat16>(*this, q, k, v, out, lse, opt);
  } else {
    forward<__half>(*this, q, k, v, out, lse, opt);
  }
}

namespace {

template <class T>
void decode_forward(CudaBackend& be, const Tensor& q, const Tensor& k, const Tensor& v,
                    const Tensor& out, const AttentionOptions& opt) {
  const char* op = "attention_decode";
  const DType dt = q.dtype();
  check_view(op, "q", q, dt);
  check_view(op, "k", k, dt);
  check_view(op, "v", v, dt);
  const int64_t b = q.size(0), t = q.size(1), h = q.size(2), keys = k.size(1), hkv = k.size(2);
  const int64_t d = q.size(3);
  NURI_CHECK(b > 0 && t > 0 && h > 0 && d > 0, op, ": q has shape ", shape_str(q.shape()),
             "; the batch, sequence length, heads and head_dim must be positive");
  NURI_CHECK(k.size(0) == b && keys >= t && k.size(3) == d, op, ": k has shape ",
             shape_str(k.shape()), ", expected (", b, ", keys >= ", t, ", n_kv_head, ", d,
             ") to hold q ", shape_str(q.shape()), "'s rows and those before");
  cuda::check_shape(op, "v", v, k.shape());
  NURI_CHECK(hkv > 0 && h % hkv == 0, op, ": n_kv_head (", hkv, ") must divide n_head (", h,
             ")");
  NURI_CHECK(d <= kernels::kDecodeMaxHeadDim, op, ": head_dim ", d, " exceeds the decoding "
             "kernel's limit of ", kernels::kDecodeMaxHeadDim);
  NURI_CHECK(b <= 65535 && t * h <= INT32_MAX && keys <= INT32_MAX, op, ": shape ",
             shape_str(q.shape()), " with ", keys, " keys exceeds the CUDA kernel's grid limits");
  NURI_CHECK(std::isfinite(opt.scale), op, ": scale must be finite, got ", opt.scale);
  check_view(op, "out", out, dt);
  cuda::check_shape(op, "out", out, q.shape());
  kernels::AttentionDecodeParams<T> p;
  p.q = static_cast<const T*>(q.raw());
  p.k = static_cast<const T*>(k.raw());
  p.v = static_cast<const T*>(v.raw());
  p.out = static_cast<T*>(out.raw());
  p.q_s = {q.stride(0), q.stride(1), q.stride(2)};
  p.k_s = {k.stride(0), k.stride(1), k.stride(2)};
  p.v_s = {v.stride(0), v.stride(1), v.stride(2)};
  p.out_s = {out.stride(0), out.stride(1), out.stride(2)};
  p.batch = int(b), p.q_rows = int(t), p.keys = int(keys), p.heads = int(h);
  p.kv_heads = int(hkv), p.head_dim = int(d);
  p.scale = opt.scale != 0.f ? opt.scale : 1.f / std::sqrt(float(d));
  p.causal = opt.causal;
  if (const Tensor& docs = opt.documents; docs.defined()) {
    NURI_CHECK(opt.causal, op, ": documents (a document mask) need causal attention");
    cuda::check_dev(op, "documents", docs, DType::i32);
    cuda::check_shape(op, "documents", docs, {2, b, keys});
    p.key_start = static_cast<const int*>(docs.raw());
  }
  p.splits = kernels::attention_decode_splits(p.batch, p.q_rows, p.heads, p.keys,
                                              kernels::current_device_info().sms);
  if (p.splits > 1) {
    p.partial = static_cast<float*>(be.workspace(kernels::attention_decode_workspace_bytes(
        p.batch, p.q_rows, p.heads, p.head_dim, p.splits)));
  }
  kernels::attention_decode(p, be.stream());
}

}  // namespace

void CudaBackend::attention_decode(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const Tensor& out, const AttentionOptions& opt) {
  if (attention_dtype("attention_decode", q) == DType::bf16) {
    decode_forward<__nv_bfloat16>(*this, q, k, v, out, opt);
  } else {
    decode_forward<__half>(*this, q, k, v, out, opt);
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
