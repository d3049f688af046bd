// Tensor parallelism (DESIGN.md, "Models larger than one GPU"; Megatron's layout): the ranks of a
// tensor-parallel group each hold 1/t of every block's heads and MLP columns and of the
// vocabulary (nuri/model/transformer.h, TensorParallelRank), and meet at four points per block:
// the attention output and MLP output projections (row-parallel) are summed over the group in
// the forward, and the gradients at the inputs of the fused QKV and fc products (column-
// parallel) in the backward: four all-reduces of B·T·C activations per block and micro-batch.
// The vocabulary-parallel embedding adds one in the forward, the head one in the backward, and
// the sharded cross-entropy gathers two [B·T] f32 statistics per rank. With sequence
// parallelism each of those all-reduces becomes a reduce-scatter into the rank's rows (forward:
// after a row-parallel product; backward: a column-parallel product's input gradient) and an
// all-gather of the rows before the next product (forward: a norm's output; backward: the
// gradient reaching a row-parallel product); the norms' weight gradients are summed over the
// group once a step.
//
// TensorParallel is the model's TensorParallelHooks over a communicator of the group; it counts
// what it moves. GridGroups splits a job's communicator into the dp × tp grid's groups.
#pragma once

#include <cstdint>
#include <memory>

#include "nuri/dist/communicator.h"
#include "nuri/dist/grid.h"
#include "nuri/model/transformer.h"

namespace nuri {

/// What the tensor-parallel collectives moved since the last reset: calls and bytes of each
/// rank's tensor (the payload, as nccl-tests' "size"), and the seconds the calls took on the
/// calling thread (on the host: the whole collective; on a GPU: the enqueueing).
struct TensorParallelStats {
  int64_t all_reduce_calls = 0, all_reduce_bytes = 0;
  int64_t all_gather_calls = 0, all_gather_bytes = 0;  ///< bytes of each rank's input
  int64_t reduce_scatter_calls = 0, reduce_scatter_bytes = 0;  ///< bytes of each rank's input
  int64_t scalar_calls = 0;
  double seconds = 0;
};

class TensorParallel final : public TensorParallelHooks {
 public:
  /// comm: the tensor-parallel group, moving tensors in the model backend's memory (the host
  /// communicator for CPU ranks, make_device_communicator's for GPU ranks). A device
  /// communicator is made stream-ordered: the collectives are enqueued on the compute stream's
  /// order without a host wait (Communicator::set_stream_ordered), and wait() waits for them.
  explicit TensorParallel(std::shared_ptr<Communicator> comm);

  TensorParallelRank place() const override;
  void all_reduce(const Tensor& t) override;
  void all_gather(const Tensor& in, const Tensor& out) override;
  void reduce_scatter(const Tensor& in, const Tensor& out) override;
  double norm_over_group(double norm) override;
  void wait() override { comm_->wait_pending(); }

  const TensorParallelStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }
  Communicator& comm() const { return *comm_; }

 private:
  std::shared_ptr<Communicator> comm_;
  std::shared_ptr<Communicator> host_;  // for norm_over_group
  TensorParallelStats stats_;
};

/// This rank's groups of a dp × tp grid (tensor parallelism fastest-varying: a tp group is
/// neighbouring ranks, normally one node): host communicators over its data-parallel and
/// tensor-parallel groups (null where the group is this rank alone).
struct GridGroups {
  ProcessGrid grid{1, 1};
  GridCoord coord;
  std::shared_ptr<Communicator> dp, tp, pp;
  std::shared_ptr<Communicator> world;  ///< every rank (null: one process): checkpoints
};
/// Splits `world` (every rank calls it, with the same tp and pp) into the grid
/// dp = world / (tp · pp) × tp × pp (ProcessGrid's order: tp fastest, then dp, then pp).
/// Throws nuri::Error when tp · pp does not divide the world size, naming them.
GridGroups make_grid_groups(const std::shared_ptr<Communicator>& world, int tp, int pp = 1);

}  // namespace nuri
