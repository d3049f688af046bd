// Pipeline parallelism (DESIGN.md, "Models larger than one GPU"; issue #23): each stage owns a
// contiguous range of the model's blocks, stage 0 also the embedding and the last stage the
// head. This file holds the split, the schedules (1F1B and interleaved 1F1B, as per-rank orders
// of forwards and backwards), their simulated timing, the executor that runs one step of a
// schedule over a communicator of the pipeline's ranks, and its timeline (a Chrome trace).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nuri/dist/communicator.h"
#include "nuri/model/config.h"
#include "nuri/model/transformer.h"

namespace nuri {

/// The training FLOPs (forward and backward, 3× the forward's products) of one token through
/// each unit, the cost the stage split balances: a block's products (2 per weight per token)
/// and its causal attention (4·T·d per token, halved for the mask) and, for the head, the LM
/// head's product over the padded vocabulary. The embedding is a lookup: 0.
struct UnitCosts {
  double embedding = 0;
  std::vector<double> blocks;  ///< per block
  double head = 0;
  double block_attention = 0;  ///< of each block's cost, attention's (the rest is products)
};
UnitCosts unit_costs(const ModelConfig& cfg, int64_t seq_len);

/// The blocks each of `pp` stages owns: stage s owns [first[s], first[s + 1]) with first[0] =
/// 0 and first[pp] = n_layer. `split` (optional) gives the blocks per stage explicitly, e.g.
/// {5, 5, 5, 9}; otherwise the split minimizes the largest stage's cost (unit_costs: the head
/// weighs on the last stage, so it gets fewer blocks), ties going to the earlier stages. Every
/// stage owns at least one block. Throws nuri::Error naming the numbers when pp is not in
/// [1, n_layer] or `split` does not give pp positive counts summing to n_layer.
std::vector<int64_t> pipeline_stages(const ModelConfig& cfg, int pp, int64_t seq_len,
                                     const std::vector<int64_t>& split = {});

/// "4+4+4+3 blocks (costs 1.00 : 1.00 : 1.00 : 0.98)": the split in words, for a run's header.
std::string stages_summary(const ModelConfig& cfg, const std::vector<int64_t>& first,
                           int64_t seq_len);

/// One op of a schedule: the forward or the backward of micro-batch `micro` through chunk
/// `chunk` of a rank (interleaving: rank r's chunk c is virtual stage c·p + r; without it chunk 0
/// is the rank's stage).
struct PipelineOp {
  bool backward = false;
  int chunk = 0;
  int micro = 0;
  bool operator==(const PipelineOp& o) const {
    return backward == o.backward && chunk == o.chunk && micro == o.micro;
  }
};

/// The order of every rank's ops for one step of m micro-batches over p ranks with v chunks each.
/// v = 1: 1F1B (rank r runs p − r − 1 warm-up forwards, then alternates one forward and one
/// backward, then the remaining backwards). v > 1: interleaved 1F1B (Megatron's order: the
/// forwards take micro-batches in groups of p, chunk 0 .. v−1 for each group, the backwards the
/// chunks in reverse; warm-up (p − r − 1)·2 + (v − 1)·p forwards), which needs m a multiple of p.
/// Throws nuri::Error naming the numbers otherwise.
std::vector<std::vector<PipelineOp>> pipeline_schedule(int p, int m, int v = 1);

/// A schedule's timing with a forward of `tf` and a backward of `tb` per chunk and free
/// communication: each op starts when its rank is free and its input (the previous virtual
/// stage's forward, the next one's backward) is done.
struct ScheduleTiming {
  std::vector<std::vector<double>> start, end;  ///< per rank, per op of its order
  double makespan = 0;
  /// The idle share of the ranks' time: 1 − Σ busy / (p · makespan).
  double bubble() const;
  /// Per rank and chunk: the most micro-batches whose forward has run and backward has not
  /// (the activations the chunk holds at once).
  std::vector<std::vector<int>> in_flight;
};
ScheduleTiming simulate_schedule(const std::vector<std::vector<PipelineOp>>& schedule, int v,
                                 double tf = 1, double tb = 2);

/// A timing's start and end of every forward and backward by (virtual stage, micro-batch).
struct ScheduleTimes {
  std::vector<std::vector<double>> f_start, f_end, b_start, b_end;
};
ScheduleTimes schedule_times(const std::vector<std::vector<PipelineOp>>& schedule,
                             const ScheduleTiming& timing, int v);

/// What chunk `chunk` of pipeline rank `rank` holds at once over a step of m micro-batches (p
/// ranks, v chunks each, the simulated 1F1B order): micro-batch slots of activations (the most
/// in flight), and staging buffers for the activations and the gradients that arrive before
/// the op that reads them starts (0 where nothing arrives: the first and the last stage). What
/// Pipeline allocates, and what the planner counts.
struct PipelineBuffers {
  int slots = 1;
  int act_staging = 0, grad_staging = 0;
};
PipelineBuffers pipeline_buffers(int p, int m, int v, int rank, int chunk);
/// pipeline_buffers of every rank's chunk 0 of a 1F1B pipeline (v = 1), from one simulation.
std::vector<PipelineBuffers> pipeline_buffers_by_rank(int p, int m);

/// The bubble of the ideal schedules with tb = 2·tf: (p − 1)/(m + p − 1) for 1F1B and
/// (p − 1)/(v·m + p − 1) interleaved.
double pipeline_bubble_formula(int p, int m, int v = 1);

/// One span of a rank's timeline: a forward, backward, send or receive (name "F", "B", "send",
/// "recv") of a micro-batch through a chunk, in microseconds of the system clock.
struct TimelineSpan {
  std::string name;
  int chunk = 0, micro = 0;
  double start_us = 0, dur_us = 0;
};

/// Runs pipeline steps on this rank: its chunks (v stage models, chunk c holding virtual stage
/// c·p + rank of pipeline_stages(cfg, p·v, ...)) and the communicator of the pipeline's p ranks
/// (rank i: stage i; tensors in the models' backend memory). Every rank of the pipeline calls
/// step() with the same micro-batches. Sends and receives are blocking; each rank makes them in
/// one global order (the simulated schedule's times), so they cannot deadlock, and a peer that
/// dies ends the others within the communicator's timeout.
class Pipeline {
 public:
  /// `tied_group` false: the caller sums a tied embedding's two gradients itself (the Trainer
  /// does under ZeRO 2 and 3, over a group of both stages' dp ranks), so the first and last
  /// stage build no group of their own for it (a GPU rank's would be an NCCL communicator, with
  /// its device buffers); sum_tied_gradients() is then an error for a tied model.
  Pipeline(std::vector<Transformer*> chunks, std::shared_ptr<Communicator> comm,
           bool tied_group = true);

  struct MicroBatch {
    Tensor tokens, targets;  ///< [B, T] i32 on the host
  };
  /// Called around each backward (data parallelism's reductions): chunk, micro-batch, and
  /// whether it is the chunk's last backward of the step.
  struct Hooks {
    std::function<void(int chunk, int micro, bool last)> before_backward;
    std::function<void(int chunk)> after_backward;
  };
  /// One step's forwards and backwards of `micro` (m micro-batches, the gradient-accumulation
  /// steps), adding d(loss_scale · loss_i) to the chunks' gradients for each. Returns every
  /// micro-batch's loss, in order, on every rank. A tied embedding's two gradients are summed
  /// by sum_tied_gradients(), after any data-parallel reduction.
  std::vector<float> step(const std::vector<MicroBatch>& micro, float loss_scale,
                          const Hooks& hooks = {});
  /// step() with a scale for each micro-batch (a loss mask weights them by counted targets).
  std::vector<float> step(const std::vector<MicroBatch>& micro,
                          const std::vector<float>& loss_scales, const Hooks& hooks = {});
  /// The forwards alone, one micro-batch after another (evaluation): every micro-batch's loss
  /// on every rank (none for none).
  std::vector<float> forward_only(const std::vector<MicroBatch>& micro);
  /// The logits of tokens [B, T] (i32, host) at batch 0, position `pos`, through every stage
  /// (forwards only; Transformer::logits_stage): [padded_vocab] f32 on the host, the same
  /// values on every rank of the pipeline (the rank holding the last stage sends them to the
  /// others). Every rank calls it with the same tokens. What generate() samples from.
  Tensor logits_row(const Tensor& tokens, int64_t pos);
  /// Incremental decoding through the stages (Transformer::decode_stage, each chunk with its
  /// own cache): the logits at position r1 - 1 of the window tokens [1, W], computing the rows
  /// [r0, r1) alone, as Transformer::decode does on a whole model; each stage sends the next
  /// one those rows' residual stream. The same values on every rank (the last stage's rank
  /// sends them). Every rank calls it with the same arguments; end_decode() frees the caches,
  /// as a call that fails does (the next call then starts with r0 = 0).
  Tensor decode_row(const Tensor& tokens, int64_t r0, int64_t r1);
  /// Frees every chunk's decoding cache.
  void end_decode();
  /// Tied embeddings: the first stage's wte gradient (the embedding's share) and the last
  /// stage's (the head's) become their sum on both, the same bits, so the two copies stay
  /// equal. `wte`: this rank's gradient of it (undefined: its first or last chunk's own); a
  /// no-op on the other ranks and for untied models. Every rank of the pipeline calls it.
  void sum_tied_gradients(const Tensor& wte = Tensor());
  /// Whether this rank holds the group of the first and last stage that sum_tied_gradients uses.
  bool has_tied_group() const { return tied_ != nullptr; }

  int stages() const { return p_; }
  int chunks() const { return int(chunks_.size()); }
  /// This rank's chunks, in chunk order.
  const std::vector<Transformer*>& chunk_models() const { return chunks_; }
  /// Records each following step's spans (a step's spans replace the previous step's).
  void record_timeline(bool on);
  const std::vector<TimelineSpan>& timeline() const { return spans_; }
  /// This rank's share of the last step's time it spent in neither a forward nor a backward
  /// (from the timeline; 0 when none was recorded).
  double measured_bubble() const;
  /// Gathers every rank's timeline to rank 0 of the pipeline, which writes them as one Chrome
  /// trace (JSON "traceEvents", a process per rank; Perfetto opens it). Every rank calls it.
  void write_chrome_trace(const std::string& path) const;

 private:
  struct Staging {  // received tensors waiting for their op: activations (x, r), gradients x
    int slots = 0;
    std::vector<Tensor> x, r;
  };
  std::vector<float> share_losses(const Tensor& losses_dev, int m) const;
  void check_micro_batches(const std::vector<MicroBatch>& micro) const;
  /// decode_row()'s chunks in turn, after its checks.
  Tensor decode_chunks(const Tensor& tokens, int64_t r0, int64_t r1);
  void transfer(bool sending, bool grad, int vs, int micro, int peer,
                const std::function<void()>& fn) const;

  std::vector<Transformer*> chunks_;
  std::shared_ptr<Communicator> comm_;
  std::shared_ptr<Communicator> tied_;  // stage 0 and the last stage (tied embeddings)
  bool tied_by_caller_ = false;         // tied_group false, for a tied model
  int p_ = 1, rank_ = 0;
  bool record_ = false;
  std::vector<TimelineSpan> spans_;
  double step_start_us_ = 0, step_end_us_ = 0;
  std::vector<Staging> act_, grad_;  // per chunk, kept while their shapes and counts hold
};

}  // namespace nuri
