// Data parallelism, ZeRO stage 0 (DESIGN.md, "Distributed"): every rank holds the whole model and
// optimizer state and trains on its slice of each global batch (the global sampler's contiguous
// slice); each rank's backward scales its micro-batches by 1 / (micro-batches over all ranks), the
// gradient buffer is then summed over ranks, and every rank applies the same update. ZeRO 1/2 and
// overlapping the reduction with the backward come next (issue #9).
#pragma once

#include <memory>
#include <vector>

#include "nuri/dist/communicator.h"
#include "nuri/model/transformer.h"

namespace nuri {

class DataParallel {
 public:
  /// The communicator's ranks are the data-parallel ranks.
  explicit DataParallel(std::shared_ptr<Communicator> comm);

  int rank() const { return comm_->rank(); }
  int world() const { return comm_->size(); }
  Communicator& comm() { return *comm_; }

  /// Sums model.grad_buffer() over the ranks, in place (every rank gets the same bits).
  /// The MPI communicator moves host tensors: a model on a GPU needs the NCCL one (not yet).
  void reduce_gradients(Transformer& model);
  /// Every rank's `mine` (the same length on each), concatenated in rank order.
  std::vector<float> gather(const std::vector<float>& mine);

 private:
  std::shared_ptr<Communicator> comm_;
};

}  // namespace nuri
