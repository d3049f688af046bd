// Data parallelism (DESIGN.md, "Distributed"): every rank holds the whole model and trains on its
// slice of each global batch (the global sampler's contiguous slice); each rank's backward scales
// its micro-batches by 1 / (micro-batches over all ranks), and the gradient buffer is then summed
// over ranks.
//   ZeRO stage 0: every rank holds all of AdamW's state and applies the whole update.
//   ZeRO stage 1: AdamW's moments are sharded: rank r keeps them for its contiguous range of the
//                 flat parameter buffer only, updates that range, and the updated ranges are
//                 all-gathered. The update is elementwise, so stage 1 computes the same bits as
//                 stage 0 (tested) with 8 bytes per parameter of moments spread over the ranks.
// ZeRO 2 (sharded gradients) and overlapping the reduction with the backward need gradients
// handed over as the backward produces them: next (issue #9).
#pragma once

#include <memory>
#include <vector>

#include "nuri/dist/communicator.h"
#include "nuri/model/transformer.h"

namespace nuri {

struct ParallelConfig {
  int zero_stage = 0;  ///< 0 or 1 (see above); with one process both are the same

  /// Throws nuri::Error naming the field when it is not usable.
  void validate() const;
};

class DataParallel {
 public:
  /// The communicator's ranks are the data-parallel ranks.
  explicit DataParallel(std::shared_ptr<Communicator> comm, const ParallelConfig& cfg = {});

  int rank() const { return comm_->rank(); }
  int world() const { return comm_->size(); }
  Communicator& comm() { return *comm_; }
  int zero_stage() const { return cfg_.zero_stage; }

  /// How a flat buffer of n elements is sharded: n / world each, one more for the first
  /// n % world ranks, in rank order.
  std::vector<int64_t> shard_counts(int64_t n) const;
  /// This rank's shard [begin, end) of a flat buffer of n elements.
  std::pair<int64_t, int64_t> shard(int64_t n) const;
  /// ZeRO 1, after each rank updated its shard: every shard of model.param_buffer() (and of the
  /// bf16 compute copy, where the model has one) to every rank, in place.
  void gather_parameters(Transformer& model);

  /// Sums model.grad_buffer() over the ranks, in place (every rank gets the same bits).
  /// The MPI communicator moves host tensors: a model on a GPU needs the NCCL one (not yet).
  void reduce_gradients(Transformer& model);
  /// Every rank's `mine` (the same length on each), concatenated in rank order.
  std::vector<float> gather(const std::vector<float>& mine);

 private:
  std::shared_ptr<Communicator> comm_;
  ParallelConfig cfg_;
};

}  // namespace nuri
