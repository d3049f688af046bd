// The transformer: the flat parameter, gradient and compute buffers, the units' views of them,
// and the forward and backward as the units' calls in order (csrc/model/units.h): embedding,
// blocks, head; the backward in reverse, handing each unit's gradients to GradHooks as it
// finishes them and taking each unit's weights from ParamHooks when they are set.
#include "nuri/model/transformer.h"

#include <algorithm>
#include <cstring>

#include <unistd.h>

#include "model/units.h"
#include "nuri/core/rng.h"

namespace nuri {

using model::Keep;
using model::UnitWeights;

// One micro-batch's activations, from its forward to its backward (pipeline schedules keep
// several in flight; otherwise there is one).
struct Transformer::Slot {
  Tensor emb_out;                        // [B, T, C] h_0 (sequence parallelism: this rank's rows)
  std::vector<model::BlockActs> blocks;  // per block of the stage
  model::HeadActs head;
  Tensor tokens, targets;  // [B, T], [B·T] i32 on the device (non-CPU backends)
  Tensor last_tokens, last_targets;      // what the forward read, for the backward
  Tensor documents;  // [2, B, T] i32: the forward's document bounds (document_separator)
  Tensor positions;  // [B, T] i32: each token's row of wpe, counted from its document's start
  bool have_forward = false;
};

struct Transformer::Impl {
  std::vector<model::UnitDecl> units;  // layout order: embedding, blocks, head (those held)
  std::vector<UnitWeights> w;          // what the ops read: the compute copy, or the f32 masters
  std::vector<UnitWeights> g;          // the model's own gradient views
  int emb = -1, head = -1;             // the units' indices (-1: not on this stage)
  int64_t first = 0, last = 0;         // the blocks [first, last)
  Recompute recompute = Recompute::none;
  int64_t recompute_every = 1;
  int n_slots = 1;
  // The activation plan for one (batch, sequence length).
  int64_t b = 0, t = 0;
  std::vector<Slot> slots;
  Tensor emb_whole;  // sequence parallelism on the first stage: [B, T, C], whole rows
  Tensor in_x, in_r;  // a later stage: the next forward's input h = x + r
  Tensor d_out;       // a non-last stage: the next backward's output gradient
  Tensor whole_row;   // tensor parallelism: logits_row()'s and decode()'s gathered columns
  bool have_backward = false;  // scratch.d_resid holds the last backward's input gradient
  model::BlockScratch scratch;
  // decode(): the window's length, the rows whose keys and values the cache holds, each
  // block's cache [1, W, 2Hkv, D] (this rank's kv heads), the shared rows' buffers, and device
  // copies of the call's ids.
  struct Decode {
    int64_t window = 0, rows = 0;
    std::vector<int32_t> ids;           // the cached rows' token ids
    int64_t separator = -1;             // and the document separator they were computed with
    bool separator_starts = false;
    std::vector<Tensor> cache;
    model::DecodeActs acts;
    Tensor tokens, positions, documents;
    Tensor out_x, out_r;  // a stage before the last: the rows' residual stream, for the next
  };
  std::unique_ptr<Decode> decode;

  // Frees the activation plan (planned again by the next forward).
  void release_plan() {
    b = t = 0;
    slots.clear();
    emb_whole = in_x = in_r = d_out = Tensor();
    have_backward = false;
    scratch = {};
  }
  size_t block_unit(int64_t l) const { return size_t(l - first + (emb >= 0 ? 1 : 0)); }
  bool first_stage() const { return first == 0; }
  bool last_stage() const { return head >= 0; }
  bool whole() const { return first_stage() && last_stage(); }
};

namespace {
/// A host i32 tensor on the backend's device, into `dst` (its buffer reused while the shape
/// holds); on the CPU `dst` is the host tensor itself.
void to_device_i32(Backend& be, const Tensor& host, Tensor& dst) {
  if (be.device().is_cpu()) {
    dst = host;
    return;
  }
  if (!dst.defined() || dst.shape() != host.shape()) {
    MemoryScope activations(MemoryCategory::activations);
    dst = be.empty(host.shape(), DType::i32);
  }
  be.copy(host, dst);
}

/// On the CPU, refuses (before anything is laid out) a model whose f32 weights alone, of the
/// part this rank holds, exceed the machine's memory: it would grow until killed.
void check_fits_host(const ModelConfig& cfg, WeightShard shard, TensorParallelRank tp,
                     PipelineStage stage) {
  cfg.validate();  // the count below is then exact
  const double all = double(cfg.num_params());
  const int64_t last = stage.last < 0 ? cfg.n_layer : stage.last;
  double held = all / std::max(tp.size, 1) * double(std::max<int64_t>(last - stage.first, 1)) /
                double(cfg.n_layer);
  if (shard.hi > shard.lo) held = double(shard.hi - shard.lo);
  const double memory = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  NURI_CHECK(memory <= 0 || 4 * held <= memory, "the model's ", all, " parameters (",
             cfg.summary(), ") need ", 4 * held / double(1 << 30), " GiB for ",
             held < all ? "this part's" : "their", " f32 weights alone, more than this "
             "machine's ", memory / double(1 << 30), " GiB of memory; make the model smaller "
             "or split it over ranks (tensor or pipeline parallelism, or ZeRO 3's shards)");
}
}  // namespace

const char* recompute_name(Recompute r) {
  switch (r) {
    case Recompute::none: return "none";
    case Recompute::selective: return "selective";
    case Recompute::full: return "full";
  }
  return "?";
}

Transformer::Transformer(const ModelConfig& cfg, std::shared_ptr<Backend> backend, uint64_t seed)
    : Transformer(cfg, std::move(backend), seed, WeightShard{}) {}

Transformer::Transformer(const ModelConfig& cfg, std::shared_ptr<Backend> backend, uint64_t seed,
                         WeightShard shard)
    : Transformer(cfg, std::move(backend), seed, shard, TensorParallelRank{}) {}

Transformer::Transformer(const ModelConfig& cfg, std::shared_ptr<Backend> backend, uint64_t seed,
                         WeightShard shard, TensorParallelRank tp)
    : Transformer(cfg, std::move(backend), seed, shard, tp, PipelineStage{}) {}

Transformer::Transformer(const ModelConfig& cfg, std::shared_ptr<Backend> backend, uint64_t seed,
                         WeightShard shard, TensorParallelRank tp, PipelineStage stage,
                         WeightInit init)
    : cfg_(cfg), backend_(std::move(backend)), impl_(std::make_unique<Impl>()), tp_(tp) {
  NURI_CHECK(backend_ != nullptr, "Transformer: backend is null");
  if (backend_->device().is_cpu()) check_fits_host(cfg_, shard, tp, stage);
  compute_ = backend_->compute_dtype();
  NURI_CHECK(compute_ == DType::f32 || compute_ == DType::bf16, "Transformer: backend ",
             backend_->name(), " computes in ", dtype_name(compute_),
             "; the model supports f32 and bf16");
  impl_->units = model::model_units(cfg_, tp_, stage);
  // (model_units validated the config)
  NURI_CHECK(backend_->attention_head_dim_supported(cfg_.head_dim()), "model: heads of ",
             cfg_.head_dim(), cfg_.head_dim_override > 0 ? " (head_dim)" : " (d_model / n_head)",
             " have no attention kernel on ", backend_->name(), ", whose kernels take head dims ",
             cuda_attention_head_dims_text(), ": choose n_head so that d_model / n_head is one "
             "of them, or set head_dim, or train on the CPU backend");
  impl_->first = stage.first;
  impl_->last = stage.last < 0 ? cfg_.n_layer : stage.last;
  for (size_t u = 0; u < impl_->units.size(); ++u) {
    if (impl_->units[u].kind == model::UnitKind::embedding) impl_->emb = int(u);
    if (impl_->units[u].kind == model::UnitKind::head) impl_->head = int(u);
  }
  for (const auto& u : impl_->units) layout_.insert(layout_.end(), u.params.begin(), u.params.end());
  total_ = impl_->units.back().hi;
  // A shard (ZeRO 3): this rank's weights alone, and no gradient buffer (the data parallelism's
  // hooks hold the gradients); the whole model never exists on this rank.
  const bool sharded = shard.hi > 0;
  NURI_CHECK(!sharded || (0 <= shard.lo && shard.lo <= shard.hi && shard.hi <= total_),
             "Transformer: shard [", shard.lo, ", ", shard.hi, ") is not a range of the ", total_,
             " parameters");
  master_lo_ = compute_lo_ = sharded ? shard.lo : 0;
  master_hi_ = sharded ? shard.hi : total_;
  parameters_sharded_ = sharded;
  hooks_own_grads_ = sharded;
  {
    MemoryScope weights(MemoryCategory::parameters);
    param_buf_ = backend_->empty({master_hi_ - master_lo_});
    if (compute_ != DType::f32) cparam_buf_ = backend_->empty({master_hi_ - master_lo_}, compute_);
  }
  if (!sharded) {
    MemoryScope gradients(MemoryCategory::gradients);
    grad_buf_ = backend_->empty({total_});
  }
  bind_views();
  // The backward finishes the units in reverse layout order: head, blocks L-1 .. 0, embedding.
  for (auto it = impl_->units.rbegin(); it != impl_->units.rend(); ++it) {
    units_.push_back({it->lo, it->hi});
  }
  if (init == WeightInit::random) {
    init_weights(seed);
  } else {
    if (param_buf_.numel() > 0) backend_->zero(param_buf_);  // a ZeRO 3 shard may be empty
    if (cparam_buf_.defined() && cparam_buf_.numel() > 0) backend_->zero(cparam_buf_);
  }
  zero_grad();
}

void Transformer::bind_views() {
  Impl& m = *impl_;
  params_.clear();
  grads_.clear();
  m.w.clear();
  m.g.clear();
  const model::ViewFn masters = model::views_of(param_buf_);
  const model::ViewFn compute = model::views_of(cparam_buf_.defined() ? cparam_buf_ : param_buf_);
  for (const auto& u : m.units) {
    if (parameters_sharded_) {  // a shard: every unit's weights come from the ParamHooks
      m.w.emplace_back();
    } else {
      model::named_views(u, masters, params_);
      m.w.push_back(model::bind_unit(u, compute));
    }
    if (grad_buf_.defined()) {
      model::named_views(u, model::views_of(grad_buf_), grads_);
      m.g.push_back(model::bind_unit(u, model::views_of(grad_buf_)));
    } else {
      m.g.emplace_back();
    }
  }
}

Transformer::~Transformer() = default;
Transformer::Transformer(Transformer&&) noexcept = default;
Transformer& Transformer::operator=(Transformer&&) noexcept = default;

const Tensor& Transformer::parameter(const std::string& name) const {
  // (ZeRO 3, on one rank too, whose shard is the whole range: no parameter views.)
  NURI_CHECK(!parameters_sharded_, "parameter('", name, "'): this model's weights are ZeRO 3 "
             "shards, held for the data parallelism, not as named parameters; gather them with "
             "Trainer::master_weights()");
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

std::pair<int64_t, int64_t> Transformer::held_range() const {
  const int64_t compute_hi =
      cparam_buf_.defined() ? compute_lo_ + cparam_buf_.numel() : master_hi_;
  return {std::min(master_lo_, compute_lo_), std::max(master_hi_, compute_hi)};
}

void Transformer::load_held_weights(const Tensor& host) {
  const auto [lo, hi] = held_range();
  NURI_CHECK(host.defined() && host.dtype() == DType::f32 && host.device().is_cpu() &&
                 host.is_contiguous() && host.numel() == hi - lo,
             "load_held_weights: expected the ", hi - lo, " weights of [", lo, ", ", hi,
             ") as one contiguous f32 host tensor, got ",
             host.defined() ? host.str() : std::string("nothing"));
  write_weights(host.data<float>(), lo, hi);
}

void Transformer::init_weights(uint64_t seed) {
  // Only the range this rank holds, element by element from (seed, name) over the logical
  // tensor: the values do not depend on how the model is sharded. Drawn a chunk of the flat
  // range at a time into one host buffer and written to the model's, so building a model holds
  // at most 64 MiB of host memory besides its own buffers (and the chunk's 32 MiB in bf16 on a
  // backend that computes in bf16).
  // (Not a structured binding: clang cannot capture one in a lambda in an OpenMP function.)
  const int64_t lo = held_range().first, hi = held_range().second;
  constexpr int64_t kChunk = int64_t(1) << 24;  // weights
  Tensor host = Tensor::empty({std::max<int64_t>(1, std::min(kChunk, hi - lo))}, DType::f32);
  float* base = host.data<float>();
  for (int64_t c0 = lo; c0 < hi; c0 += kChunk) {
    const int64_t c1 = std::min(hi, c0 + kChunk);
    std::fill(base, base + (c1 - c0), 0.f);
    for (const ParamSpec& p : layout_) {
      if (p.offset >= c1 || p.offset + p.numel() <= c0) continue;
      const int64_t cols = p.logical[0] > 0 ? p.logical_numel() / p.logical[0] : 0;
      // Padded rows stay 0.
      const int64_t drawn = (p.init_rows >= 0 ? p.init_rows : p.logical[0]) * cols;
      // A tensor-parallel slice draws the logical elements it holds, run by run.
      p.for_each_run([&](int64_t local, int64_t logical, int64_t n) {
        const int64_t a = std::max(p.offset + local, c0), b = std::min(p.offset + local + n, c1);
        if (a >= b) return;
        float* h = base + (a - c0);
        if (p.init == InitKind::ones) {
          std::fill(h, h + (b - a), 1.f);
        } else if (p.init == InitKind::normal) {
          const int64_t first = logical + (a - p.offset - local);  // a's logical element
          const int64_t m = std::min(b - a, drawn - first);
          if (m > 0) {
            Philox(seed, stream_id("init/" + p.name))
                .fill_normal(h, m, uint64_t(first), 0.f, p.init_std);
          }
        }
      });
    }
    write_weights(base, c0, c1);
  }
}

void Transformer::load_weights(const Tensor& host_flat) {
  NURI_CHECK(host_flat.defined() && host_flat.dtype() == DType::f32 &&
                 host_flat.device().is_cpu() && host_flat.is_contiguous() &&
                 host_flat.numel() == total_,
             "load_weights: expected all ", total_, " parameters as one contiguous f32 host "
             "tensor, got ", host_flat.defined() ? host_flat.str() : std::string("nothing"));
  write_weights(host_flat.data<float>(), 0, total_);
}

void Transformer::write_weights(const float* values, int64_t first, int64_t last) {
  // values[i] is flat element first + i: the masters and the compute copy (rounded to nearest
  // even) of the part of [first, last) this rank holds.
  const int64_t a = std::max(first, master_lo_), b = std::min(last, master_hi_);
  if (a < b) {
    backend_->copy(Tensor::from_blob(const_cast<float*>(values) + (a - first), {b - a},
                                     DType::f32, Device::cpu()),
                   param_buf_.slice(0, a - master_lo_, b - master_lo_));
  }
  if (!cparam_buf_.defined()) return;
  const int64_t c = std::max(first, compute_lo_),
                d = std::min(last, compute_lo_ + cparam_buf_.numel());
  if (c >= d) return;
  Tensor copy = Tensor::empty({d - c}, compute_);
  const float* src = values + (c - first);
  bf16_t* dst = copy.data<bf16_t>();
  for (int64_t i = 0; i < d - c; ++i) dst[i] = f32_to_bf16(src[i]);
  backend_->copy(copy, cparam_buf_.slice(0, c - compute_lo_, d - compute_lo_));
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
  MemoryScope weights(MemoryCategory::parameters);
  Tensor mine = backend_->empty({hi - lo});
  backend_->copy(param_buf_.slice(0, lo, hi), mine);
  param_buf_ = mine;  // the whole master buffer goes back to the allocator
  params_.clear();
  master_lo_ = lo;
  master_hi_ = hi;
}

void Transformer::shard_parameters(int64_t lo, int64_t hi) {
  NURI_CHECK(0 <= lo && lo <= hi && hi <= total_, "shard_parameters: [", lo, ", ", hi,
             ") is not a range of the ", total_, " parameters");
  NURI_CHECK(!masters_sharded() && !parameters_sharded_, "shard_parameters: the weights are "
             "sharded already");
  MemoryScope weights(MemoryCategory::parameters);
  Tensor mine = backend_->empty({hi - lo});
  backend_->copy(param_buf_.slice(0, lo, hi), mine);
  param_buf_ = mine;  // the whole buffers go back to the allocator
  if (cparam_buf_.defined()) {
    Tensor copy = backend_->empty({hi - lo}, compute_);
    backend_->copy(cparam_buf_.slice(0, lo, hi), copy);
    cparam_buf_ = copy;
  }
  master_lo_ = compute_lo_ = lo;
  master_hi_ = hi;
  parameters_sharded_ = true;
  params_.clear();
  for (auto& w : impl_->w) w = UnitWeights{};  // every unit's weights come from ParamHooks now
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
    for (auto& g : impl_->g) g = model::UnitWeights{};
  }
}

PipelineStage Transformer::stage() const { return {impl_->first, impl_->last}; }
bool Transformer::first_stage() const { return impl_->first_stage(); }
bool Transformer::last_stage() const { return impl_->last_stage(); }

void Transformer::set_micro_batch_slots(int n) {
  NURI_CHECK(n >= 1, "micro-batch slots (", n, ") must be >= 1");
  if (n == impl_->n_slots) return;
  impl_->n_slots = n;
  impl_->b = impl_->t = 0;  // planned again at the next forward
}

int Transformer::micro_batch_slots() const { return impl_->n_slots; }

void Transformer::set_recompute(Recompute mode, int64_t every) {
  NURI_CHECK(every >= 1, "recompute_every (", every, ") must be >= 1");
  if (mode == impl_->recompute && every == impl_->recompute_every) return;
  impl_->recompute = mode;
  impl_->recompute_every = every;
  impl_->b = impl_->t = 0;  // planned again at the next forward
}

Recompute Transformer::recompute() const { return impl_->recompute; }

void Transformer::set_sequence_parallel(bool on) {
  if (on == sp_) return;
  sp_ = on;
  impl_->b = impl_->t = 0;  // planned again at the next forward
}

void Transformer::set_document_separator(int64_t separator, bool starts) {
  NURI_CHECK(separator >= -1 && separator < cfg_.vocab_size, "set_document_separator(",
             separator, "): the separator must be a token id below the vocabulary size ",
             cfg_.vocab_size, ", or -1 (no document mask)");
  doc_separator_ = separator;
  doc_separator_starts_ = starts;
}

void Transformer::set_tensor_parallel_hooks(TensorParallelHooks* hooks) {
  if (hooks) {
    const TensorParallelRank p = hooks->place();
    NURI_CHECK(p.rank == tp_.rank && p.size == tp_.size, "set_tensor_parallel_hooks: the hooks "
               "are rank ", p.rank, " of ", p.size, ", the model rank ", tp_.rank, " of ",
               tp_.size, "; build the model with the group's place");
  }
  tp_hooks_ = hooks;
}

std::vector<std::pair<int64_t, int64_t>> Transformer::unit_ranges() const {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const auto& u : impl_->units) out.push_back({u.lo, u.hi});
  return out;
}

void Transformer::plan(int64_t b, int64_t t) {
  Impl& m = *impl_;
  if (m.b == b && m.t == t) return;
  NURI_CHECK(b > 0 && t > 0, "batch (", b, ") and sequence length (", t, ") must be positive");
  NURI_CHECK(t <= cfg_.max_seq_len, "sequence length ", t, " exceeds max_seq_len ",
             cfg_.max_seq_len, " of the model");
  check_sliding_window(cfg_, t);
  m.release_plan();  // before allocating the new one
  Backend& be = *backend_;
  MemoryScope activations(MemoryCategory::activations);
  const model::Ctx c{be, cfg_, b, t, compute_, tp_, tp_hooks_, sequence_parallel()};
  NURI_CHECK(!c.sp || (b * t) % tp_.size == 0, "sequence parallelism over ", tp_.size,
             " ranks splits the micro-batch's ", b * t, " token rows (", b, " x ", t,
             "); choose a micro-batch and sequence length whose product is a multiple of ",
             tp_.size);
  if (c.sp && m.first_stage()) m.emb_whole = be.empty({b, t, cfg_.d_model}, compute_);
  if (!m.first_stage()) {
    m.in_x = be.empty(c.stream_shape(), compute_);
    m.in_r = be.empty(c.stream_shape(), compute_);
  }
  if (!m.last_stage()) m.d_out = be.empty(c.stream_shape(), compute_);
  m.scratch = model::plan_scratch(c);
  const Keep recomputed = m.recompute == Recompute::full        ? Keep::input
                          : m.recompute == Recompute::selective ? Keep::products
                                                                : Keep::all;
  m.slots.resize(size_t(m.n_slots));
  for (Slot& s : m.slots) {
    if (m.first_stage()) s.emb_out = be.empty(c.stream_shape(), compute_);
    for (int64_t l = m.first; l < m.last; ++l) {
      const Keep keep = l % m.recompute_every == 0 ? recomputed : Keep::all;
      s.blocks.push_back(model::plan_block(c, keep, m.scratch));
    }
    if (m.last_stage()) s.head = model::plan_head(c);
    if (!be.device().is_cpu()) {  // the step's token ids, copied in by every forward
      if (m.first_stage()) s.tokens = be.empty({b, t}, DType::i32);
      if (m.last_stage()) s.targets = be.empty({b * t}, DType::i32);
    }
  }
  m.b = b;
  m.t = t;
}

void Transformer::prepare(int64_t b, int64_t t) { plan(b, t); }

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

namespace {

// A row of logits [padded_vocab] on the backend, as f32 on the host.
Tensor row_to_host(Backend& be, const Tensor& row) {
  Tensor out = Tensor::empty({row.numel()}, DType::f32);
  if (row.dtype() == DType::f32) {
    be.copy(row, out);
  } else {  // a bf16 model's logits
    Tensor host = Tensor::empty({row.numel()}, row.dtype());
    be.copy(row, host);
    const bf16_t* src = host.data<bf16_t>();
    float* dst = out.data<float>();
    for (int64_t j = 0; j < row.numel(); ++j) dst[j] = bf16_to_f32(src[j]);
  }
  return out;
}

// A rank's row of logits on the host, whole: under tensor parallelism (tp > 1) each rank holds
// its vocabulary columns, gathered in rank order into `whole` (made once, kept for the next
// call) with the group's hooks.
Tensor whole_row_to_host(Backend& be, int tp, TensorParallelHooks* hooks, int64_t padded_vocab,
                         Tensor& whole, Tensor row) {
  if (tp > 1) {
    if (!whole.defined()) whole = be.empty({padded_vocab}, row.dtype());
    hooks->all_gather(row, whole);
    hooks->wait();
    row = whole;
  }
  return row_to_host(be, row);
}

// A unit's weights for one pass: the model's own views, or what the ParamHooks give (released
// when this goes out of scope).
class UnitWeightsLease {
 public:
  UnitWeightsLease(ParamHooks* hooks, const model::UnitDecl& u, size_t unit,
                   const UnitWeights& own, bool backward, const Backend& be, DType dt)
      : hooks_(hooks), unit_(unit), backward_(backward) {
    if (!hooks_) {
      w_ = own;
      return;
    }
    const Tensor region = hooks_->acquire(unit, u.lo, u.hi, backward);
    NURI_CHECK(region.defined() && region.numel() == u.hi - u.lo && region.dtype() == dt &&
                   region.is_contiguous() && region.device() == be.device(),
               "ParamHooks::acquire(", u.name, ") must give ", u.hi - u.lo, " contiguous ",
               dtype_name(dt), " elements on ", be.device().str(), ", got ",
               region.defined() ? region.str() : std::string("an undefined tensor"));
    w_ = model::bind_unit(u, model::views_of_region(region, u.lo, u.hi));
  }
  ~UnitWeightsLease() {
    if (hooks_) {
      w_ = UnitWeights{};
      hooks_->release(unit_, backward_);
    }
  }
  UnitWeightsLease(const UnitWeightsLease&) = delete;
  UnitWeightsLease& operator=(const UnitWeightsLease&) = delete;
  const UnitWeights& operator*() const { return w_; }
  const UnitWeights* operator->() const { return &w_; }

 private:
  ParamHooks* hooks_;
  size_t unit_;
  bool backward_;
  UnitWeights w_;
};

}  // namespace

Transformer::Slot& Transformer::slot(int k, int64_t b, int64_t t) {
  plan(b, t);
  NURI_CHECK(k >= 0 && k < impl_->n_slots, "micro-batch slot ", k, " is outside the model's ",
             impl_->n_slots, " (set_micro_batch_slots)");
  return impl_->slots[size_t(k)];
}

Transformer::Slot& Transformer::planned_slot(int k, const char* what) {
  NURI_CHECK(impl_->b > 0, what, ": the model has no activation plan yet; call prepare(batch, "
             "sequence length) or run a forward first");
  return slot(k, impl_->b, impl_->t);
}

void Transformer::run_forward(Slot& s, const Tensor& tokens) {
  Backend& be = *backend_;
  Impl& m = *impl_;
  auto to_device = [&](const Tensor& host, Tensor& dst) { to_device_i32(be, host, dst); };
  if (doc_separator_ < 0) {
    s.documents = Tensor();
    s.positions = Tensor();
  } else {  // the bounds of this micro-batch's documents, on the device
    const Tensor host = document_bounds(tokens, int32_t(doc_separator_), doc_separator_starts_);
    to_device(host, s.documents);
    if (m.first_stage() && cfg_.position == PositionKind::learned) {
      to_device(document_positions(host), s.positions);
    } else {  // rotary: the scores depend on the distance alone, which the documents keep
      s.positions = Tensor();
    }
  }
  const model::Ctx c{be,  cfg_,      m.b,        m.t, compute_, tp_, tp_hooks_,
                     sequence_parallel(), s.documents};
  NURI_CHECK(param_hooks_ || !parameters_sharded_, "this model holds the weights of [",
             master_lo_, ", ", master_hi_, ") only (ZeRO 3): its forward and backward need the "
             "ParamHooks that gather them (the Trainer's data parallelism sets them)");
  auto lease = [&](size_t u) {
    return std::make_unique<UnitWeightsLease>(param_hooks_, m.units[u], u, m.w[u], false, be,
                                              compute_);
  };
  NURI_CHECK(tp_.size == 1 || tp_hooks_, "this model is rank ", tp_.rank, " of ", tp_.size,
             " of a tensor-parallel group: its forward and backward need the group's "
             "collectives (set_tensor_parallel_hooks; the Trainer on a grid sets them)");
  Tensor x, r;  // the residual stream h_l = x + r
  if (m.first_stage()) {
    Tensor dev_tokens = tokens;
    if (s.tokens.defined()) {
      dev_tokens = s.tokens;
      be.copy(tokens, dev_tokens);
    }
    const auto emb = lease(size_t(m.emb));
    if (tp_.size > 1) {  // this rank's vocabulary rows; the positions added once
      // The CUDA backend's embedding waits for its token copy on the host: first wait, with
      // the timeout, for the collectives still queued (an earlier micro-batch's backward).
      tp_hooks_->wait();
      const Tensor whole = c.sp ? m.emb_whole : s.emb_out;
      const Tensor wpe = c.once((*emb)->wpe);
      be.embedding_shard(dev_tokens, (*emb)->wte, wpe, wpe.defined() ? s.positions : Tensor(),
                         whole, c.vocab_lo(), cfg_.vocab_size);
      c.sum_rows(whole, s.emb_out);
    } else {
      be.embedding(dev_tokens, (*emb)->wte.slice(0, 0, cfg_.vocab_size), (*emb)->wpe, s.positions,
                   s.emb_out);
    }
    s.last_tokens = dev_tokens;
    x = s.emb_out;
  } else {  // the previous stage's output
    x = m.in_x;
    r = m.in_r;
  }
  MemoryScope activations(MemoryCategory::activations);  // a block's input, at its first forward
  for (int64_t l = m.first; l < m.last; ++l) {
    model::BlockActs& a = s.blocks[size_t(l - m.first)];
    const auto w = lease(m.block_unit(l));
    model::block_forward(c, **w, a, x, r);
    x = a.fcproj;
    r = a.resid2;
  }
  if (!m.last_stage()) return;
  const auto head = lease(size_t(m.head));
  const auto tied = cfg_.tied_embeddings ? lease(size_t(m.emb)) : nullptr;
  model::head_forward(c, **head, tied ? (*tied)->wte : (*head)->lm_head, s.head, x, r);
}

float Transformer::forward(const Tensor& tokens, const Tensor& targets) {
  const Tensor loss = forward_loss(tokens, targets);
  if (tp_hooks_) tp_hooks_->wait();
  Tensor host = Tensor::empty({1}, DType::f32);
  backend_->copy(loss, host);
  return host.data<float>()[0];
}

Tensor Transformer::forward_loss(const Tensor& tokens, const Tensor& targets) {
  NURI_CHECK(impl_->whole(), "forward(): this model is the pipeline stage of blocks [",
             impl_->first, ", ", impl_->last, "); run its micro-batches with forward_stage()");
  return forward_stage(0, tokens, targets);
}

Tensor Transformer::forward_stage(int k, const Tensor& tokens, const Tensor& targets) {
  Impl& m = *impl_;
  check_tokens(tokens, "tokens", false);
  if (m.last_stage()) {
    check_tokens(targets, "targets", true);
    NURI_CHECK(targets.shape() == tokens.shape(), "targets ", shape_str(targets.shape()),
               " must have the shape of tokens ", shape_str(tokens.shape()));
  }
  Slot& s = slot(k, tokens.size(0), tokens.size(1));
  s.have_forward = false;
  run_forward(s, tokens);
  if (!m.last_stage()) {
    s.have_forward = true;
    return Tensor();
  }
  Backend& be = *backend_;
  Tensor tg = targets.view({-1});
  if (s.targets.defined()) {
    tg = s.targets;
    be.copy(targets.view({-1}), tg);
  }
  model::HeadActs& h = s.head;
  if (tp_.size > 1) {
    // No rank holds the whole row: each slice's log-sum-exp and target logit, gathered (2·t·B·T
    // floats), then merged into the whole row's.
    const model::Ctx c{be, cfg_, m.b, m.t, compute_, tp_, tp_hooks_, sequence_parallel()};
    tp_hooks_->wait();  // the CUDA backend's target check waits on the host (as above)
    be.cross_entropy_shard(h.logits, tg, cfg_.vocab_size, -100, c.vocab_lo(), h.shard_losses,
                           h.shard_lse);
    tp_hooks_->all_gather(h.shard_lse, h.part_lse.view({-1}));
    tp_hooks_->all_gather(h.shard_losses, h.part_losses.view({-1}));
    be.cross_entropy_merge(h.part_lse, h.part_losses, tg, -100, h.losses, h.ce_lse, h.loss);
  } else {
    be.cross_entropy(h.logits, tg, cfg_.vocab_size, -100, h.losses, h.ce_lse, h.loss);
  }
  s.last_targets = tg;
  s.have_forward = true;
  return h.loss;
}

Tensor Transformer::logits(const Tensor& tokens) {
  NURI_CHECK(impl_->whole(), "logits(): this model is the pipeline stage of blocks [",
             impl_->first, ", ", impl_->last, "); logits need the whole model (a pipeline's "
             "stages: logits_stage(), as Pipeline::logits_row runs it)");
  return logits_stage(tokens);
}

Tensor Transformer::logits_stage(const Tensor& tokens) {
  check_tokens(tokens, "tokens", false);
  Slot& s = slot(0, tokens.size(0), tokens.size(1));
  s.have_forward = false;
  run_forward(s, tokens);
  if (!impl_->last_stage()) {  // its output, for the next stage (stage_output(0))
    s.have_forward = true;
    return Tensor();
  }
  return s.head.logits.view({tokens.size(0), tokens.size(1), -1});
}

Tensor Transformer::logits_row(int64_t pos) {
  Impl& m = *impl_;
  NURI_CHECK(m.last_stage(), "logits_row(): this model is the pipeline stage of blocks [",
             m.first, ", ", m.last, "), not the last one: it has no logits");
  Slot& s = planned_slot(0, "logits_row()");
  NURI_CHECK(pos >= 0 && pos < m.t, "logits_row(", pos, "): the position is outside the last "
             "forward's ", m.t);
  const Tensor row = s.head.logits.view({m.b, m.t, -1}).select(0, 0).select(0, pos);  // contiguous
  return whole_row_to_host(*backend_, tp_.size, tp_hooks_, cfg_.padded_vocab(), m.whole_row, row);
}

Tensor Transformer::decode(const Tensor& tokens, int64_t r0, int64_t r1) {
  NURI_CHECK(impl_->whole(), "decode(): this model is the pipeline stage of blocks [",
             impl_->first, ", ", impl_->last, "): a stage decodes with decode_stage(), as "
             "Pipeline::decode_row runs it");
  return decode_stage(tokens, r0, r1, Tensor(), Tensor());
}

void Transformer::check_decode(const Tensor& tokens, int64_t r0, int64_t r1) const {
  const Impl& m = *impl_;
  NURI_CHECK(tp_.size == 1 || tp_hooks_, "decode(): this model is rank ", tp_.rank, " of ",
             tp_.size, " of a tensor-parallel group: decoding needs the group's collectives "
             "(set_tensor_parallel_hooks; the Trainer on a grid sets them), and every rank of "
             "the group calls it");
  NURI_CHECK(param_hooks_ || !parameters_sharded_, "decode(): this model holds the weights of [",
             master_lo_, ", ", master_hi_, ") only (ZeRO 3): decoding needs the ParamHooks that "
             "gather them (the Trainer's data parallelism sets them)");
  check_tokens(tokens, "tokens", false);
  NURI_CHECK(tokens.size(0) == 1, "decode(): tokens must be one window [1, W], got ",
             tokens.str());
  const int64_t window = tokens.size(1);
  NURI_CHECK(window <= cfg_.max_seq_len, "decode(): the window of ", window,
             " exceeds max_seq_len ", cfg_.max_seq_len, " of the model");
  check_sliding_window(cfg_, window);
  NURI_CHECK(0 <= r0 && r0 < r1 && r1 <= window, "decode(): the rows [", r0, ", ", r1,
             ") must be a nonempty range inside the window of ", window);
  if (!m.decode || m.decode->window != window) {  // (a cache is started: r0 = 0)
    NURI_CHECK(r0 == 0, "decode(): rows from ", r0, " need the cache of a window of ", window,
               " started with r0 = 0", m.decode ? ", and the cache is of another window" : "");
    return;
  }
  const Impl::Decode& d = *m.decode;
  NURI_CHECK(r0 <= d.rows, "decode(): rows from ", r0, " need the rows before cached, and the "
             "cache holds ", d.rows, "; call with r0 <= ", d.rows);
  const int32_t* ids = tokens.data<int32_t>();
  NURI_CHECK(r0 == 0 || (d.separator == doc_separator_ &&
                         d.separator_starts == doc_separator_starts_),
             "decode(): the document separator changed since the cached rows were computed; "
             "start again with r0 = 0");
  for (int64_t i = 0; i < r0; ++i) {
    NURI_CHECK(ids[i] == d.ids[size_t(i)], "decode(): token ", i, " is ", ids[i],
               " where the cached rows were computed with ", d.ids[size_t(i)],
               "; the rows before r0 must be the cached ones (start again with r0 = 0)");
  }
}

Tensor Transformer::decode_stage(const Tensor& tokens, int64_t r0, int64_t r1, const Tensor& x_in,
                                 const Tensor& r_in) {
  Backend& be = *backend_;
  Impl& m = *impl_;
  // Every refusal comes before anything changes.
  check_decode(tokens, r0, r1);
  const int64_t window = tokens.size(1), n = r1 - r0;
  if (m.first_stage()) {
    NURI_CHECK(!x_in.defined() && !r_in.defined(), "decode_stage(): the first stage embeds "
               "its tokens and takes no x_in or r_in");
  } else {  // the previous stage's rows of the residual stream
    for (const Tensor* t : {&x_in, &r_in}) {
      NURI_CHECK(t->defined() && t->shape() == Shape({1, n, cfg_.d_model}) &&
                     t->dtype() == compute_ && t->device() == be.device() && t->is_contiguous(),
                 "decode_stage(): the stage of blocks [", m.first, ", ", m.last, ") needs the "
                 "previous stage's decode_output() of the rows [", r0, ", ", r1, "): two "
                 "contiguous ", dtype_name(compute_), " [1, ", n, ", ", cfg_.d_model, "] tensors "
                 "on its backend's device, got ", t->defined() ? t->str() : "nothing");
    }
  }
  if (!m.decode || m.decode->window != window) {
    end_decode();
    m.release_plan();  // the training activations make room for the cache (as logits() would)
    MemoryScope activations(MemoryCategory::activations);
    auto d = std::make_unique<Impl::Decode>();
    d->window = window;
    const model::Ctx c{be, cfg_, 1, window, compute_, tp_, nullptr, false};
    d->acts = model::plan_decode(c, window);
    for (int64_t l = m.first; l < m.last; ++l) {  // (this rank's kv heads)
      d->cache.push_back(be.empty({1, window, 2 * c.kv_heads(), cfg_.head_dim()}, compute_));
      be.zero(d->cache.back());
    }
    m.decode = std::move(d);
  }
  Impl::Decode& d = *m.decode;
  const int32_t* ids = tokens.data<int32_t>();
  // From here the rows from r0 on are being written: until this call ends, only those before
  // count as cached (a call that fails midway leaves no row claimed that a block lacks). The
  // rows past r1 keep finite values (zeros, or an earlier call's), which the mask keeps out.
  d.rows = r0;
  d.out_x = d.out_r = Tensor();
  // The keys attended. From r0 = 0 (every row new: attention()) the first r1 rows rounded up
  // to 64 (and at most W): few shapes, so a device backend's per-shape choices (the CUDA
  // backend's measured path) are made a few times a window, not at every prompt length. After
  // that attention_decode() runs the new rows only, against the r1 rows so far.
  const int64_t span = r0 == 0 ? std::min(window, (r1 + 63) / 64 * 64) : r1;
  // The call's ids on the device: its tokens, their positions (learned tables: from each
  // document's start with a separator), the document bounds of the rows attended.
  auto to_device = [&](const Tensor& host, Tensor& dst) { to_device_i32(be, host, dst); };
  Tensor prefix = Tensor::empty({1, span}, DType::i32);
  std::memcpy(prefix.raw(), tokens.raw(), size_t(span) * sizeof(int32_t));
  Tensor rows = Tensor::empty({1, n}, DType::i32);
  std::memcpy(rows.raw(), tokens.data<int32_t>() + r0, size_t(n) * sizeof(int32_t));
  to_device(rows, d.tokens);
  Tensor bounds;
  if (doc_separator_ >= 0) {
    bounds = document_bounds(prefix, int32_t(doc_separator_), doc_separator_starts_);
    to_device(bounds, d.documents);
  } else {
    d.documents = Tensor();
  }
  if (cfg_.position == PositionKind::learned) {
    Tensor pos = Tensor::empty({1, n}, DType::i32);
    const Tensor from = bounds.defined() ? document_positions(bounds) : Tensor();
    for (int64_t i = 0; i < n; ++i) {
      pos.data<int32_t>()[i] =
          from.defined() ? from.data<int32_t>()[r0 + i] : int32_t(r0 + i);
    }
    to_device(pos, d.positions);
  } else {
    d.positions = Tensor();
  }
  // (Tensor parallelism: the group's sums without sequence parallelism, whose row split a few
  // rows may not allow.)
  const model::Ctx c{be, cfg_, 1, n, compute_, tp_, tp_.size > 1 ? tp_hooks_ : nullptr, false};
  auto lease = [&](size_t u) {
    return std::make_unique<UnitWeightsLease>(param_hooks_, m.units[u], u, m.w[u], false, be,
                                              compute_);
  };
  const model::DecodeActs& a = d.acts;
  Tensor x = a.emb.slice(0, 0, n).view({1, n, cfg_.d_model}), r;
  if (!m.first_stage()) {
    x = x_in;
    r = r_in;
  } else {
    const auto emb = lease(size_t(m.emb));
    if (tp_.size > 1) {  // this rank's vocabulary rows, the positions added once, then the sum
      tp_hooks_->wait();  // (as run_forward: the embedding may wait on the host for its ids)
      const Tensor wpe = c.once((*emb)->wpe);
      be.embedding_shard(d.tokens, (*emb)->wte, wpe, wpe.defined() ? d.positions : Tensor(), x,
                         c.vocab_lo(), cfg_.vocab_size);
      c.sum_rows(x, x);
    } else {
      be.embedding(d.tokens, (*emb)->wte.slice(0, 0, cfg_.vocab_size), (*emb)->wpe,
                   d.positions, x);
    }
  }
  for (int64_t l = m.first; l < m.last; ++l) {
    const auto w = lease(m.block_unit(l));
    model::block_decode(c, **w, a, d.cache[size_t(l - m.first)], x, r, r0, span, d.documents);
    x = a.fcproj.slice(0, 0, n).view({1, n, cfg_.d_model});
    r = a.resid2.slice(0, 0, n).view({1, n, cfg_.d_model});
  }
  d.rows = r1;
  d.ids.assign(ids, ids + r1);
  d.separator = doc_separator_;
  d.separator_starts = doc_separator_starts_;
  if (!m.last_stage()) {  // the rows' residual stream, for the next stage
    d.out_x = x;
    d.out_r = r;
    return Tensor();
  }
  const auto head = lease(size_t(m.head));
  const auto tied = cfg_.tied_embeddings ? lease(size_t(m.emb)) : nullptr;
  model::head_decode(c, **head, tied ? (*tied)->wte : (*head)->lm_head, a, x, r);
  return whole_row_to_host(be, tp_.size, tp_hooks_, cfg_.padded_vocab(), m.whole_row,
                           a.logits.view({-1}));
}

std::pair<Tensor, Tensor> Transformer::decode_output() const {
  const Impl& m = *impl_;
  NURI_CHECK(!m.last_stage() && m.decode && m.decode->out_x.defined() &&
                 m.decode->out_r.defined(),
             "decode_output(): ", m.last_stage() ? "the last stage returns its logits"
                                                 : "no decode_stage() call has finished here");
  return {m.decode->out_x, m.decode->out_r};
}

void Transformer::end_decode() { impl_->decode.reset(); }

std::pair<Tensor, Tensor> Transformer::stage_input() {
  NURI_CHECK(!impl_->first_stage(), "stage_input(): the first stage reads tokens, not the "
             "residual stream");
  planned_slot(0, "stage_input()");
  return {impl_->in_x, impl_->in_r};
}

std::pair<Tensor, Tensor> Transformer::stage_output(int k) {
  NURI_CHECK(!impl_->last_stage(), "stage_output(): the last stage ends in the loss");
  Slot& s = planned_slot(k, "stage_output()");
  NURI_CHECK(s.have_forward, "stage_output(", k, "): slot ", k, " holds no forward");
  return {s.blocks.back().fcproj, s.blocks.back().resid2};
}

Tensor Transformer::stage_output_grad() {
  NURI_CHECK(!impl_->last_stage(), "stage_output_grad(): the last stage's backward starts from "
             "its loss");
  planned_slot(0, "stage_output_grad()");
  return impl_->d_out;
}

Tensor Transformer::stage_input_grad() {
  NURI_CHECK(!impl_->first_stage(), "stage_input_grad(): the first stage's input is tokens");
  NURI_CHECK(impl_->have_backward, "stage_input_grad(): no backward has run since the "
             "activations were planned");
  return impl_->scratch.d_resid;
}

void Transformer::backward(float loss_scale) {
  NURI_CHECK(impl_->whole(), "backward(): this model is the pipeline stage of blocks [",
             impl_->first, ", ", impl_->last, "); run its micro-batches with backward_stage()");
  backward_stage(0, loss_scale);
}

void Transformer::backward_stage(int k, float loss_scale) {
  Impl& m = *impl_;
  NURI_CHECK(m.b > 0 && k >= 0 && k < m.n_slots && m.slots[size_t(k)].have_forward,
             "backward() needs a forward(tokens, targets) before it (and only "
             "one backward per forward: the logits buffer now holds gradients)",
             m.whole() ? "" : "; backward_stage(" + std::to_string(k) + ") needs a "
             "forward_stage(" + std::to_string(k) + ") before it");
  m.have_backward = false;
  Slot& s = m.slots[size_t(k)];
  s.have_forward = false;
  Backend& be = *backend_;
  const model::Ctx c{be,  cfg_,      m.b,        m.t, compute_, tp_, tp_hooks_,
                     sequence_parallel(), s.documents};
  // Gradient views: the model's own, or, when the hooks own the storage, each unit's views bound
  // to the region the hooks give for it just before the unit's backward, dropped after it (so
  // the hooks can free the region once it is reduced).
  const bool own = hooks_own_grads_;
  NURI_CHECK(!own || hooks_ != nullptr, "backward(): the model's gradients were handed to hooks "
             "that have been detached; attach hooks that own the storage again");
  std::vector<UnitWeights> regions(m.units.size());
  const std::vector<UnitWeights>& G = own ? regions : m.g;
  auto open = [&](size_t unit) {
    if (!own) return;
    const model::UnitDecl& u = m.units[unit];
    const Tensor region = hooks_->region(u.lo, u.hi);
    NURI_CHECK(region.defined() && region.numel() == u.hi - u.lo &&
                   region.dtype() == DType::f32 && region.is_contiguous() &&
                   region.device() == backend_->device(),
               "GradHooks::region(", u.lo, ", ", u.hi, ") must give ", u.hi - u.lo,
               " contiguous f32 elements on ", backend_->device().str(), ", got ",
               region.defined() ? region.str() : std::string("an undefined tensor"));
    regions[unit] = model::bind_unit(u, model::views_of_region(region, u.lo, u.hi));
  };
  auto done = [&](size_t unit) {
    if (own) regions[unit] = UnitWeights{};
    if (hooks_) hooks_->ready(m.units[unit].lo, m.units[unit].hi);
  };
  auto lease = [&](size_t u) {
    return std::make_unique<UnitWeightsLease>(param_hooks_, m.units[u], u, m.w[u], true, be,
                                              compute_);
  };
  // The head writes into the tied wte first: its unit opens with the head's.
  const bool tied_head = m.last_stage() && cfg_.tied_embeddings;
  const size_t emb = size_t(m.emb);
  if (m.last_stage()) {
    const size_t head = size_t(m.head);
    if (tied_head) open(emb);
    open(head);
    // dlogits overwrite the logits (the forward values are not needed any more).
    if (tp_.size > 1) {
      be.cross_entropy_shard_backward(s.head.logits, s.last_targets, s.head.ce_lse,
                                      cfg_.vocab_size, -100, c.vocab_lo(), loss_scale,
                                      s.head.logits);
    } else {
      be.cross_entropy_backward(s.head.logits, s.last_targets, s.head.ce_lse, cfg_.vocab_size,
                                -100, loss_scale, s.head.logits);
    }
    {
      const auto w = lease(head);
      const auto tied = tied_head ? lease(emb) : nullptr;
      model::head_backward(c, **w, tied ? (*tied)->wte : (*w)->lm_head, G[head],
                           tied_head ? G[emb].wte : G[head].lm_head, s.head, m.scratch.d_resid,
                           m.scratch.d_ln);
    }
    done(head);
  } else {  // the next stage's gradient of this stage's output
    be.copy(m.d_out, m.scratch.d_resid);
  }
  for (int64_t l = m.last - 1; l >= m.first; --l) {
    const size_t unit = m.block_unit(l);
    model::BlockActs& a = s.blocks[size_t(l - m.first)];
    open(unit);
    {
      const auto w = lease(unit);
      model::block_recompute(c, **w, a);
      model::block_backward(c, **w, G[unit], a, m.scratch);
    }
    done(unit);
  }
  m.have_backward = true;
  if (m.emb < 0) return;  // d_resid holds the gradient of this stage's input
  if (!tied_head) open(emb);
  if (m.first_stage()) {
    if (tp_.size > 1) {
      c.gather_rows(m.scratch.d_resid, m.emb_whole);
      tp_hooks_->wait();  // the CUDA backend's token copy waits on the host (as above)
      be.embedding_shard_backward(s.last_tokens, c.sp ? m.emb_whole : m.scratch.d_resid,
                                  G[emb].wte, G[emb].wpe,
                                  G[emb].wpe.defined() ? s.positions : Tensor(), c.vocab_lo(),
                                  cfg_.vocab_size, true);
    } else {
      be.embedding_backward(s.last_tokens, m.scratch.d_resid,
                            G[emb].wte.slice(0, 0, cfg_.vocab_size), G[emb].wpe, s.positions,
                            true);
    }
  }
  done(emb);  // the last stage's copy: the head's share of wte alone
}

}  // namespace nuri
