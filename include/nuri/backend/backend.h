// The Backend interface: every op the model needs, forward and backward, on one device.
// model/ calls only this; adding a device means adding a Backend in backend/ and nothing else.
//
// Conventions for every op:
//  - Tensors are handles; arguments marked [out] are written through (they must already exist
//    with the stated shape). An undefined Tensor() means "absent" for optional arguments.
//  - Shapes are in the comments: [M, K] etc. Leading dimensions of row-major activations may be
//    folded ([B, T, C] is accepted where [M, C] is written, M = B*T).
//  - Parameter gradients take `accumulate`: true adds into the existing gradient (micro-batch
//    accumulation, tied embeddings), false overwrites it.
//  - Every op validates shapes, dtypes and devices and throws nuri::Error naming the op and the
//    offending values.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "nuri/core/rope.h"
#include "nuri/core/tensor.h"

namespace nuri {

enum class Activation { none, gelu };

struct AttentionOptions {
  bool causal = true;
  float scale = 0.f;  ///< softmax scale; 0 means 1/sqrt(head_dim)
  /// Backward: dq with bits that do not depend on scheduling (the CPU backend always is; the
  /// CUDA backend then runs a separate dq pass instead of f32 atomics: 7 tile products, not 5).
  bool deterministic = true;
  /// Packed documents (causal only; undefined: none): [2, B, T] i32 on the backend's device, as
  /// document_bounds() makes it. Row 0 is key_start: query t sees keys [key_start[b, t], t];
  /// row 1 is query_end: key t is seen by queries [t, query_end[b, t]). Both describe the same
  /// runs of whole documents (check_document_bounds); the query-major kernels read the first,
  /// the key-major ones the second, each for its own rows.
  Tensor documents{};
};

/// The document bounds of tokens [B, T] (i32, host) split at each `separator`: for
/// AttentionOptions::documents, [2, B, T] i32 on the host. The separator is the last token of the
/// document it ends (`separator_starts` false: `ids <|endoftext|>`, as nuri tokenize and Llama 3
/// lay documents out; the next document starts at t + 1), or the first token of the one it starts
/// (true: `<|endoftext|> ids`, as llm.c's GPT-2 shards). A row's first document starts at 0.
Tensor document_bounds(const Tensor& tokens, int32_t separator, bool separator_starts = false);
/// Each token's position counted from its document's start, t - key_start[b, t], from bounds
/// [2, B, T] (i32, host: document_bounds): [B, T] i32 on the host, the rows of a learned
/// position table that packed documents read (embedding()'s `positions`), so a document packed
/// after others sees the positions it would alone.
Tensor document_positions(const Tensor& bounds);
/// Throws nuri::Error (naming `op`, the row and the position) unless bounds [2, B, T] (i32, host)
/// describe runs of whole documents: key_start[b, t] is t where a document starts (t = 0 or
/// query_end[b, t - 1] = t) and key_start[b, t - 1] otherwise, query_end[b, t] is where t's
/// document ends (the next start, or T).
void check_document_bounds(const char* op, const Tensor& bounds);

struct AdamWParams {
  float lr = 3e-4f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  ///< decoupled: p -= lr * wd * p, for tensors with decay = true
  int64_t step = 1;           ///< 1-based step number, for bias correction
  float grad_scale = 1.0f;    ///< multiplies every gradient first (gradient clipping)
  /// How param_bf16 copies are rounded: to nearest even (false), or stochastically (true): the
  /// f32 bits plus 16 random bits, truncated, so the copy is unbiased. The bits are Philox4x32-10
  /// (core/rng.h) with key = seed and counter = (element / 4, tensor index in the list, step),
  /// word element % 4, low 16 bits: the same on every backend, bit for bit.
  bool stochastic_rounding = false;
  uint64_t seed = 0;
};

/// One parameter tensor and its state for AdamW; all four have the same shape, f32.
struct AdamWTensor {
  Tensor param;  ///< [in/out]
  Tensor grad;   ///< [in]
  Tensor m;      ///< [in/out] first moment
  Tensor v;      ///< [in/out] second moment
  bool decay = true;
  Tensor param_bf16{};  ///< [out] optional: bf16 copy of param after the update
};

/// The gradient-clipping factor: min(1, max_norm / (norm + 1e-6)); 1 when max_norm <= 0.
float clip_coefficient(float norm, float max_norm);

/// The head dims the CUDA backends' attention kernels are compiled for (kernels/attention.h is
/// checked against this list where it is compiled); the CPU backend takes any. The planner
/// reads it for GPU profiles, which need no CUDA build.
inline constexpr int64_t kCudaAttentionHeadDims[] = {64, 128};
/// "64, 128"
std::string cuda_attention_head_dims_text();

class Backend {
 public:
  virtual ~Backend() = default;

  /// "cpu", "cuda-emu" or "cuda".
  virtual std::string name() const = 0;
  virtual Device device() const = 0;
  virtual std::shared_ptr<Allocator> allocator() const = 0;
  /// Waits for all queued work (no-op on the CPU).
  virtual void synchronize() {}
  /// The dtype a model computes in on this backend (activations and the compute copy of the
  /// weights; master weights, gradients, optimizer state and statistics stay f32): f32 on the
  /// CPU, bf16 on CUDA.
  virtual DType compute_dtype() const { return DType::f32; }
  /// Whether attention runs with heads of `head_dim` here (CUDA: kCudaAttentionHeadDims).
  virtual bool attention_head_dim_supported(int64_t /*head_dim*/) const { return true; }

  /// New uninitialized tensor on this backend's device.
  Tensor empty(const Shape& shape, DType dtype = DType::f32) const {
    return Tensor::empty(shape, dtype, allocator());
  }
  /// [out] t = 0.
  virtual void zero(const Tensor& t) = 0;
  /// Copies `src` (any device) into `dst` (any device); same shape and dtype, contiguous.
  /// `src` may be changed or freed as soon as copy returns; a copy into host memory has
  /// arrived when it returns. A copy from the host onto a device need not wait for the device
  /// (the CUDA backend stages up to 4 MiB in pinned memory and returns): later ops on this
  /// backend see the data.
  virtual void copy(const Tensor& src, const Tensor& dst) = 0;

  // ---- matmul ----------------------------------------------------------------------------
  /// y [M, N] = act(x [M, K] · w [N, K]ᵀ + bias [N]) + residual [M, N]; bias and residual may
  /// be absent, and residual may alias y (y += the layer's output: a residual stream updated in
  /// place). With act == gelu, pre [M, N] receives the pre-activation x·wᵀ + bias for the
  /// backward (required then).
  virtual void matmul(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                      Activation act, const Tensor& pre, const Tensor& residual) = 0;
  /// dx [M, K] (+)= dy [M, N] · w [N, K]. When gelu_pre [M, K] is given, the result is
  /// multiplied by gelu'(gelu_pre) (the GELU backward of the layer below, fused); then
  /// accumulate must be false.
  virtual void matmul_backward_input(const Tensor& dy, const Tensor& w, const Tensor& dx,
                                     bool accumulate, const Tensor& gelu_pre) = 0;
  /// dw [N, K] (+)= dy [M, N]ᵀ · x [M, K].
  virtual void matmul_backward_weight(const Tensor& dy, const Tensor& x, const Tensor& dw,
                                      bool accumulate) = 0;
  /// dbias [N] (+)= Σ_m dy [M, N].
  virtual void matmul_backward_bias(const Tensor& dy, const Tensor& dbias, bool accumulate) = 0;

  // ---- elementwise activations -----------------------------------------------------------
  /// y = gelu(x), the tanh approximation GPT-2 uses. Any shape, contiguous.
  virtual void gelu(const Tensor& x, const Tensor& y) = 0;
  /// dx = dy · gelu'(x). dx may alias dy.
  virtual void gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx) = 0;
  /// x [M, 2F] holds [gate | up] along the last dim; y [M, F] = silu(gate) · up.
  virtual void swiglu(const Tensor& x, const Tensor& y) = 0;
  /// dx [M, 2F] from dy [M, F] and the forward input x [M, 2F].
  virtual void swiglu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx) = 0;

  // ---- embeddings ------------------------------------------------------------------------
  /// out [B, T, C] = wte [V, C][tokens [B, T] (i32)] + wpe [Tmax, C][p]; wpe may be absent
  /// (rotary models). p is t, or positions[b, t] when `positions` ([B, T] i32 on the backend's
  /// device, with wpe only) is given: packed documents each counted from 0
  /// (Transformer::set_document_separator). A token outside [0, V) or a position outside
  /// [0, Tmax) is an error naming its place.
  virtual void embedding(const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                         const Tensor& positions, const Tensor& out) = 0;
  /// dwte [V, C] (+)= scatter of dout [B, T, C] by token; dwpe [Tmax, C] (+)= scatter of dout by
  /// position (Σ_b dout[b, t] at row t without `positions`; rows no position reaches are left,
  /// or zeroed when overwriting). Deterministic: the result does not depend on thread count or
  /// scheduling.
  virtual void embedding_backward(const Tensor& tokens, const Tensor& dout, const Tensor& dwte,
                                  const Tensor& dwpe, const Tensor& positions,
                                  bool accumulate) = 0;

  /// Vocabulary-parallel embedding (tensor parallelism): wte [Vl, C] holds the vocabulary's rows
  /// [row_lo, row_lo + Vl). out [B, T, C] = wte[token - row_lo] for tokens in that range, 0 for
  /// the others, + wpe [Tmax, C][p] when wpe is given (p as embedding()); summed over the ranks
  /// of the group this is embedding() of the whole table. Tokens must be in [0, vocab_size) (an
  /// error otherwise, as embedding()); row_lo >= 0.
  virtual void embedding_shard(const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                               const Tensor& positions, const Tensor& out, int64_t row_lo,
                               int64_t vocab_size) = 0;
  /// Its backward: dwte [Vl, C] (+)= the scatter of dout by token - row_lo over the tokens in
  /// range (the others are skipped); dwpe as embedding_backward() when given. Deterministic.
  virtual void embedding_shard_backward(const Tensor& tokens, const Tensor& dout,
                                        const Tensor& dwte, const Tensor& dwpe,
                                        const Tensor& positions, int64_t row_lo,
                                        int64_t vocab_size, bool accumulate) = 0;

  // ---- normalization, fused with the residual add ------------------------------------------
  /// s = x + residual when residual is given (then written to `sum` [M, C]), else s = x;
  /// y [M, C] = (s - mean) · rstd · weight [C] + bias [C] (bias may be absent);
  /// mean [M], rstd [M] are saved for the backward.
  virtual void layernorm(const Tensor& x, const Tensor& residual, const Tensor& weight,
                         const Tensor& bias, float eps, const Tensor& sum, const Tensor& y,
                         const Tensor& mean, const Tensor& rstd) = 0;
  /// ds [M, C] = dsum + ∂/∂s of the layernorm given dy, where dsum (may be absent) is the
  /// gradient reaching s from the residual stream. ds may alias dsum. dweight, dbias (+)=.
  virtual void layernorm_backward(const Tensor& dy, const Tensor& s, const Tensor& weight,
                                  const Tensor& mean, const Tensor& rstd, const Tensor& dsum,
                                  const Tensor& ds, const Tensor& dweight, const Tensor& dbias,
                                  bool accumulate) = 0;
  /// As layernorm without centering or bias: y = s · rstd · weight, rstd = 1/sqrt(mean(s²)+eps).
  virtual void rmsnorm(const Tensor& x, const Tensor& residual, const Tensor& weight, float eps,
                       const Tensor& sum, const Tensor& y, const Tensor& rstd) = 0;
  virtual void rmsnorm_backward(const Tensor& dy, const Tensor& s, const Tensor& weight,
                                const Tensor& rstd, const Tensor& dsum, const Tensor& ds,
                                const Tensor& dweight, bool accumulate) = 0;

  // ---- rotary position embedding (rotate-half convention) ----------------------------------
  /// x, y [B, T, H, D] (any strides, unit stride in D; y may alias x). For i < D/2 and position
  /// p = pos_offset + t, angle a = p · rope.frequency(i, D) (theta^(-2i/D), rescaled as
  /// rope.scaling says: nuri/core/rope.h):
  ///   y[i] = x[i] cos a - x[i + D/2] sin a;  y[i + D/2] = x[i + D/2] cos a + x[i] sin a.
  virtual void rope(const Tensor& x, const Tensor& y, const Rope& rope, int64_t pos_offset) = 0;
  /// The transpose (rotation by -a): dx from dy. dx may alias dy.
  virtual void rope_backward(const Tensor& dy, const Tensor& dx, const Rope& rope,
                             int64_t pos_offset) = 0;

  // ---- attention ---------------------------------------------------------------------------
  /// q [B, T, H, D], k, v [B, T, Hkv, D] with Hkv dividing H (query head h reads kv head
  /// h / (H / Hkv)); any strides with unit stride in D, so q, k, v may be views of one fused
  /// QKV buffer. out [B, T, H, D] (contiguous); lse [B, H, T] f32 (log-sum-exp of the scaled
  /// scores, saved for the backward). Never materializes a T×T matrix.
  virtual void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                         const Tensor& lse, const AttentionOptions& opt) = 0;
  /// dq, dk, dv (shapes of q, k, v; overwritten; any strides with unit stride in D, e.g. views
  /// of one fused dQKV buffer) from dout [B, T, H, D] and the forward's out and lse. dk, dv sum
  /// over the query heads that share a kv head.
  virtual void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& lse, const Tensor& dout,
                                  const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                  const AttentionOptions& opt) = 0;
  /// Attention of queries that continue a sequence (decoding with a key/value cache): q
  /// [B, Tq, H, D] holds the sequence's rows Tk - Tq .. Tk - 1 and k, v [B, Tk, Hkv, D] its keys
  /// and values so far (Tq <= Tk); out [B, Tq, H, D]. Query i sees the keys attention() over
  /// the Tk rows shows row Tk - Tq + i: causal, [key_start, Tk - Tq + i] (documents
  /// [2, B, Tk]); otherwise all. Strides as attention's; no lse and no backward (inference).
  /// Costs Tq·Tk where attention() over the Tk rows costs Tk² (decode computes one row per
  /// token).
  virtual void attention_decode(const Tensor& q, const Tensor& k, const Tensor& v,
                                const Tensor& out, const AttentionOptions& opt) = 0;

  // ---- loss --------------------------------------------------------------------------------
  /// Softmax cross-entropy over logits [N, Vp] (f32) where only the first vocab_size columns are
  /// real (the rest is padding and never counted). targets [N] (i32) in [0, vocab_size) or
  /// ignore_index. losses [N] per row (0 where ignored), lse [N] saved, loss [1] = mean over
  /// rows not ignored (0 if there are none).
  virtual void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t vocab_size,
                             int32_t ignore_index, const Tensor& losses, const Tensor& lse,
                             const Tensor& loss) = 0;
  /// dlogits [N, Vp] = dloss · ∂loss/∂logits: (softmax - onehot) / count on real columns of
  /// rows not ignored; 0 on padded columns and ignored rows. dlogits may alias logits.
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                      const Tensor& lse, int64_t vocab_size, int32_t ignore_index,
                                      float dloss, const Tensor& dlogits) = 0;

  /// Vocabulary-parallel cross-entropy, part 1 of 2 (tensor parallelism): logits [N, Vl] are
  /// the columns [col_lo, col_lo + Vl) of a vocabulary of vocab_size ids (those >= vocab_size
  /// are padding and never enter); targets [N] are whole-vocabulary ids (or ignore_index).
  /// lse [N] = the log-sum-exp over this slice's real columns (-inf if it has none);
  /// losses [N] = lse - logits[target - col_lo] when the target is in this slice, lse when it
  /// is elsewhere, 0 where ignored. Requires 0 <= col_lo < vocab_size.
  virtual void cross_entropy_shard(const Tensor& logits, const Tensor& targets,
                                   int64_t vocab_size, int32_t ignore_index, int64_t col_lo,
                                   const Tensor& losses, const Tensor& lse) = 0;
  /// Part 2: part_lse, part_losses [S, N] are the S slices' lse and losses (all-gathered, in
  /// slice order). lse [N] = log Σ_s exp(part_lse[s]); the target logit is
  /// Σ_s (part_lse[s] - part_losses[s]) (only its owner contributes); losses [N] = lse - target
  /// logit (0 where ignored); loss [1] = their mean over rows not ignored (0 if none): the
  /// outputs of cross_entropy() over the whole row.
  virtual void cross_entropy_merge(const Tensor& part_lse, const Tensor& part_losses,
                                   const Tensor& targets, int32_t ignore_index,
                                   const Tensor& losses, const Tensor& lse,
                                   const Tensor& loss) = 0;
  /// The backward on the slice: dlogits [N, Vl] = dloss · (softmax - onehot) / count with the
  /// whole row's lse [N] (from cross_entropy_merge), the onehot at target - col_lo when in the
  /// slice, 0 on padded columns and ignored rows; count = the rows not ignored (the same on
  /// every slice). dlogits may alias logits. Needs nothing from the other slices.
  virtual void cross_entropy_shard_backward(const Tensor& logits, const Tensor& targets,
                                            const Tensor& lse, int64_t vocab_size,
                                            int32_t ignore_index, int64_t col_lo, float dloss,
                                            const Tensor& dlogits) = 0;

  // ---- optimizer -------------------------------------------------------------------------
  /// out [1] (f32) = sqrt(Σ over all tensors of Σ g²).
  virtual void global_norm(const std::vector<Tensor>& grads, const Tensor& out) = 0;
  /// One AdamW step over every tensor (bias-corrected moments, decoupled weight decay),
  /// gradients multiplied by hp.grad_scale first.
  virtual void adamw(const std::vector<AdamWTensor>& tensors, const AdamWParams& hp) = 0;
};

/// Names of the backends this build can create, e.g. {"cpu"}.
std::vector<std::string> available_backends();
/// A new backend instance by name; throws nuri::Error listing the available ones otherwise.
/// "cuda" (or "cuda-emu") is device 0 and "cuda:N" device N; a process of a multi-GPU job gets
/// its own device from backend_for_rank (nuri/dist/launch.h).
std::unique_ptr<Backend> make_backend(const std::string& name);

/// One CUDA device as the runtime describes it.
struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int major = 0, minor = 0;  ///< compute capability (sm_<major><minor>)
  int64_t total_bytes = 0;   ///< global memory
  int sms = 0;               ///< streaming multiprocessors
};
/// The CUDA devices this build can use: empty in builds without the CUDA backend or without a
/// device (never throws); the emulated build reports its emulated device.
std::vector<CudaDeviceInfo> cuda_devices();

}  // namespace nuri
