// Data parallelism (DESIGN.md, "Distributed"): every rank holds the whole model and trains on its
// slice of each global batch (the global sampler's contiguous slice); each rank's backward scales
// its micro-batches by 1 / (micro-batches over all ranks), and the gradients are then summed over
// ranks.
//
// The gradients are reduced in buckets: consecutive units of the backward (Transformer::
// grad_units(): the head, each layer, the embeddings) merged until a bucket holds bucket_bytes.
// A bucket's reduction starts as soon as the backward has completed its last unit, on a progress
// thread, while the backward goes on with the layers below (overlap = true); the step waits for
// the reductions only after the backward.
//   ZeRO stage 0: each bucket is all-reduced; every rank applies the whole AdamW update.
//   ZeRO stage 1: the same all-reduce, but AdamW's moments are sharded: rank r keeps them for its
//                 contiguous range of the flat parameter buffer only, updates that range, and the
//                 updated ranges are all-gathered. The update is elementwise, so stage 1 computes
//                 the same bits as stage 0 (tested).
//   ZeRO stage 2: the gradients are sharded too. The backward writes each bucket into a
//                 temporary buffer (this rank's part of it starting from its shard's sum over
//                 the earlier micro-batches); the bucket is reduce-scattered so each rank
//                 receives the sum of its own range only, into its gradient shard, and the
//                 buffer is freed. A rank holds its shard plus the buckets in flight instead of
//                 all gradients. CPU and GPU ranks alike.
//   ZeRO stage 3: the weights too (fully sharded data parallelism). Each rank keeps its shard of
//                 the f32 masters (and of the bf16 compute copy on GPUs), of the gradients and of
//                 AdamW's state: the same contiguous flat ranges as stages 1 and 2, so checkpoints
//                 and resharding are unchanged. The model takes each unit's weights from this
//                 object's ParamHooks: all-gathered before the unit's forward and again before its
//                 backward (the next unit's gather started early on the progress thread), freed
//                 after use; at most two units are gathered at a time. keep_gathered keeps them
//                 from the forward to the backward instead (ZeRO 2's memory, one gather fewer).
// Gradient accumulation: stages 0 and 1 reduce only after the last micro-batch (the earlier ones
// accumulate locally); stages 2 and 3 reduce every micro-batch, since keeping whole gradients
// between micro-batches is what they exist to avoid.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "nuri/dist/communicator.h"
#include "nuri/model/transformer.h"

namespace nuri {

class Settings;

struct ParallelConfig {
  int zero_stage = 0;  ///< 0 to 3 (see above); with one process all compute the same
  /// Gradient bytes per reduction bucket (whole units of the backward are merged until a bucket
  /// reaches this size; a unit larger than it is a bucket of its own).
  int64_t bucket_bytes = int64_t(8) << 20;
  /// Reduce each bucket on a progress thread as soon as the backward completes it. false: after
  /// the backward, on the calling thread (nothing hidden; for comparison). Also false in effect
  /// when the communicator cannot be called from another thread.
  bool overlap = true;
  /// ZeRO 3: keep each unit's gathered weights from its forward to its backward.
  bool keep_gathered = false;
  /// Tensor parallelism: ranks per group (nuri/parallel/tensor_parallel.h); the job's ranks are
  /// a dp × tp grid, dp = world / tp, with ZeRO over dp.
  int tp = 1;
  /// Sequence parallelism over the tensor-parallel group (with tp > 1): the residual stream and
  /// the norms hold 1/tp of each micro-batch's token rows.
  bool sequence_parallel = false;
  /// Pipeline parallelism: stages (nuri/parallel/pipeline.h), each a contiguous range of the
  /// blocks; the job's ranks are a dp × tp × pp grid, dp = world / (tp · pp). 1F1B over the
  /// grad_accum micro-batches.
  int pp = 1;
  /// Pipeline parallelism: record each step's timeline (every rank's forwards, backwards, sends
  /// and receives) and write the last step's as a Chrome trace, timeline.json in the run's
  /// output directory.
  bool pp_timeline = false;

  /// Throws nuri::Error naming the field when it is not usable.
  void validate() const;
};

/// The settings table of ParallelConfig (nuri/core/settings.h); bucket_bytes is set as
/// bucket_mb there.
const Settings& parallel_settings();

/// What a step communicated (DataParallel::stats(), reset by begin_step()).
struct CommStats {
  int64_t collectives = 0;
  /// Bytes handed to collectives: the gradients reduced, and (ZeRO 1, 2) the parameters gathered.
  int64_t payload_bytes = 0;
  /// Bytes each rank sends (and receives) by the usual ring algorithms, the "bus bytes" of
  /// nccl-tests: all-reduce 2(N-1)/N of the payload, reduce-scatter and all-gather (N-1)/N.
  int64_t bus_bytes = 0;
  /// Seconds the gradient reductions ran (on the progress thread, or the caller's).
  double reduce_seconds = 0;
  /// Seconds the step waited for the gradient reductions after the backward returned (with
  /// overlap = false: all of reduce_seconds). reduce_seconds - exposed_seconds were hidden.
  double exposed_seconds = 0;
  /// Seconds of the parameter all-gather after a sharded update (ZeRO 1, 2); ZeRO 3: seconds the
  /// units' gathers ran (on the progress thread, or the caller's).
  double gather_seconds = 0;
  /// ZeRO 3: seconds the model waited for a unit's gather (the rest of gather_seconds was hidden
  /// behind the compute), and the gathers made.
  double gather_exposed_seconds = 0;
  int64_t unit_gathers = 0;
  /// ZeRO 3: the most bytes of gathered units alive at once during the step.
  int64_t gathered_peak_bytes = 0;
};

class DataParallel final : private GradHooks, private ParamHooks {
 public:
  /// The communicator's ranks are the data-parallel ranks.
  explicit DataParallel(std::shared_ptr<Communicator> comm, const ParallelConfig& cfg = {});
  ~DataParallel() override;
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  int rank() const { return comm_->rank(); }
  int world() const { return comm_->size(); }
  Communicator& comm() const { return *comm_; }
  int zero_stage() const { return cfg_.zero_stage; }
  const ParallelConfig& config() const { return cfg_; }
  /// Whether the reductions run on the progress thread during the backward (overlap asked for,
  /// and the communicator allowing it).
  bool overlapping() const { return overlap_; }

  /// How a flat buffer of n elements is sharded: n / world each, one more for the first
  /// n % world ranks, in rank order.
  std::vector<int64_t> shard_counts(int64_t n) const;
  /// This rank's shard [begin, end) of a flat buffer of n elements.
  std::pair<int64_t, int64_t> shard(int64_t n) const;
  /// Rank `rank`'s shard of n elements over `world` ranks (what shard() gives that rank).
  static std::pair<int64_t, int64_t> shard_of(int64_t n, int world, int rank);

  /// Takes over the model's gradients: installs the backward hooks and plans the buckets. ZeRO 2
  /// and 3 take the gradient storage too (the model frees its gradient buffer for good). ZeRO 1
  /// and 2 on a model with a bf16 compute copy (GPU ranks, world > 1) shard its f32 master
  /// weights to shard(P) (Transformer::shard_master_weights; also for good); ZeRO 3 shards all
  /// its weights (Transformer::shard_parameters) and gives them back through ParamHooks: build
  /// AdamW on that shard.
  /// The model must outlive this object or be attached to another.
  void attach(Transformer& model);
  /// The bucket ranges [lo, hi) of the flat gradient layout, in reduction order.
  std::vector<std::pair<int64_t, int64_t>> buckets() const;
  /// The buckets of a backward that finishes `grad_units` (Transformer::grad_units(): contiguous
  /// and descending) in this order: whole units merged until a bucket holds bucket_bytes of f32
  /// gradients. What attach() makes; the planner counts them.
  static std::vector<std::pair<int64_t, int64_t>> plan_buckets(
      const std::vector<std::pair<int64_t, int64_t>>& grad_units, int64_t bucket_bytes);

  /// Before a step's first micro-batch: zeroes the ZeRO 2 shard and the stats.
  void begin_step();
  /// Before each micro-batch's backward: whether it is the step's last (stages 0 and 1
  /// communicate only then).
  void before_backward(bool last_micro_batch);
  /// After each micro-batch's backward (reduces here when overlap is off).
  void after_backward();
  /// After the step's last backward: waits for every reduction. The gradients are then summed
  /// over ranks: model.grad_buffer() (stages 0, 1) or gradient_shard() (stage 2).
  void finish_gradients();
  /// ZeRO 2: this rank's summed gradients, the range shard(P) of the flat layout.
  const Tensor& gradient_shard() const { return shard_grad_; }
  /// ZeRO 2: the global norm from this rank's shard norm (sum of squares over ranks).
  float global_norm(float shard_norm);

  /// ZeRO 1, 2, after each rank updated its shard: every shard of the bf16 compute copy (where
  /// the model has one; its masters stay sharded) or of the f32 parameters (a CPU model, whose
  /// masters are what it computes with) to every rank, in place. ZeRO 3: drops the units kept
  /// gathered (keep_gathered), which the update made stale; the next forward gathers afresh.
  void gather_parameters(Transformer& model);
  /// All of the model's f32 master weights (parameter_count(), flat layout) on the host, from
  /// every rank's shard when they are sharded (a collective: every rank calls it). root >= 0:
  /// only that rank receives them (the others send their shard and get an undefined tensor), so
  /// a checkpoint costs the other ranks no host copy of the model; root = -1: every rank.
  Tensor gather_master_weights(const Transformer& model, int root = -1);
  /// Every rank's `mine` (the same length on each), concatenated in rank order.
  std::vector<float> gather(const std::vector<float>& mine);

  const CommStats& stats() const { return stats_; }
  /// Where the ZeRO 2 gradient shard and bucket buffers come from (a CPU model: an allocator of
  /// their own, so their peak is measurable; otherwise the backend's).
  const std::shared_ptr<Allocator>& gradient_allocator() const { return grad_alloc_; }

 private:
  struct Bucket;
  class Progress;

  Tensor region(int64_t lo, int64_t hi) override;
  void ready(int64_t lo, int64_t hi) override;
  Tensor acquire(size_t unit, int64_t lo, int64_t hi, bool backward) override;
  void release(size_t unit, bool backward) override;
  /// ZeRO 3: starts all-gathering unit u's weights unless they are gathered or on their way.
  void start_gather(size_t u);
  void drop_gathered();
  void launch(Bucket& b);
  /// The part [from, to) of bucket b inside this rank's shard (from == to: none).
  std::pair<int64_t, int64_t> piece(const Bucket& b) const;
  /// Runs fn on the progress thread (overlap; returns its ticket) or keeps it for
  /// after_backward() (returns -1).
  int64_t submit(std::function<void()> fn);
  void count(int64_t bytes, double bus_factor);

  std::shared_ptr<Communicator> comm_;
  ParallelConfig cfg_;
  bool overlap_ = false;
  Transformer* model_ = nullptr;
  std::vector<Bucket> buckets_;
  std::vector<size_t> unit_bucket_;  ///< grad_units() index → bucket
  bool communicate_ = false;
  std::shared_ptr<Allocator> grad_alloc_;
  Tensor shard_grad_;
  int64_t lo_ = 0, hi_ = 0;  ///< this rank's shard of the flat layout
  std::unique_ptr<Progress> progress_;
  std::vector<std::function<void()>> deferred_;
  CommStats stats_;
  /// ZeRO 3: each unit's gathered weights (layout order) and the progress ticket of its gather.
  struct Gathered {
    Tensor weights;
    int64_t ticket = -1;
  };
  std::vector<Gathered> gathered_;
  int64_t gathered_bytes_ = 0;  ///< alive now
  std::vector<std::pair<int64_t, int64_t>> unit_ranges_;
  std::shared_ptr<std::atomic<int64_t>> gather_ns_ = std::make_shared<std::atomic<int64_t>>(0);
};

}  // namespace nuri
