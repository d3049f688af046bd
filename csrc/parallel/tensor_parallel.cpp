// Tensor parallelism's collectives over a communicator of the group, and the grid's groups.
#include "nuri/parallel/tensor_parallel.h"

#include <chrono>

#include "nuri/core/error.h"

namespace nuri {

namespace {

class Timed {
 public:
  explicit Timed(double& total) : total_(total), t0_(std::chrono::steady_clock::now()) {}
  ~Timed() {
    total_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }

 private:
  double& total_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace

TensorParallel::TensorParallel(std::shared_ptr<Communicator> comm) : comm_(std::move(comm)) {
  NURI_CHECK(comm_ != nullptr, "TensorParallel: no communicator for the tensor-parallel group");
  host_ = std::shared_ptr<Communicator>(comm_, comm_->host_communicator());
  comm_->set_stream_ordered(true);
}

TensorParallelRank TensorParallel::place() const { return {comm_->rank(), comm_->size()}; }

void TensorParallel::all_reduce(const Tensor& t) {
  Timed timed(stats_.seconds);
  comm_->all_reduce(t, ReduceOp::sum);
  ++stats_.all_reduce_calls;
  stats_.all_reduce_bytes += t.nbytes();
}

void TensorParallel::all_gather(const Tensor& in, const Tensor& out) {
  Timed timed(stats_.seconds);
  comm_->all_gather(in, out);
  ++stats_.all_gather_calls;
  stats_.all_gather_bytes += in.nbytes();
}

void TensorParallel::reduce_scatter(const Tensor& in, const Tensor& out) {
  Timed timed(stats_.seconds);
  comm_->reduce_scatter(in, out, ReduceOp::sum);
  ++stats_.reduce_scatter_calls;
  stats_.reduce_scatter_bytes += in.nbytes();
}

double TensorParallel::norm_over_group(double norm) {
  ++stats_.scalar_calls;
  return norm_over_ranks(*host_, norm);
}

GridGroups make_grid_groups(const std::shared_ptr<Communicator>& world, int tp, int pp) {
  const int n = world ? world->size() : 1;
  NURI_CHECK(pp >= 1, "pp=", pp, ": pipeline parallelism needs at least one stage");
  NURI_CHECK(tp >= 1 && n % (tp * pp) == 0, "tp=", tp, (pp > 1 ? " x pp=" : ""),
             (pp > 1 ? std::to_string(pp) : std::string()), " does not divide the job's ", n,
             " ranks: the grid is dp × tp", (pp > 1 ? " × pp" : ""), " = world size; start a "
             "multiple of ", tp * pp, " ranks or choose a tp", (pp > 1 ? " and pp" : ""),
             " that divide", (pp > 1 ? "" : "s"), " ", n);
  GridGroups g;
  g.world = n > 1 ? world : nullptr;
  g.grid = ProcessGrid(n, n / (tp * pp), tp, pp);
  const int rank = world ? world->rank() : 0;
  g.coord = g.grid.coord(rank);
  // Every rank creates its tp group, then its dp group, then its pp group (MPI: each a
  // creation over its members).
  if (tp > 1) g.tp = std::shared_ptr<Communicator>(world->split(g.grid.tp_group(rank)));
  if (g.grid.dp() > 1) g.dp = std::shared_ptr<Communicator>(world->split(g.grid.dp_group(rank)));
  if (pp > 1) g.pp = std::shared_ptr<Communicator>(world->split(g.grid.pp_group(rank)));
  return g;
}

}  // namespace nuri
