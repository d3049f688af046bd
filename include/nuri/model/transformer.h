// The decoder-only transformer as a sequence of Backend calls. Parameters (and gradients) live
// in one contiguous buffer each, with named views whose names map 1:1 to Hugging Face's. Where
// one fused product serves several named tensors (q/k/v, gate/up), those tensors are laid out
// next to each other so the fused weight is a view too. Activations are planned once per
// (batch, sequence length) and reused.
//
// Precision follows the backend's compute_dtype(): on the CPU everything is f32; on CUDA the
// parameters are f32 master weights with a bf16 compute copy (same layout, one more buffer) that
// the forward and backward read, activations are bf16, and gradients, optimizer state, saved
// statistics and the loss are f32.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "nuri/backend/backend.h"
#include "nuri/model/config.h"

namespace nuri {

enum class InitKind { normal, zeros, ones };

/// This rank's place in its tensor-parallel group (Megatron's layout): rank r of size t holds
/// heads [r·H/t, (r+1)·H/t) (and the matching kv heads), MLP columns [r·F/t, ...), and vocabulary
/// rows [r·Vp/t, ...). size 1: the whole model.
struct TensorParallelRank {
  int rank = 0, size = 1;
};

/// Checks that tensor parallelism of `size` can split `cfg`: size divides n_head, n_kv_head,
/// d_ff and the padded vocabulary, and every vocabulary slice holds real rows. Throws
/// nuri::Error naming the numbers otherwise.
void check_tensor_parallel(const ModelConfig& cfg, int size);

/// Pipeline parallelism (parallel/pipeline.h): the blocks [first, last) one stage holds (last
/// -1: to the end). The first stage (first == 0) also holds the embedding, the last (last ==
/// n_layer) the head and, for a model with tied embeddings, a copy of wte (its own embedding
/// unit, marked ParamSpec::replica) that its head reads: the copy's gradient is summed with the
/// first stage's before each update, so the two stay equal. {0, -1}: the whole model.
struct PipelineStage {
  int64_t first = 0, last = -1;
};

/// One named parameter of the layout.
struct ParamSpec {
  std::string name;
  Shape shape;                ///< what this rank holds (the logical shape without tensor parallelism)
  int64_t offset = 0;         ///< in elements, into the flat buffer
  bool decay = true;          ///< weight decay applies (matrices only)
  InitKind init = InitKind::normal;
  float init_std = 0.02f;
  int64_t init_rows = -1;     ///< logical rows drawn from the RNG (padded vocab rows stay 0); -1: all
  /// How tensor parallelism splits it: the whole tensor's shape, the dimension split (-1: every
  /// rank holds all of it), the parts along that dimension that are each split (a fused tensor
  /// such as GPT-2's c_attn: q, k, v rows; empty: the dimension is one part), and which slice
  /// this rank holds.
  Shape logical;
  int split_dim = -1;
  std::vector<int64_t> parts;
  TensorParallelRank tp;
  bool norm = false;  ///< a norm's weight or bias (sequence parallelism: gradients per rank's rows)
  /// A copy another pipeline stage holds too (the last stage's tied embedding): checkpoints,
  /// model files and the gradient norm take the first stage's.
  bool replica = false;
  int64_t numel() const { return shape_numel(shape); }
  int64_t logical_numel() const { return shape_numel(logical); }
  bool split() const { return split_dim >= 0 && tp.size > 1; }
  /// Calls fn(local, logical, n) for each run of n elements that are contiguous both in this
  /// rank's tensor (from element `local`) and in the logical tensor (from element `logical`),
  /// in local order; together the runs cover the local tensor once.
  void for_each_run(const std::function<void(int64_t local, int64_t logical, int64_t n)>& fn) const;
};

/// The parameter layout of a config, in buffer order (tp: the slices one tensor-parallel rank
/// holds; stage: the units one pipeline stage holds, offsets in its own flat layout).
std::vector<ParamSpec> param_layout(const ModelConfig& cfg, TensorParallelRank tp = {},
                                    PipelineStage stage = {});
/// The flat ranges of the units of that layout, in layout order (the embedding, the blocks, the
/// head): what Transformer::unit_ranges() gives for a model of that config and place.
std::vector<std::pair<int64_t, int64_t>> unit_ranges(const ModelConfig& cfg,
                                                     TensorParallelRank tp = {},
                                                     PipelineStage stage = {});

/// Activation recomputation: what a block keeps of its forward for its backward.
///   none       everything (the fastest: no work twice)
///   selective  its input and the products' outputs (q/k/v after RoPE, attention with its
///              log-sum-exp, the projections, the MLP's fc output and its fused GELU); the
///              norms' outputs and statistics, h' and SwiGLU's output are computed again
///              before the block's backward (cheap elementwise work)
///   full       its input h_l alone; the whole block forward runs again before its backward
/// The recomputed values are the same bits as the forward's, so losses and gradients do not
/// change.
enum class Recompute { none, selective, full };
const char* recompute_name(Recompute r);

/// Gives the model the weights of a unit (embedding, a block, the head: grad_units() in reverse)
/// for its forward and backward, and takes them back after: what ZeRO 3 gathers and frees
/// (DESIGN.md: the mirror of GradHooks). Without hooks the model reads its own compute copy.
class ParamHooks {
 public:
  virtual ~ParamHooks() = default;
  /// Unit `unit`'s weights, the flat range [lo, hi) in the compute dtype in the backend's memory
  /// (backward: for the unit's backward, which also recomputes with them).
  virtual Tensor acquire(size_t unit, int64_t lo, int64_t hi, bool backward) = 0;
  /// The model is done with what acquire(unit) gave (it keeps no view of it).
  virtual void release(size_t unit, bool backward) = 0;
};

/// Receives the gradients as the backward produces them (data parallelism, DESIGN.md). The
/// backward finishes grad_units() in their order (the LM head and final norm, then the layers
/// from last to first, then the embeddings), calling ready(lo, hi) as each flat range [lo, hi)
/// of the gradient layout is complete for this backward.
///
/// Hooks that own the gradient storage (Transformer::set_grad_hooks(h, true)) also provide it:
/// region(lo, hi) is asked once per unit and backward, before the backward writes into the
/// unit's gradients (the tied embedding's unit at the start, as the LM head writes into it
/// first), and returns hi - lo f32 elements in the backend's memory that the backward adds to
/// (zero them for a fresh gradient). The model then holds no gradient buffer of its own.
class GradHooks {
 public:
  virtual ~GradHooks() = default;
  virtual Tensor region(int64_t lo, int64_t hi);  ///< default: refuses (hooks that own storage override it)
  virtual void ready(int64_t lo, int64_t hi) = 0;
};

/// The activation collectives at the tensor-parallel boundaries (DESIGN.md: the model stays below
/// parallel/ by inversion; parallel/tensor_parallel.h implements these over a communicator of the
/// group). Every rank of the group makes the same calls in the same order. Tensors are
/// contiguous, in the backend's memory, in the compute dtype (f32 for the cross-entropy's
/// statistics).
class TensorParallelHooks {
 public:
  virtual ~TensorParallelHooks() = default;
  virtual TensorParallelRank place() const = 0;
  /// t becomes the sum over the group, in place: a row-parallel product's output (forward), a
  /// column-parallel product's input gradient (backward), the vocabulary-parallel embedding.
  virtual void all_reduce(const Tensor& t) = 0;
  /// in [n] -> out [size · n], every rank's in, in rank order (the cross-entropy's statistics;
  /// with sequence parallelism, a norm's rows before a column-parallel product).
  virtual void all_gather(const Tensor& in, const Tensor& out) = 0;
  /// Sequence parallelism: in [size · n] (partial sums) -> out [n], the group's sum of chunk
  /// rank() (a row-parallel product's output, a column-parallel product's input gradient).
  virtual void reduce_scatter(const Tensor& in, const Tensor& out) = 0;
  /// The root of the group's sum of norm² (the split parameters' share of the gradient norm),
  /// in f64: norm_over_ranks.
  virtual double norm_over_group(double norm) = 0;
  /// Before the host reads anything the collectives fed (the loss, a row of logits): on GPUs the
  /// collectives are only enqueued on the compute stream, and this waits for them with the
  /// communicator's timeout, so a dead peer is an error, not a hang.
  virtual void wait() {}
};

struct NamedTensor {
  std::string name;
  Tensor tensor;
  bool decay = true;
};

/// The flat range of the weights a model holds (ZeRO 3); hi = 0: all of them.
struct WeightShard {
  int64_t lo = 0, hi = 0;
};

/// How a new model's weights start: drawn from the seed, or zeros for a model whose weights are
/// read next (a checkpoint, a model file, a Hugging Face import), where the draw would be work
/// thrown away (most of a large model's construction time).
enum class WeightInit { random, zeros };

class Transformer {
 public:
  /// Allocates parameters and gradients on `backend` and initializes them from `seed`.
  Transformer(const ModelConfig& cfg, std::shared_ptr<Backend> backend, uint64_t seed);
  /// A model that holds the weights of `shard` alone (as shard_parameters() leaves one; the
  /// values are those of the whole model's init), without a gradient buffer: for ZeRO 3, whose
  /// hooks gather the weights and hold the gradients, so no rank ever has the whole model.
  /// DataParallel::shard_of(parameter count, world, rank) is the range a rank takes.
  Transformer(const ModelConfig& cfg, std::shared_ptr<Backend> backend, uint64_t seed,
              WeightShard shard);
  /// One rank of a tensor-parallel group: it holds the slices of param_layout(cfg, tp) (its
  /// heads, MLP columns and vocabulary rows; norms, position embeddings and the row-parallel
  /// biases whole), initialized as the whole model's elements they are, so tp = 2 starts from
  /// tp = 1's weights. Its forward and backward need set_tensor_parallel_hooks(). `shard`: ZeRO 3
  /// over this rank's own flat layout (hi = 0: all of it).
  Transformer(const ModelConfig& cfg, std::shared_ptr<Backend> backend, uint64_t seed,
              WeightShard shard, TensorParallelRank tp);
  /// One pipeline stage (of one tensor-parallel rank): the units `stage` holds, in a flat layout
  /// of their own (offsets from 0; parameter_count() is theirs), initialized as the whole
  /// model's tensors they are. It runs micro-batches with forward_stage() and backward_stage();
  /// forward(), forward_loss(), logits() and backward() need the whole model. `init`: zeros
  /// for a model whose weights are written next (load_weights, load_held_weights).
  Transformer(const ModelConfig& cfg, std::shared_ptr<Backend> backend, uint64_t seed,
              WeightShard shard, TensorParallelRank tp, PipelineStage stage,
              WeightInit init = WeightInit::random);

  const ModelConfig& config() const { return cfg_; }
  Backend& backend() const { return *backend_; }
  std::shared_ptr<Backend> backend_ptr() const { return backend_; }

  /// The parameter layout (config order; ParamSpec::offset into the flat buffers).
  const std::vector<ParamSpec>& layout() const { return layout_; }
  /// Elements of the flat parameter layout (Ψ): the length of every unsharded flat buffer.
  int64_t parameter_count() const { return total_; }
  /// Parameters / gradients in layout order (views of one buffer each). Empty once the master
  /// weights are sharded (shard_master_weights) or the gradients handed to hooks.
  const std::vector<NamedTensor>& parameters() const { return params_; }
  const std::vector<NamedTensor>& gradients() const { return grads_; }
  const Tensor& param_buffer() const { return param_buf_; }
  const Tensor& grad_buffer() const { return grad_buf_; }
  /// The dtype of activations and of the weights the ops read (the backend's compute_dtype()).
  DType compute_dtype() const { return compute_; }
  /// The compute copy of the parameters (layout of param_buffer()), or undefined when the model
  /// computes in f32 and reads the master weights directly.
  const Tensor& compute_buffer() const { return cparam_buf_; }
  /// Re-derives the compute copy from the master weights (after writing them other than through
  /// AdamW, which updates both): rounds to nearest even. No-op in f32. Refused once the masters
  /// are sharded (this rank lacks the others' masters): use load_weights().
  void sync_compute_weights();
  /// Sets every weight from all parameter_count() f32 values (flat layout, a contiguous host
  /// tensor): the master weights take their range, the compute copy is rounded from all of them
  /// (to nearest even).
  void load_weights(const Tensor& host_flat);

  /// ZeRO 1 and 2 on a model with a compute copy (the GPU): keeps the f32 master weights of the
  /// flat range [lo, hi) only, this rank's shard; the other ranks hold the rest. The forward and
  /// backward read the whole compute copy, which the sharded AdamW and DataParallel::
  /// gather_parameters() keep current. Afterwards param_buffer() holds the hi - lo masters of
  /// the range, parameters() is empty and parameter() throws; load_weights() and
  /// init_weights() still work. Cannot be undone. A model computing in f32 reads its masters
  /// directly and refuses.
  void shard_master_weights(int64_t lo, int64_t hi);
  /// ZeRO 3: keeps the flat range [lo, hi) of the weights alone, the f32 masters and the compute
  /// copy (where there is one) both; the forward and backward then take every unit's weights
  /// from the ParamHooks (set_param_hooks), which gather them from the ranks. parameters() is
  /// empty and parameter() throws; load_weights() and init_weights() still work. Cannot be undone.
  void shard_parameters(int64_t lo, int64_t hi);
  bool parameters_sharded() const { return parameters_sharded_; }
  /// This rank's weights in the compute dtype, the flat range [compute_begin(), +numel): the
  /// compute copy, or the f32 masters where the model computes in f32.
  const Tensor& compute_weights() const { return cparam_buf_.defined() ? cparam_buf_ : param_buf_; }
  int64_t compute_begin() const { return compute_lo_; }
  /// The flat range param_buffer() holds: [0, parameter_count()) unless sharded.
  int64_t master_begin() const { return master_lo_; }
  int64_t master_end() const { return master_hi_; }
  bool masters_sharded() const { return master_hi_ - master_lo_ != total_; }
  /// The view named `name`; throws nuri::Error naming close candidates otherwise.
  const Tensor& parameter(const std::string& name) const;

  /// Re-draws every parameter from (seed, parameter name) over the full logical tensor (the
  /// elements this rank holds).
  void init_weights(uint64_t seed);
  /// The flat range of the weights this rank holds in some form (its masters or its compute
  /// copy): all of them unless sharded.
  std::pair<int64_t, int64_t> held_range() const;
  /// Sets the weights of held_range() from `host` (contiguous f32 on the host, in flat order).
  void load_held_weights(const Tensor& host);
  void zero_grad();

  /// Runs the model on tokens [B, T] (i32, host) and returns the mean cross-entropy against
  /// targets [B, T] (i32, host; -100 = ignore). Keeps the activations for backward().
  float forward(const Tensor& tokens, const Tensor& targets);
  /// forward() without waiting for the device: the mean loss as a [1] f32 tensor in the
  /// backend's memory (a view of an internal buffer, overwritten by the next forward).
  Tensor forward_loss(const Tensor& tokens, const Tensor& targets);
  /// Logits [B, T, padded_vocab] for tokens [B, T] (a view of an internal buffer, valid until
  /// the next forward). Columns >= vocab_size are padding. Under tensor parallelism: this rank's
  /// columns, [B, T, padded_vocab / t] from column rank · padded_vocab / t.
  Tensor logits(const Tensor& tokens);
  /// logits() on a pipeline stage (the whole model too), slot 0: the last stage returns its
  /// logits as logits() does; an earlier stage returns an undefined tensor and leaves its output
  /// in stage_output(0). A later stage reads its input from stage_input().
  Tensor logits_stage(const Tensor& tokens);
  /// The last stage, after logits() or logits_stage(): the logits of batch 0 at position
  /// `pos`, whole, as f32 on the host ([padded_vocab]). Under tensor parallelism the group
  /// gathers its columns: every rank of the group calls it.
  Tensor logits_row(int64_t pos);
  /// Incremental decoding (what generate() runs): the logits at position r1 - 1 of the window
  /// `tokens` [1, W] (i32, host), as logits() of its first r1 tokens gives them, running the
  /// products, norms and MLP on the rows [r0, r1) alone: the keys and values of the rows
  /// before come from a cache that the calls before filled (r0 = 0 starts it anew; r0 may not
  /// pass the rows cached, whose tokens and document separator must be those they were
  /// computed with, and W stays that of the call that started it). From r0 = 0 attention runs
  /// every query row of the first r1 rows rounded up to 64 (a few shapes a window); after that
  /// the rows [r0, r1) alone against the r1 keys (Backend::attention_decode). [padded_vocab] f32
  /// on the host. The whole model (not a pipeline stage); a tensor-parallel group's ranks all
  /// call it alike, each with its heads' cache and columns, the logits gathered as in
  /// logits_row(). The document separator applies as in a forward. Starting a cache frees the
  /// activation plan (the next forward plans it again); the cache (every block's k and v of W
  /// rows, and W rows of each activation) stays until end_decode().
  Tensor decode(const Tensor& tokens, int64_t r0, int64_t r1);
  /// decode() on a pipeline stage (what Pipeline::decode_row runs; on a whole model the same
  /// as decode()): this stage's blocks over the rows [r0, r1), with its own cache. A stage
  /// after the first reads their residual stream from x_in and r_in (the previous stage's
  /// decode_output(): contiguous [1, r1 - r0, d_model] in compute_dtype() on the backend's
  /// device); the last stage returns the logits as decode() does, the others an undefined
  /// tensor, their output in decode_output().
  Tensor decode_stage(const Tensor& tokens, int64_t r0, int64_t r1, const Tensor& x_in,
                      const Tensor& r_in);
  /// Throws what decode_stage() would refuse of these arguments in this state (the tokens, the
  /// rows, the cache's window, rows, ids and separator) before it changes anything:
  /// Pipeline::decode_row runs it on every chunk before any transfer.
  void check_decode(const Tensor& tokens, int64_t r0, int64_t r1) const;
  /// A stage before the last, after decode_stage(): its rows' residual stream (x, r), valid
  /// until the next call.
  std::pair<Tensor, Tensor> decode_output() const;
  /// Frees decode()'s cache (nothing when there is none).
  void end_decode();
  /// Backward of the last forward(); adds d(loss_scale · loss) into the gradients.
  void backward(float loss_scale = 1.f);

  /// The flat gradient ranges [lo, hi) the backward completes one after another (see
  /// GradHooks): the head (final norm and, when untied, lm_head), each layer from last to
  /// first, the embeddings. Together they cover the layout once.
  const std::vector<std::pair<int64_t, int64_t>>& grad_units() const { return units_; }
  /// Hooks the backward calls (nullptr: none). With own_storage the hooks provide the gradient
  /// memory and the model frees its gradient buffer: gradients() and grad_buffer() are then
  /// empty, zero_grad() does nothing, and that cannot be undone. `hooks` must outlive the
  /// backward calls.
  void set_grad_hooks(GradHooks* hooks, bool own_storage = false);
  GradHooks* grad_hooks() const { return hooks_; }

  /// Activation recomputation for every `every`-th block (blocks 0, every, 2·every, ...; the
  /// others keep everything); applies from the next forward. every >= 1.
  void set_recompute(Recompute mode, int64_t every = 1);
  Recompute recompute() const;
  /// Units in layout order: the embedding, blocks 0 .. L-1, the head (the reverse of
  /// grad_units()); their flat ranges.
  std::vector<std::pair<int64_t, int64_t>> unit_ranges() const;
  /// Hooks that provide every unit's weights (nullptr: the model's own compute copy). `hooks`
  /// must outlive the forward and backward calls.
  void set_param_hooks(ParamHooks* hooks) { param_hooks_ = hooks; }
  ParamHooks* param_hooks() const { return param_hooks_; }

  /// This rank's place in its tensor-parallel group ({0, 1} without tensor parallelism).
  TensorParallelRank tensor_parallel() const { return tp_; }
  /// Sequence parallelism over the tensor-parallel group (no effect without one): the residual
  /// stream and the norms hold 1/t of the B·T token rows on each rank (DESIGN.md; units.h).
  /// B·T must then be a multiple of t. The norms' weight gradients are then this rank's rows'
  /// share only: the trainer sums them over the group (norm_parameter()). Applies from the
  /// next forward.
  void set_sequence_parallel(bool on);
  bool sequence_parallel() const { return sp_ && tp_.size > 1; }
  /// Packed documents: with separator >= 0 attention stays inside documents, split at the token
  /// `separator` (AttentionOptions::documents, from each forward's tokens: document_bounds),
  /// which ends its document, or with `starts` begins it; -1: off, the default. A learned
  /// position table is then read from each document's start (document_positions), so a
  /// document packed after others is computed as it would be alone; rotary positions still
  /// count from the sequence's start, as the scores depend on the distance alone. Applies from
  /// the next forward.
  void set_document_separator(int64_t separator, bool starts = false);
  int64_t document_separator() const { return doc_separator_; }
  bool document_separator_starts() const { return doc_separator_starts_; }
  /// The group's collectives (required before a forward when tensor_parallel().size > 1; must
  /// outlive the forward and backward calls). Their place() must be this model's.
  void set_tensor_parallel_hooks(TensorParallelHooks* hooks);
  TensorParallelHooks* tensor_parallel_hooks() const { return tp_hooks_; }

  /// The blocks this model holds ({0, n_layer}: the whole model); whether it holds the
  /// embedding's forward (the first stage) and the head (the last).
  PipelineStage stage() const;
  bool first_stage() const;
  bool last_stage() const;

  /// Micro-batches in flight (a pipeline schedule's): each of n slots holds one micro-batch's
  /// activations from its forward to its backward (the backward's scratch and the recomputed
  /// tensors are shared). Default 1; applies from the next forward.
  void set_micro_batch_slots(int n);
  int micro_batch_slots() const;
  /// Plans the activations of every slot for micro-batches of [b, t] now (a later stage's input
  /// buffers must exist before its first forward receives into them).
  void prepare(int64_t b, int64_t t);
  /// Runs this stage's forward of a micro-batch in slot k. tokens [B, T] (i32, host) on every
  /// stage (the first embeds them; the others take the plan's shape from them); targets on the
  /// last stage, whose loss (the mean cross-entropy, [1] f32 in the backend's memory) it
  /// returns; other stages return an undefined tensor. A later stage reads its input from
  /// stage_input(), which must hold the previous stage's stage_output(k) for this micro-batch.
  Tensor forward_stage(int k, const Tensor& tokens, const Tensor& targets);
  /// Backward of slot k's forward, adding d(loss_scale · loss) into the gradients. A non-last
  /// stage starts from stage_output_grad(), which must hold the next stage's
  /// stage_input_grad() for this micro-batch.
  void backward_stage(int k, float loss_scale = 1.f);
  /// A later stage: where the next forward_stage() reads its input, the residual stream
  /// h = x + r entering its first block (each this rank's stream shape: [B, T, C], or its rows
  /// with sequence parallelism). One pair for every slot: the forward keeps what it needs.
  std::pair<Tensor, Tensor> stage_input();
  /// A non-last stage: (x, r) leaving its last block in slot k's forward; valid until this
  /// stage's next forward (a recomputing block shares its output buffers).
  std::pair<Tensor, Tensor> stage_output(int k);
  /// A non-last stage: where the next backward_stage() reads the gradient of its output d h.
  Tensor stage_output_grad();
  /// A later stage, after backward_stage(): the gradient of its input d h, valid until the next
  /// backward.
  Tensor stage_input_grad();

  /// Bytes held by this model's backend allocator (parameters, gradients, activations).
  AllocatorStats memory() const { return backend_->allocator()->stats(); }

 private:
  struct Impl;  // the units, their views and their activations (transformer.cpp)
  struct Slot;  // one micro-batch's activations

  void plan(int64_t b, int64_t t);
  Slot& slot(int k, int64_t b, int64_t t);
  Slot& planned_slot(int k, const char* what);
  void run_forward(Slot& s, const Tensor& tokens);
  void check_tokens(const Tensor& tokens, const char* what, bool allow_ignore) const;
  void bind_views();
  void write_weights(const float* values, int64_t first, int64_t last);

  ModelConfig cfg_;
  std::shared_ptr<Backend> backend_;
  std::vector<ParamSpec> layout_;
  DType compute_ = DType::f32;
  int64_t total_ = 0;
  int64_t master_lo_ = 0, master_hi_ = 0;  ///< the flat range param_buf_ holds
  int64_t compute_lo_ = 0;                  ///< the flat index of cparam_buf_'s first element
  bool parameters_sharded_ = false;         ///< ZeRO 3
  Tensor param_buf_, grad_buf_, cparam_buf_;
  std::vector<NamedTensor> params_, grads_;
  std::unique_ptr<Impl> impl_;
  std::vector<std::pair<int64_t, int64_t>> units_;  // backward order
  GradHooks* hooks_ = nullptr;
  bool hooks_own_grads_ = false;
  ParamHooks* param_hooks_ = nullptr;
  TensorParallelRank tp_;
  TensorParallelHooks* tp_hooks_ = nullptr;
  bool sp_ = false;
  int64_t doc_separator_ = -1;
  bool doc_separator_starts_ = false;

 public:
  ~Transformer();
  Transformer(Transformer&&) noexcept;
  Transformer& operator=(Transformer&&) noexcept;
};

}  // namespace nuri
