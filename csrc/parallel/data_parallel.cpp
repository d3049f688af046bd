// Data parallelism, stage 0: one all-reduce of the flat gradient buffer per step.
#include "nuri/parallel/data_parallel.h"

#include "nuri/core/error.h"

namespace nuri {

DataParallel::DataParallel(std::shared_ptr<Communicator> comm) : comm_(std::move(comm)) {
  NURI_CHECK(comm_ != nullptr, "DataParallel: no communicator");
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
