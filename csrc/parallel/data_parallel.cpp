// Data parallelism, stage 0: one all-reduce of the flat gradient buffer per step.
#include "nuri/parallel/data_parallel.h"

#include "nuri/core/error.h"

namespace nuri {

void ParallelConfig::validate() const {
  NURI_CHECK(zero_stage != 2, "ZeRO stage 2 shards the gradients as the backward produces them, "
             "which nuri does not do yet; use zero_stage 0 or 1");
  NURI_CHECK(zero_stage == 0 || zero_stage == 1, "zero_stage ", zero_stage,
             " does not exist; use 0 (no sharding) or 1 (optimizer state sharded)");
}

DataParallel::DataParallel(std::shared_ptr<Communicator> comm, const ParallelConfig& cfg)
    : comm_(std::move(comm)), cfg_((cfg.validate(), cfg)) {
  NURI_CHECK(comm_ != nullptr, "DataParallel: no communicator");
}

std::vector<int64_t> DataParallel::shard_counts(int64_t n) const {
  std::vector<int64_t> counts(size_t(world()), n / world());
  for (int64_t r = 0; r < n % world(); ++r) ++counts[size_t(r)];
  return counts;
}

std::pair<int64_t, int64_t> DataParallel::shard(int64_t n) const {
  const std::vector<int64_t> counts = shard_counts(n);
  int64_t begin = 0;
  for (int r = 0; r < rank(); ++r) begin += counts[size_t(r)];
  return {begin, begin + counts[size_t(rank())]};
}

void DataParallel::gather_parameters(Transformer& model) {
  if (world() == 1) return;
  for (const Tensor* buf : {&model.param_buffer(), &model.compute_buffer()}) {
    if (!buf->defined()) continue;
    NURI_CHECK(buf->device().is_cpu() || comm_->backend_name() != "mpi",
               "ZeRO over MPI moves host tensors, but the model's parameters are on ",
               model.backend().name(), "; the NCCL communicator for GPU ranks is not in yet");
    const auto [lo, hi] = shard(buf->numel());
    comm_->all_gather_v(buf->slice(0, lo, hi), *buf, shard_counts(buf->numel()));
  }
}

void DataParallel::reduce_gradients(Transformer& model) {
  if (world() == 1) return;
  const Tensor& g = model.grad_buffer();
  NURI_CHECK(g.device().is_cpu() || comm_->backend_name() != "mpi",
             "data parallelism over MPI moves host tensors, but the model's gradients are on ",
             model.backend().name(), "; train on the cpu backend (the NCCL communicator for GPU "
             "ranks is not in yet)");
  comm_->all_reduce(g, ReduceOp::sum);
}

std::vector<float> DataParallel::gather(const std::vector<float>& mine) {
  if (world() == 1) return mine;
  Tensor in = Tensor::empty({int64_t(mine.size())}, DType::f32);
  std::copy(mine.begin(), mine.end(), in.data<float>());
  Tensor all = Tensor::empty({int64_t(mine.size()) * world()}, DType::f32);
  comm_->all_gather(in, all);
  return std::vector<float>(all.data<float>(), all.data<float>() + all.numel());
}

}  // namespace nuri
