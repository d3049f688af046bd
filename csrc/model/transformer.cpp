// Forward and backward of the transformer, written once against the Backend interface.
// Pre-norm blocks; each norm is fused with the residual add before it:
//   h_0 = embed(tokens)
//   block l: a = N1(h_l); h'_l = h_l + Attn(a); m = N2(h'_l); h_{l+1} = h'_l + MLP(m)
//   logits = N_f(h_L) · Wᵀ
// N1 of block l > 0 computes h_l = h'_{l-1} + mlp_out_{l-1} itself; N_f likewise.
#include "nuri/model/transformer.h"

#include <algorithm>
#include <cstring>
#include <functional>

#include "nuri/core/rng.h"

namespace nuri {

struct Transformer::Weights {
  struct Layer {
    Tensor ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b, fc_w, fc_b, proj_w, proj_b;
  };
  Tensor wte, wpe;  // [Vp, C], [Tmax, C] (absent with rope)
  std::vector<Layer> layers;
  Tensor lnf_w, lnf_b, lm_head;  // lm_head is wte when tied
};

struct Transformer::Acts {
  struct Layer {
    Tensor resid;                    // [B, T, C] h_l (block input)
    Tensor ln1, ln1_mean, ln1_rstd;  // [B, T, C], [B·T], [B·T]
    Tensor qkv;                      // [B, T, H + 2·Hkv, D] (q, k after rope)
    Tensor atty, lse;                // [B, T, H, D], [B, H, T]
    Tensor attproj;                  // [B, T, C]
    Tensor resid2;                   // [B, T, C] h'_l
    Tensor ln2, ln2_mean, ln2_rstd;
    Tensor fch;     // [B, T, F] gelu pre-activation | [B, T, 2F] gate|up
    Tensor act;     // [B, T, F]
    Tensor fcproj;  // [B, T, C]
  };
  int64_t b = 0, t = 0;
  std::vector<Layer> layers;
  Tensor resid_f, lnf, lnf_mean, lnf_rstd;  // [B, T, C], ..., [B·T]
  Tensor logits;                            // [B·T, Vp]; the backward overwrites it with dlogits
  Tensor losses, ce_lse, loss;              // [B·T], [B·T], [1]
  Tensor tokens, targets;                   // [B, T], [B·T] i32 on the device (non-CPU backends)
  Tensor d_resid, d_ln, d_qkv, d_atty, d_fch, d_act;  // gradient scratch, reused by every layer
};

namespace {

/// The view of the flat layout at `offset` with `shape` (undefined where the storage behind
/// the layout has no such range).
using ViewFn = std::function<Tensor(int64_t offset, const Shape& shape)>;

// Typed views in `layout` order.
void bind_views(const ModelConfig& cfg, const std::vector<ParamSpec>& layout,
                const ViewFn& view_of, std::vector<NamedTensor>& named, Transformer::Weights* w);

Tensor view_of(const Tensor& flat, int64_t offset, const Shape& shape) {
  return flat.slice(0, offset, offset + shape_numel(shape)).view(shape);
}

ViewFn views_of(const Tensor& flat) {
  return [flat](int64_t offset, const Shape& shape) { return view_of(flat, offset, shape); };
}

/// Views of a region holding the flat range [lo, hi) only; ranges outside it are undefined.
ViewFn views_of_region(const Tensor& region, int64_t lo, int64_t hi) {
  return [region, lo, hi](int64_t offset, const Shape& shape) {
    const int64_t n = shape_numel(shape);
    if (offset < lo || offset + n > hi) return Tensor();
    return view_of(region, offset - lo, shape);
  };
}

}  // namespace

// The binding is a friend-free helper: Weights is public inside the class for it.
namespace {
void bind_views(const ModelConfig& cfg, const std::vector<ParamSpec>& layout,
                const ViewFn& view_of, std::vector<NamedTensor>& named, Transformer::Weights* w) {
  named.clear();
  for (const auto& p : layout) named.push_back({p.name, view_of(p.offset, p.shape), p.decay});
  size_t i = 0;
  auto next = [&]() -> const NamedTensor& { return named.at(i++); };
  auto spec = [&]() -> const ParamSpec& { return layout.at(i); };
  const int64_t c = cfg.d_model, d = cfg.head_dim(), f = cfg.d_ff;
  const int64_t qkv_rows = (cfg.n_head + 2 * cfg.n_kv_head) * d;
  const bool gpt2 = cfg.mlp == MlpKind::gelu;
  const bool norm_bias = cfg.norm == NormKind::layernorm && cfg.bias;
  w->wte = next().tensor;
  if (cfg.position == PositionKind::learned) w->wpe = next().tensor;
  w->layers.assign(size_t(cfg.n_layer), {});
  for (auto& L : w->layers) {
    L.ln1_w = next().tensor;
    if (norm_bias) L.ln1_b = next().tensor;
    if (gpt2) {
      L.qkv_w = next().tensor;
      if (cfg.bias) L.qkv_b = next().tensor;
    } else {  // q, k, v consecutive: one [(H + 2Hkv)·D, C] view
      L.qkv_w = view_of(spec().offset, {qkv_rows, c});
      i += 3;
      if (cfg.bias) {
        L.qkv_b = view_of(spec().offset, {qkv_rows});
        i += 3;
      }
    }
    L.o_w = next().tensor;
    if (cfg.bias) L.o_b = next().tensor;
    L.ln2_w = next().tensor;
    if (norm_bias) L.ln2_b = next().tensor;
    if (gpt2) {
      L.fc_w = next().tensor;
      if (cfg.bias) L.fc_b = next().tensor;
    } else {  // gate, up consecutive: one [2F, C] view whose output is [gate | up]
      L.fc_w = view_of(spec().offset, {2 * f, c});
      i += 2;
      if (cfg.bias) {
        L.fc_b = view_of(spec().offset, {2 * f});
        i += 2;
      }
    }
    L.proj_w = next().tensor;
    if (cfg.bias) L.proj_b = next().tensor;
  }
  w->lnf_w = next().tensor;
  if (norm_bias) w->lnf_b = next().tensor;
  w->lm_head = cfg.tied_embeddings ? w->wte : next().tensor;
  NURI_ASSERT(i == named.size(), "layout has ", named.size(), " tensors, bound ", i);
}
}  // namespace

Transformer::Transformer(const ModelConfig& cfg, std::shared_ptr<Backend> backend, uint64_t seed)
    : cfg_(cfg), backend_(std::move(backend)), layout_(param_layout(cfg)) {
  NURI_CHECK(backend_ != nullptr, "Transformer: backend is null");
  compute_ = backend_->compute_dtype();
  NURI_CHECK(compute_ == DType::f32 || compute_ == DType::bf16, "Transformer: backend ",
             backend_->name(), " computes in ", dtype_name(compute_),
             "; the model supports f32 and bf16");
  const int64_t total = layout_.back().offset + layout_.back().numel();
  total_ = total;
  master_hi_ = total;
  param_buf_ = backend_->empty({total});
  grad_buf_ = backend_->empty({total});
  if (compute_ != DType::f32) cparam_buf_ = backend_->empty({total}, compute_);
  w_ = std::make_unique<Weights>();
  g_ = std::make_unique<Weights>();
  acts_ = std::make_unique<Acts>();
  std::vector<NamedTensor> compute_views;  // the ops read these; params_ are the masters
  bind_views(cfg_, layout_, views_of(param_buf_), params_, w_.get());
  if (cparam_buf_.defined()) {
    bind_views(cfg_, layout_, views_of(cparam_buf_), compute_views, w_.get());
  }
  bind_views(cfg_, layout_, views_of(grad_buf_), grads_, g_.get());
  // The backward's units: the layout is [embeddings | layer 0 | ... | layer L-1 | head].
  {
    const bool norm_bias = cfg_.norm == NormKind::layernorm && cfg_.bias;
    const size_t n_emb = cfg_.position == PositionKind::learned ? 2 : 1;
    const size_t n_head = (norm_bias ? 2 : 1) + (cfg_.tied_embeddings ? 0 : 1);
    const size_t per_layer = (layout_.size() - n_emb - n_head) / size_t(cfg_.n_layer);
    NURI_ASSERT(n_emb + n_head + per_layer * size_t(cfg_.n_layer) == layout_.size(),
                "layout of ", layout_.size(), " tensors does not split into units");
    units_.push_back({layout_[layout_.size() - n_head].offset, total});
    for (int64_t l = cfg_.n_layer - 1; l >= 0; --l) {
      const size_t first = n_emb + size_t(l) * per_layer;
      units_.push_back({layout_[first].offset, layout_[first + per_layer].offset});
    }
    units_.push_back({0, layout_[n_emb].offset});
  }
  init_weights(seed);
  zero_grad();
}

Transformer::~Transformer() = default;
Transformer::Transformer(Transformer&&) noexcept = default;
Transformer& Transformer::operator=(Transformer&&) noexcept = default;

const Tensor& Transformer::parameter(const std::string& name) const {
  NURI_CHECK(!masters_sharded(), "parameter('", name, "'): this rank holds the f32 master "
             "weights of the flat range [", master_lo_, ", ", master_hi_, ") of ", total_,
             " only (ZeRO 1/2 shards them); gather them with Trainer::master_weights()");
  for (const auto& p : params_) {
    if (p.name == name) return p.tensor;
  }
  std::string hint;
  for (const auto& p : params_) {
    if (p.name.find(name) != std::string::npos || name.find(p.name) != std::string::npos) {
      hint += (hint.empty() ? "" : ", ") + p.name;
    }
  }
  NURI_CHECK(false, "no parameter named '", name, "'", hint.empty() ? "" : "; did you mean: ", hint,
             " (", params_.size(), " parameters, e.g. '", params_.front().name, "')");
}

void Transformer::init_weights(uint64_t seed) {
  Tensor host = Tensor::zeros({total_});
  for (const ParamSpec& p : layout_) {
    float* h = host.data<float>() + p.offset;
    if (p.init == InitKind::ones) {
      std::fill(h, h + p.numel(), 1.f);
    } else if (p.init == InitKind::normal) {
      const int64_t rows = p.init_rows >= 0 ? p.init_rows : p.shape[0];
      const int64_t n = rows * (p.numel() / p.shape[0]);
      Philox(seed, stream_id("init/" + p.name)).fill_normal(h, n, 0, 0.f, p.init_std);
    }
  }
  load_weights(host);
}

void Transformer::load_weights(const Tensor& host_flat) {
  NURI_CHECK(host_flat.defined() && host_flat.dtype() == DType::f32 &&
                 host_flat.device().is_cpu() && host_flat.is_contiguous() &&
                 host_flat.numel() == total_,
             "load_weights: expected all ", total_, " parameters as one contiguous f32 host "
             "tensor, got ", host_flat.defined() ? host_flat.str() : std::string("nothing"));
  const Tensor flat = host_flat.view({total_});
  backend_->copy(flat.slice(0, master_lo_, master_hi_), param_buf_);
  if (!cparam_buf_.defined()) return;
  Tensor copy = Tensor::empty({total_}, compute_);
  const float* src = flat.data<float>();
  bf16_t* dst = copy.data<bf16_t>();
  for (int64_t i = 0; i < total_; ++i) dst[i] = f32_to_bf16(src[i]);
  backend_->copy(copy, cparam_buf_);
}

void Transformer::sync_compute_weights() {
  if (!cparam_buf_.defined()) return;
  NURI_CHECK(!masters_sharded(), "sync_compute_weights: this rank holds the master weights of "
             "[", master_lo_, ", ", master_hi_, ") only; pass all of them to load_weights()");
  // Through the host: this runs after loading weights, not per step (AdamW writes the compute
  // copy itself).
  Tensor master = Tensor::empty({total_}, DType::f32);
  backend_->copy(param_buf_, master);
  load_weights(master);
}

void Transformer::shard_master_weights(int64_t lo, int64_t hi) {
  NURI_CHECK(cparam_buf_.defined(), "shard_master_weights: the model computes in ",
             dtype_name(compute_), " on its master weights, so every rank needs all of them");
  NURI_CHECK(0 <= lo && lo <= hi && hi <= total_, "shard_master_weights: [", lo, ", ", hi,
             ") is not a range of the ", total_, " parameters");
  NURI_CHECK(!masters_sharded(), "shard_master_weights: already sharded to [", master_lo_, ", ",
             master_hi_, ")");
  Tensor mine = backend_->empty({hi - lo});
  backend_->copy(param_buf_.slice(0, lo, hi), mine);
  param_buf_ = mine;  // the whole master buffer goes back to the allocator
  params_.clear();
  master_lo_ = lo;
  master_hi_ = hi;
}

void Transformer::zero_grad() {
  if (grad_buf_.defined()) backend_->zero(grad_buf_);
}

Tensor GradHooks::region(int64_t lo, int64_t hi) {
  NURI_CHECK(false, "GradHooks::region(", lo, ", ", hi, "): these hooks do not own the "
             "gradient storage; pass own_storage = false to set_grad_hooks");
}

void Transformer::set_grad_hooks(GradHooks* hooks, bool own_storage) {
  if (hooks == nullptr) {  // detach (the storage, if the hooks owned it, stays theirs)
    NURI_CHECK(!own_storage, "set_grad_hooks: no hooks to own the gradients");
    hooks_ = nullptr;
    return;
  }
  NURI_CHECK(!hooks_own_grads_ || own_storage,
             "set_grad_hooks: the model's gradient storage was handed to hooks earlier and "
             "cannot come back; build a new model");
  hooks_ = hooks;
  if (own_storage && !hooks_own_grads_) {
    hooks_own_grads_ = true;
    grad_buf_ = Tensor();
    grads_.clear();
    *g_ = Weights{};
  }
}

void Transformer::plan(int64_t b, int64_t t) {
  if (acts_->b == b && acts_->t == t) return;
  NURI_CHECK(b > 0 && t > 0, "batch (", b, ") and sequence length (", t, ") must be positive");
  NURI_CHECK(t <= cfg_.max_seq_len, "sequence length ", t, " exceeds max_seq_len ",
             cfg_.max_seq_len, " of the model");
  *acts_ = Acts{};  // release the old plan before allocating the new one
  Backend& be = *backend_;
  const int64_t c = cfg_.d_model, d = cfg_.head_dim(), h = cfg_.n_head, hkv = cfg_.n_kv_head;
  const int64_t f = cfg_.d_ff, bt = b * t;
  const bool ln = cfg_.norm == NormKind::layernorm;
  const int64_t fch_width = cfg_.mlp == MlpKind::gelu ? f : 2 * f;
  Acts& a = *acts_;
  const DType ad = compute_;  // activations; saved statistics and the loss are f32
  auto act = [&](const Shape& s) { return be.empty(s, ad); };
  a.b = b;
  a.t = t;
  a.layers.resize(size_t(cfg_.n_layer));
  for (auto& L : a.layers) {
    L.resid = act({b, t, c});
    L.ln1 = act({b, t, c});
    if (ln) L.ln1_mean = be.empty({bt});
    L.ln1_rstd = be.empty({bt});
    L.qkv = act({b, t, h + 2 * hkv, d});
    L.atty = act({b, t, h, d});
    L.lse = be.empty({b, h, t});
    L.attproj = act({b, t, c});
    L.resid2 = act({b, t, c});
    L.ln2 = act({b, t, c});
    if (ln) L.ln2_mean = be.empty({bt});
    L.ln2_rstd = be.empty({bt});
    L.fch = act({b, t, fch_width});
    L.act = act({b, t, f});
    L.fcproj = act({b, t, c});
  }
  a.resid_f = act({b, t, c});
  a.lnf = act({b, t, c});
  if (ln) a.lnf_mean = be.empty({bt});
  a.lnf_rstd = be.empty({bt});
  a.logits = act({bt, cfg_.padded_vocab()});
  a.losses = be.empty({bt});
  a.ce_lse = be.empty({bt});
  a.loss = be.empty({1});
  if (!be.device().is_cpu()) {  // the step's token ids, copied in by every forward
    a.tokens = be.empty({b, t}, DType::i32);
    a.targets = be.empty({bt}, DType::i32);
  }
  a.d_resid = act({b, t, c});
  a.d_ln = act({b, t, c});
  a.d_qkv = act({b, t, h + 2 * hkv, d});
  a.d_atty = act({b, t, h, d});
  a.d_fch = act({b, t, fch_width});
  a.d_act = act({b, t, f});
}

void Transformer::check_tokens(const Tensor& tokens, const char* what, bool allow_ignore) const {
  NURI_CHECK(tokens.defined() && tokens.dtype() == DType::i32 && tokens.dim() == 2 &&
                 tokens.device().is_cpu() && tokens.is_contiguous(),
             what, " must be a contiguous [B, T] i32 host tensor, got ", tokens.str());
  const int32_t* p = tokens.data<int32_t>();
  const int64_t t = tokens.size(1);
  for (int64_t i = 0; i < tokens.numel(); ++i) {
    if (allow_ignore && p[i] == -100) continue;
    NURI_CHECK(p[i] >= 0 && p[i] < cfg_.vocab_size, what, ": id ", p[i], " at batch ", i / t,
               ", position ", i % t, " is outside the vocabulary [0, ", cfg_.vocab_size, ")");
  }
}

// Norm forward: layernorm or rmsnorm by config; residual may be absent.
static void norm_fwd(Backend& be, const ModelConfig& cfg, const Tensor& x, const Tensor& residual,
                     const Tensor& w, const Tensor& b, const Tensor& sum, const Tensor& y,
                     const Tensor& mean, const Tensor& rstd) {
  if (cfg.norm == NormKind::layernorm) {
    be.layernorm(x, residual, w, b, cfg.norm_eps, sum, y, mean, rstd);
  } else {
    be.rmsnorm(x, residual, w, cfg.norm_eps, sum, y, rstd);
  }
}

static void norm_bwd(Backend& be, const ModelConfig& cfg, const Tensor& dy, const Tensor& s,
                     const Tensor& w, const Tensor& mean, const Tensor& rstd, const Tensor& dsum,
                     const Tensor& ds, const Tensor& dw, const Tensor& db) {
  if (cfg.norm == NormKind::layernorm) {
    be.layernorm_backward(dy, s, w, mean, rstd, dsum, ds, dw, db, true);
  } else {
    be.rmsnorm_backward(dy, s, w, rstd, dsum, ds, dw, true);
  }
}

void Transformer::run_forward(const Tensor& tokens) {
  check_tokens(tokens, "tokens", false);
  const int64_t b = tokens.size(0), t = tokens.size(1);
  plan(b, t);
  Backend& be = *backend_;
  Acts& a = *acts_;
  const Weights& W = *w_;
  const int64_t h = cfg_.n_head, hkv = cfg_.n_kv_head, c = cfg_.d_model;
  Tensor dev_tokens = tokens;
  if (a.tokens.defined()) {
    dev_tokens = a.tokens;
    be.copy(tokens, dev_tokens);
  }
  const Tensor wte = W.wte.slice(0, 0, cfg_.vocab_size);
  be.embedding(dev_tokens, wte, W.wpe, a.layers[0].resid);
  AttentionOptions causal;
  for (int64_t l = 0; l < cfg_.n_layer; ++l) {
    auto& L = a.layers[size_t(l)];
    const auto& P = W.layers[size_t(l)];
    if (l == 0) {
      norm_fwd(be, cfg_, L.resid, Tensor(), P.ln1_w, P.ln1_b, Tensor(), L.ln1, L.ln1_mean,
               L.ln1_rstd);
    } else {
      const auto& prev = a.layers[size_t(l - 1)];
      norm_fwd(be, cfg_, prev.fcproj, prev.resid2, P.ln1_w, P.ln1_b, L.resid, L.ln1, L.ln1_mean,
               L.ln1_rstd);
    }
    be.matmul(L.ln1, P.qkv_w, P.qkv_b, L.qkv.view({b, t, -1}), Activation::none, Tensor(),
              Tensor());
    Tensor q = L.qkv.slice(2, 0, h), k = L.qkv.slice(2, h, h + hkv),
           v = L.qkv.slice(2, h + hkv, h + 2 * hkv);
    if (cfg_.position == PositionKind::rope) {
      be.rope(q, q, cfg_.rope_theta, 0);
      be.rope(k, k, cfg_.rope_theta, 0);
    }
    be.attention(q, k, v, L.atty, L.lse, causal);
    be.matmul(L.atty.view({b, t, -1}), P.o_w, P.o_b, L.attproj, Activation::none, Tensor(),
              Tensor());
    norm_fwd(be, cfg_, L.attproj, L.resid, P.ln2_w, P.ln2_b, L.resid2, L.ln2, L.ln2_mean,
             L.ln2_rstd);
    if (cfg_.mlp == MlpKind::gelu) {
      be.matmul(L.ln2, P.fc_w, P.fc_b, L.act, Activation::gelu, L.fch, Tensor());
    } else {
      be.matmul(L.ln2, P.fc_w, P.fc_b, L.fch, Activation::none, Tensor(), Tensor());
      be.swiglu(L.fch, L.act);
    }
    be.matmul(L.act, P.proj_w, P.proj_b, L.fcproj, Activation::none, Tensor(), Tensor());
  }
  const auto& last = a.layers.back();
  norm_fwd(be, cfg_, last.fcproj, last.resid2, W.lnf_w, W.lnf_b, a.resid_f, a.lnf, a.lnf_mean,
           a.lnf_rstd);
  be.matmul(a.lnf.view({b * t, c}), W.lm_head, Tensor(), a.logits, Activation::none, Tensor(),
            Tensor());
  last_tokens_ = dev_tokens;
}

float Transformer::forward(const Tensor& tokens, const Tensor& targets) {
  const Tensor loss = forward_loss(tokens, targets);
  Tensor host = Tensor::empty({1}, DType::f32);
  backend_->copy(loss, host);
  return host.data<float>()[0];
}

Tensor Transformer::forward_loss(const Tensor& tokens, const Tensor& targets) {
  have_forward_ = false;
  check_tokens(targets, "targets", true);
  NURI_CHECK(targets.shape() == tokens.shape(), "targets ", shape_str(targets.shape()),
             " must have the shape of tokens ", shape_str(tokens.shape()));
  run_forward(tokens);
  Backend& be = *backend_;
  Acts& a = *acts_;
  Tensor tg = targets.view({-1});
  if (a.targets.defined()) {
    tg = a.targets;
    be.copy(targets.view({-1}), tg);
  }
  be.cross_entropy(a.logits, tg, cfg_.vocab_size, -100, a.losses, a.ce_lse, a.loss);
  last_targets_ = tg;
  have_forward_ = true;
  return a.loss;
}

Tensor Transformer::logits(const Tensor& tokens) {
  have_forward_ = false;
  run_forward(tokens);
  return acts_->logits.view({tokens.size(0), tokens.size(1), cfg_.padded_vocab()});
}

void Transformer::backward(float loss_scale) {
  NURI_CHECK(have_forward_,
             "backward() needs a forward(tokens, targets) before it (and only "
             "one backward per forward: the logits buffer now holds gradients)");
  have_forward_ = false;
  Backend& be = *backend_;
  Acts& a = *acts_;
  const Weights& W = *w_;
  // Gradient views: the model's own buffer, or, when the hooks own the storage, each unit's
  // views bound to the region the hooks give for it just before the unit's backward.
  const bool own = hooks_own_grads_;
  NURI_CHECK(!own || hooks_ != nullptr, "backward(): the model's gradients were handed to hooks "
             "that have been detached; attach hooks that own the storage again");
  Weights owned;
  if (own) owned.layers.assign(size_t(cfg_.n_layer), {});
  const Weights& G = own ? owned : *g_;
  const size_t last = units_.size() - 1;  // the embeddings' unit
  auto open = [&](size_t u) {
    if (!own) return;
    const auto [lo, hi] = units_[u];
    const Tensor region = hooks_->region(lo, hi);
    NURI_CHECK(region.defined() && region.numel() == hi - lo && region.dtype() == DType::f32 &&
                   region.is_contiguous() && region.device() == backend_->device(),
               "GradHooks::region(", lo, ", ", hi, ") must give ", hi - lo,
               " contiguous f32 elements on ", backend_->device().str(), ", got ",
               region.defined() ? region.str() : std::string("an undefined tensor"));
    Weights r;
    std::vector<NamedTensor> named;
    bind_views(cfg_, layout_, views_of_region(region, lo, hi), named, &r);
    if (u == 0) {
      owned.lnf_w = r.lnf_w;
      owned.lnf_b = r.lnf_b;
      if (!cfg_.tied_embeddings) owned.lm_head = r.lm_head;
    } else if (u == last) {
      owned.wte = r.wte;
      owned.wpe = r.wpe;
      if (cfg_.tied_embeddings) owned.lm_head = r.wte;
    } else {
      const size_t l = size_t(cfg_.n_layer) - u;
      owned.layers[l] = r.layers[l];
    }
  };
  auto done = [&](size_t u) {
    if (own) {  // drop the unit's views, so the hooks can free its region once it is reduced
      if (u == 0) {
        owned.lnf_w = owned.lnf_b = Tensor();
        if (!cfg_.tied_embeddings) owned.lm_head = Tensor();
      } else if (u == last) {
        owned.wte = owned.wpe = owned.lm_head = Tensor();
      } else {
        owned.layers[size_t(cfg_.n_layer) - u] = {};
      }
    }
    if (hooks_) hooks_->ready(units_[u].first, units_[u].second);
  };
  if (cfg_.tied_embeddings) open(last);  // the LM head's gradient goes into wte
  open(0);
  const int64_t b = a.b, t = a.t, c = cfg_.d_model, h = cfg_.n_head, hkv = cfg_.n_kv_head;
  // dlogits overwrite the logits (the forward values are not needed any more).
  be.cross_entropy_backward(a.logits, last_targets_, a.ce_lse, cfg_.vocab_size, -100, loss_scale,
                            a.logits);
  const Tensor lnf2d = a.lnf.view({b * t, c});
  be.matmul_backward_input(a.logits, W.lm_head, a.d_ln.view({b * t, c}), false, Tensor());
  be.matmul_backward_weight(a.logits, lnf2d, G.lm_head, true);
  norm_bwd(be, cfg_, a.d_ln, a.resid_f, W.lnf_w, a.lnf_mean, a.lnf_rstd, Tensor(), a.d_resid,
           G.lnf_w, G.lnf_b);
  done(0);
  AttentionOptions causal;
  for (int64_t l = cfg_.n_layer - 1; l >= 0; --l) {
    const size_t unit = size_t(cfg_.n_layer - l);
    open(unit);
    auto& L = a.layers[size_t(l)];
    const auto& P = W.layers[size_t(l)];
    const auto& D = G.layers[size_t(l)];
    // MLP: d_resid is the gradient at h_{l+1} = h'_l + fcproj.
    if (cfg_.mlp == MlpKind::gelu) {
      be.matmul_backward_input(a.d_resid, P.proj_w, a.d_fch, false, L.fch);  // through GELU
    } else {
      be.matmul_backward_input(a.d_resid, P.proj_w, a.d_act, false, Tensor());
      be.swiglu_backward(L.fch, a.d_act, a.d_fch);
    }
    be.matmul_backward_weight(a.d_resid, L.act, D.proj_w, true);
    if (D.proj_b.defined()) be.matmul_backward_bias(a.d_resid, D.proj_b, true);
    be.matmul_backward_input(a.d_fch, P.fc_w, a.d_ln, false, Tensor());
    be.matmul_backward_weight(a.d_fch, L.ln2, D.fc_w, true);
    if (D.fc_b.defined()) be.matmul_backward_bias(a.d_fch, D.fc_b, true);
    norm_bwd(be, cfg_, a.d_ln, L.resid2, P.ln2_w, L.ln2_mean, L.ln2_rstd, a.d_resid, a.d_resid,
             D.ln2_w, D.ln2_b);
    // Attention: d_resid is now the gradient at h'_l = h_l + attproj.
    const Tensor atty2d = L.atty.view({b, t, h * cfg_.head_dim()});
    be.matmul_backward_input(a.d_resid, P.o_w, a.d_atty.view({b, t, -1}), false, Tensor());
    be.matmul_backward_weight(a.d_resid, atty2d, D.o_w, true);
    if (D.o_b.defined()) be.matmul_backward_bias(a.d_resid, D.o_b, true);
    Tensor q = L.qkv.slice(2, 0, h), k = L.qkv.slice(2, h, h + hkv),
           v = L.qkv.slice(2, h + hkv, h + 2 * hkv);
    Tensor dq = a.d_qkv.slice(2, 0, h), dk = a.d_qkv.slice(2, h, h + hkv),
           dv = a.d_qkv.slice(2, h + hkv, h + 2 * hkv);
    be.attention_backward(q, k, v, L.atty, L.lse, a.d_atty, dq, dk, dv, causal);
    if (cfg_.position == PositionKind::rope) {
      be.rope_backward(dq, dq, cfg_.rope_theta, 0);
      be.rope_backward(dk, dk, cfg_.rope_theta, 0);
    }
    const Tensor dqkv = a.d_qkv.view({b, t, -1});
    be.matmul_backward_input(dqkv, P.qkv_w, a.d_ln, false, Tensor());
    be.matmul_backward_weight(dqkv, L.ln1, D.qkv_w, true);
    if (D.qkv_b.defined()) be.matmul_backward_bias(dqkv, D.qkv_b, true);
    norm_bwd(be, cfg_, a.d_ln, L.resid, P.ln1_w, L.ln1_mean, L.ln1_rstd, a.d_resid, a.d_resid,
             D.ln1_w, D.ln1_b);
    done(unit);
  }
  if (!cfg_.tied_embeddings) open(last);
  be.embedding_backward(last_tokens_, a.d_resid, G.wte.slice(0, 0, cfg_.vocab_size), G.wpe, true);
  done(last);
}

}  // namespace nuri
