// The training loop: micro-batches with gradient accumulation, linear warmup then cosine decay
// to a floor, global-norm clipping, AdamW with weight decay on matrices only, validation loss,
// text generation, and a policy for non-finite loss or gradient norm.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "nuri/data/sampler.h"
#include "nuri/model/transformer.h"
#include "nuri/parallel/data_parallel.h"
#include "nuri/parallel/pipeline.h"
#include "nuri/parallel/tensor_parallel.h"
#include "nuri/train/optimizer.h"

namespace nuri {

class CheckpointWriter;
class Settings;

enum class NonFinitePolicy { skip, stop };

/// What Trainer::step throws when train.skip_limit skipped steps in a row say the run has
/// diverged, or at the first non-finite step under on_nonfinite = stop. Every rank throws it at
/// the same step (the loss and the gradient norm are the job's), so a caller may still make
/// collective calls (e.g. commit a pending checkpoint).
class DivergedError : public Error {
 public:
  DivergedError(const std::string& what, const char* file, int line) : Error(what, file, line) {}
};

/// TrainConfig::document_mask: none, or where the separator stands in its document.
enum class DocumentMask { off, end, start };

/// Defaults: the demo's (nuri-train with no options trains the demo model with them).
struct TrainConfig {
  int64_t steps = 400;           ///< optimizer steps
  int64_t micro_batch = 8;       ///< sequences per micro-batch (B)
  int64_t seq_len = 128;         ///< T
  int64_t grad_accum = 1;        ///< micro-batches per step
  /// Sequences per step over every data-parallel rank; > 0: grad_accum is derived from it for
  /// the job's ranks (with_global_batch), so one config resumes on any number of ranks.
  /// 0: micro_batch · grad_accum · ranks.
  int64_t global_batch = 0;
  float lr = 2e-3f;              ///< peak learning rate
  float min_lr_ratio = 0.1f;     ///< the cosine decays to lr · min_lr_ratio
  int64_t warmup_steps = 30;
  float weight_decay = 0.1f;
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
  float grad_clip = 1.0f;        ///< max global gradient norm; <= 0 disables clipping
  int64_t eval_every = 50;       ///< validation every k steps (0: never during training)
  /// Global batches (micro_batch · grad_accum · ranks sequences each) of validation data per
  /// evaluation: the first ones in file order, the same sequences on every layout.
  int64_t eval_batches = 16;
  uint64_t seed = 1337;          ///< model init and data order
  NonFinitePolicy on_nonfinite = NonFinitePolicy::skip;
  /// Under on_nonfinite = skip, this many skipped steps in a row stop the run as diverged (an
  /// error naming the first of them); 0: never.
  int64_t skip_limit = 5;
  /// Activation recomputation (nuri/model/transformer.h) for every recompute_every-th block.
  Recompute recompute = Recompute::none;
  int64_t recompute_every = 1;
  /// Attention inside documents (packed data, fine-tuning rows; Transformer::
  /// set_document_separator): off; `end`, the separator ends its document (`ids <|endoftext|>`:
  /// nuri tokenize, Llama 3); `start`, it begins it (`<|endoftext|> ids`: llm.c's GPT-2 shards).
  DocumentMask document_mask = DocumentMask::off;
  /// The separator's token id, for document_mask; -1: the training data's end-of-text, as
  /// `nuri tokenize` records it (TokenFile::end_of_text).
  int64_t document_separator = -1;

  /// Throws nuri::Error naming the first invalid field.
  void validate() const;
};

/// The settings table of TrainConfig (nuri/core/settings.h).
const Settings& train_settings();

/// `cfg` for `dp` data-parallel ranks: with global_batch > 0, grad_accum becomes global_batch /
/// (micro_batch · dp) (what the Trainer does on construction); otherwise `cfg` unchanged.
/// Throws ConfigError naming the numbers and the micro-batches that would divide when
/// micro_batch · dp does not divide global_batch.
TrainConfig with_global_batch(const TrainConfig& cfg, int64_t dp);

/// The validation batches of `dp` data-parallel ranks' rank `rank` (what Trainer::evaluate
/// reads): whole global batches (micro_batch · grad_accum · dp sequences) in file order.
/// Throws ConfigError, naming the global batch, where `val` holds less than one.
std::unique_ptr<DataLoader> validation_loader(std::shared_ptr<TokenFile> val,
                                              const TrainConfig& cfg, int64_t dp, int64_t rank);

/// Learning rate of 0-based step `step`: linear warmup to lr over warmup_steps, then cosine
/// decay from lr at the first step after it to lr · min_lr_ratio at the last step (a single step
/// after the warmup is the first: lr).
float learning_rate(const TrainConfig& cfg, int64_t step);

struct StepStats {
  int64_t step = 0;         ///< 1-based index of the step just taken
  float loss = 0;           ///< mean training loss over the step's micro-batches
  float lr = 0;
  float grad_norm = 0;      ///< before clipping
  bool skipped = false;     ///< non-finite loss or norm: no update
  /// No trained target in the global batch (a loss mask covering all of it): the loss is NaN
  /// (a mean over nothing) and there is no update, since AdamW's moments and weight decay would
  /// still move the weights. Not a skipped step: it does not count toward train.skip_limit.
  bool untrained = false;
  double step_seconds = 0;
  double tokens_per_second = 0;  ///< of the whole job (every data-parallel rank)
  int64_t peak_bytes = 0;   ///< allocator peak so far
  /// The directory of an asynchronous checkpoint committed at the start of this step, else "".
  std::string checkpoint;
};

/// The most tokens one generate() call samples.
inline constexpr int64_t kMaxNewTokens = int64_t(1) << 30;

struct SampleOptions {
  int64_t max_new_tokens = 200;  ///< at most kMaxNewTokens
  float temperature = 1.0f;  ///< 0: greedy
  int64_t top_k = 0;         ///< 0: the whole vocabulary
  /// Nucleus sampling: of the top_k tokens, the fewest likeliest whose probabilities (at this
  /// temperature) sum to at least top_p; 1: all of them. In (0, 1].
  float top_p = 1.0f;
  /// Sampling ends after any of these token ids is drawn (it is the last one returned), as
  /// transformers' generate() ends at its eos_token_id; empty: after max_new_tokens.
  std::vector<int32_t> stop;
  uint64_t seed = 0;
  /// Keep each block's keys and values (Transformer::decode): a new token runs the products
  /// and its attention on its own row alone. false runs a whole forward of the window per
  /// token (the reference).
  bool cache = true;
};

/// Tokens continuing `prompt` (not repeated in the result), sampled from `model`: greedy when
/// temperature is 0, else softmax(logits / temperature) over the top_k tokens (and of those the
/// top_p nucleus), drawn with Philox(seed); up to max_new_tokens, or a stop token. Works on a
/// fixed window of min(max_seq_len, prompt + new) positions: the prompt's rows are computed once
/// and each new token's row alone (opt.cache, for a whole model, also split over a
/// tensor-parallel group whose ranks all call it: Transformer::decode) until the window is
/// full; after that it slides, and every token computes the whole window again.
std::vector<int32_t> generate(Transformer& model, const std::vector<int32_t>& prompt,
                              const SampleOptions& opt);
/// generate() through a pipeline's stages (interleaved chunks too): every rank of the pipeline
/// calls it with the same arguments; each token runs stage after stage (with opt.cache each
/// chunk's own cache, the new rows alone: Pipeline::decode_row; else a whole forward of the
/// window: Pipeline::logits_row), the rank holding the last stage sends the row of logits to
/// the others, and every rank draws the same tokens from it.
std::vector<int32_t> generate(Pipeline& pipe, const std::vector<int32_t>& prompt,
                              const SampleOptions& opt);

/// A piece of a rank's flat parameter layout that is contiguous in a logical tensor: n elements
/// from local flat element `flat`, the tensor's element `logical` on; rows > 0: a block of
/// `rows` whole rows of a column-parallel slice (n / rows elements each, rows apart by the
/// logical width).
struct Piece {
  const ParamSpec* p = nullptr;
  int64_t flat = 0, logical = 0, n = 0, rows = 0;
};
/// The pieces of the flat range [lo, hi) of `layout`, in flat order (how checkpoints store a
/// rank's slices of the logical tensors).
void for_each_piece(const std::vector<ParamSpec>& layout, int64_t lo, int64_t hi,
                    const std::function<void(const Piece&)>& fn);

class Trainer {
 public:
  /// train: token file for training; val (may be null): for evaluate(). comm (may be null: one
  /// process): the data-parallel ranks; then micro_batch and grad_accum are per rank, a global
  /// batch is micro_batch · grad_accum · comm->size() sequences, and every rank must construct
  /// its Trainer with the same config and data. parallel: ZeRO stage, gradient buckets and overlap
  /// (nuri/parallel/data_parallel.h).
  Trainer(Transformer& model, const TrainConfig& cfg, std::shared_ptr<TokenFile> train,
          std::shared_ptr<TokenFile> val, std::shared_ptr<Communicator> comm = nullptr,
          const ParallelConfig& parallel = {});

  /// The trainer on a dp × tp × pp grid (nuri/parallel/tensor_parallel.h, make_grid_groups):
  /// data parallelism and ZeRO over grid.dp (the sampler by dp rank: the ranks of a
  /// tensor-parallel group and of a pipeline read the same batch), the model's tensor-parallel
  /// collectives over grid.tp (this constructor sets its hooks; the model must be built with
  /// {grid.coord.tp, grid.grid.tp()}), pipeline parallelism over grid.pp (the model is the
  /// stage of pp index grid.coord.pp: PipelineStage from pipeline_stages(cfg, pp, seq_len);
  /// 1F1B over the grad_accum micro-batches), checkpoints written by every rank of grid.world.
  /// A global batch is micro_batch · grad_accum · dp sequences. Tied embeddings: the first and
  /// last stage sum their wte gradients after the data-parallel reduction (ZeRO 2 and 3: over a
  /// group of both stages' dp ranks, each adding its shard's part).
  Trainer(Transformer& model, const TrainConfig& cfg, std::shared_ptr<TokenFile> train,
          std::shared_ptr<TokenFile> val, const GridGroups& grid,
          const ParallelConfig& parallel = {});

  /// One optimizer step over grad_accum micro-batches.
  StepStats step();
  /// Mean loss over the first eval_batches global batches of the validation data (file order;
  /// micro_batch · grad_accum · dp ranks sequences each, a rank's slice in micro-batches).
  float evaluate();
  /// nuri::generate on this trainer's model; under pipeline parallelism through its pipeline
  /// (every rank of the job calls it then, with the same arguments).
  std::vector<int32_t> generate(const std::vector<int32_t>& prompt, const SampleOptions& opt) {
    return pipe_ ? nuri::generate(*pipe_, prompt, opt) : nuri::generate(model_, prompt, opt);
  }

  /// Saves this run as a checkpoint under `root` (nuri/ckpt/checkpoint.h), collectively over the
  /// data-parallel ranks: every parameter under its Hugging Face name, AdamW's moments as flat
  /// ranges of this rank layout, the step, the data position and the configs. Returns the
  /// checkpoint's directory.
  std::string save_checkpoint(const std::string& root, int keep_last = 3);
  /// The same, asynchronously: takes host copies of the state now (the only time the step
  /// waits), writes the files on a background thread while training goes on, and commits the
  /// checkpoint at the first step() at whose start every rank has finished writing (that step's
  /// StepStats::checkpoint names it). An earlier pending save is committed first. Returns the
  /// directory the checkpoint will have.
  std::string save_checkpoint_async(const std::string& root, int keep_last = 3);
  /// Commits a pending asynchronous save, waiting for its files (collective; a no-op without
  /// one). Returns its directory, or "" when none was pending. Call it before the run ends.
  std::string finish_checkpoint();
  bool checkpoint_pending() const { return pending_ != nullptr; }
  /// Restores a checkpoint (a directory, or the newest under a root) saved by any number of
  /// ranks with any ZeRO stage: parameters, AdamW's moments resharded to this layout, the step
  /// and the data position, so the global sample order goes on where it stopped. The model, the
  /// sequence length, the global batch and the data seed must be the checkpoint's (an error
  /// names what differs); gradients are not saved. So must the training data, by its token
  /// count and TokenFile::fingerprint(), unless `check_data` is false: then the run goes on at
  /// the saved position of this data's sample order, or the start of the next epoch where this
  /// data's epoch is shorter (checkpoints saved before nuri recorded the data are not
  /// checked). Returns the checkpoint's directory.
  std::string load_checkpoint(const std::string& path, bool check_data = true);
  /// Sets the weights from a model file (whole tensors under their names, as save_model writes
  /// them), this rank reading only the pieces it holds; the optimizer state and the step stay as
  /// they are. Throws, naming the file, where the model config it records differs from the
  /// model's (a RoPE model's context settings may differ: context_setting), a tensor is
  /// missing, extra or of another shape, the tensor checksum it records fails, or a weight is
  /// not finite.
  void load_model_file(const std::string& path);
  /// load_checkpoint's check of the data alone (it reads no weights): throws, naming both,
  /// unless checkpoint `path` (a directory, or the newest under a root) was saved training on
  /// this trainer's data. Each rank checks its own copy of the data; run_training has every
  /// rank agree before any loads.
  void check_checkpoint_data(const std::string& path) const;

  /// Writes the f32 master weights as one safetensors file at `path` (rank 0 writes it, with
  /// `metadata`; a collective under data and tensor parallelism), one tensor at a time: the
  /// ranks send rank 0 their pieces of each tensor in turn, so no rank holds more than one whole
  /// tensor. The tensors go in name order, with their checksum (kTensorsChecksumKey) in the
  /// metadata, which nuri.load checks.
  void save_model(const std::string& path,
                  const std::map<std::string, std::string>& metadata = {});

  /// Every f32 master weight (the model's parameter_count(), flat layout) on the host; under
  /// data parallelism a collective (every rank calls it), as GPU ranks with ZeRO 1 or 2 hold
  /// only their shard of the masters. Under tensor parallelism: this rank's slices (its own
  /// layout); save_model() gives the whole tensors.
  Tensor master_weights();

  int64_t steps_done() const { return step_; }
  int64_t skipped_steps() const { return skipped_; }
  /// The skipped steps since the last update (train.skip_limit's count; kept in checkpoints).
  int64_t skipped_in_a_row() const { return skipped_in_a_row_; }
  DataPosition data_position() const { return loader_.position(); }
  const TrainConfig& config() const { return cfg_; }
  /// The data-parallel state (its stats() describe the last step's communication); null
  /// without a communicator.
  const DataParallel* data_parallel() const { return dp_.get(); }
  /// The tensor-parallel collectives (their stats() count what they moved); null without
  /// tensor parallelism.
  TensorParallel* tensor_parallel() const { return tp_.get(); }
  /// The pipeline (its timeline, record_timeline()); null without pipeline parallelism.
  Pipeline* pipeline() const { return pipe_.get(); }
  /// The blocks of every pipeline stage, in pp order ({0, n_layer} without pipelining).
  const std::vector<PipelineStage>& stages() const { return stages_; }

 private:
  struct GridTag {};
  Trainer(Transformer& model, const TrainConfig& cfg, std::shared_ptr<TokenFile> train,
          std::shared_ptr<TokenFile> val, std::shared_ptr<Communicator> comm,
          const ParallelConfig& parallel, GridTag);
  /// After the weights were loaded: drops what holds copies of the old ones.
  void weights_replaced();

  Transformer& model_;
  TrainConfig cfg_;
  DataLoader loader_;
  std::shared_ptr<TokenFile> val_;
  std::unique_ptr<DataParallel> dp_;  // null: one process
  std::unique_ptr<AdamW> opt_;        // the whole model's, or this rank's ZeRO shard
  std::unique_ptr<TensorParallel> tp_;  // null: no tensor parallelism
  std::shared_ptr<Communicator> world_;  // every rank, with tensor parallelism (checkpoints)
  ProcessGrid grid_{1, 1};               // with world_: the job's dp × tp × pp grid
  std::unique_ptr<Pipeline> pipe_;       // null: no pipeline parallelism
  std::shared_ptr<Communicator> pp_;     // the pipeline's ranks (host tensors)
  std::vector<PipelineStage> stages_;    // every stage's blocks
  std::vector<Pipeline::MicroBatch> micro_;  // the step's micro-batches (pipeline)
  /// Tied embeddings across stages with ZeRO 2 or 3: the first and last stage's dp ranks.
  std::shared_ptr<Communicator> tied_;
  /// The pipeline was built for the Trainer to sum the tied embedding (tied_ on the first and
  /// last stage; the middle stages have nothing to sum).
  bool pipe_tied_by_trainer_ = false;
  void sum_tied_shards();
  /// The host communicator over every rank that holds part of the model (null: one process).
  Communicator* all_ranks() const;
  Tensor tokens_, targets_;  // [B, T] host
  /// The training data's fingerprint, computed at the first checkpoint saved or loaded.
  const std::string& data_fingerprint() const;
  mutable std::string data_fingerprint_;
  // On the model's device: the micro-batches' losses, then the gradient norm
  // [grad_accum + 1], read back with one copy per step.
  Tensor stats_dev_;
  int64_t step_ = 0, skipped_ = 0;
  int64_t skipped_in_a_row_ = 0;  // since the last step that updated (or the start or a load)
  int64_t last_update_ = 0;       // the last step that updated (0: none)

  /// Tensor parallelism: splits the gradient tensors for the norm into the split ones' and the
  /// whole ones'.
  void split_gradients(std::vector<Tensor>& grads, std::vector<Tensor>& whole) const;
  /// Sequence parallelism: the norms' weight gradients summed over the tensor-parallel group.
  void sum_norm_gradients();

  struct PendingSave;
  std::unique_ptr<CheckpointWriter> snapshot(const std::string& root);
  /// Commits the pending save when every rank has written it (wait: block until then).
  std::string poll_checkpoint(bool wait);
  std::unique_ptr<PendingSave> pending_;

 public:
  ~Trainer();
};

/// This rank's model for the Trainer on `grid`: its tensor-parallel slice of its pipeline stage
/// (pipeline_stages(cfg, pp, seq_len)), built as its dp shard alone under ZeRO 3 over several
/// dp ranks (never holding the whole weights). `init`: zeros for a model whose weights are
/// loaded next (a resume, checkpoint.init).
Transformer grid_model(const ModelConfig& cfg, std::shared_ptr<Backend> backend, uint64_t seed,
                       const GridGroups& grid, int zero_stage, int64_t seq_len,
                       WeightInit init = WeightInit::random);

}  // namespace nuri
