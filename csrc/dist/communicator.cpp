// The communicator factory and the one-process communicator.
#include "nuri/dist/communicator.h"

#include <cmath>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "dist/comm_check.h"
#include "nuri/backend/backend.h"
#include "nuri/config.h"
#include "nuri/core/error.h"

namespace nuri {

std::unique_ptr<Communicator> make_tcp_communicator(const LaunchInfo& info, double timeout_s);

#if NURI_HAVE_NCCL
std::shared_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Communicator> host,
                                                     Backend& backend);
bool have_nccl() { return true; }
#else
bool have_nccl() { return false; }
#endif

#if NURI_HAVE_MPI
std::unique_ptr<Communicator> make_mpi_communicator(const LaunchInfo& info, double timeout_s);
bool have_mpi() { return true; }
#else
bool have_mpi() { return false; }
#endif

namespace {
// The calling thread's: Ctrl-C from Python ends the wait it was pressed during, not a Trainer's
// collectives on another thread (they stop at a step boundary, checkpointed).
thread_local const std::atomic<bool>* g_wait_interrupt = nullptr;
}  // namespace

void set_wait_interrupt(const std::atomic<bool>* flag) { g_wait_interrupt = flag; }

namespace dist {

bool wait_interrupted() { return g_wait_interrupt != nullptr && g_wait_interrupt->load(); }

void check_tensor(const char* op, const char* what, const Tensor& t) {
  NURI_CHECK(t.defined(), op, ": ", what, " is undefined");
  NURI_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16, op, ": ", what, " is ",
             dtype_name(t.dtype()), "; communicators move f32 and bf16 tensors");
  NURI_CHECK(t.is_contiguous(), op, ": ", what, " must be contiguous, got ", t.str());
}

void check_pair(const char* op, const Tensor& in, const Tensor& out, int64_t in_per_out,
                int64_t out_per_in) {
  check_tensor(op, "in", in);
  check_tensor(op, "out", out);
  NURI_CHECK(in.dtype() == out.dtype(), op, ": in is ", dtype_name(in.dtype()), " but out is ",
             dtype_name(out.dtype()));
  NURI_CHECK(in.numel() * out_per_in == out.numel() * in_per_out, op, ": in has ", in.numel(),
             " elements and out ", out.numel(), "; out must have ",
             out_per_in > 1 ? "world size times in's" : "in's divided by the world size");
}

namespace {

/// The chunk layout shared by all_gather_v and reduce_scatter_v: `whole` holds every rank's
/// chunk, `part` this rank's. Returns the offset of rank's chunk in whole.
int64_t check_chunks(const char* op, const Tensor& part, const Tensor& whole,
                     const std::vector<int64_t>& counts, int rank, int size) {
  NURI_CHECK(int(counts.size()) == size, op, ": ", counts.size(), " counts for ", size,
             " ranks; give one per rank");
  int64_t total = 0, offset = 0;
  for (int r = 0; r < size; ++r) {
    NURI_CHECK(counts[size_t(r)] >= 0, op, ": count ", counts[size_t(r)], " of rank ", r,
               " is negative");
    if (r == rank) offset = total;
    total += counts[size_t(r)];
  }
  NURI_CHECK(part.numel() == counts[size_t(rank)] && whole.numel() == total, op,
             ": this rank's chunk has ", part.numel(), " elements (rank ", rank,
             "'s count is ", counts[size_t(rank)], ") and the whole ", whole.numel(),
             " (the counts add up to ", total, ")");
  return offset;
}

}  // namespace

int64_t check_gather_v(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts,
                       int rank, int size) {
  check_tensor("all_gather_v", "in", in);
  check_tensor("all_gather_v", "out", out);
  NURI_CHECK(in.dtype() == out.dtype(), "all_gather_v: in is ", dtype_name(in.dtype()),
             " but out is ", dtype_name(out.dtype()));
  return check_chunks("all_gather_v", in, out, counts, rank, size);
}

int64_t check_scatter_v(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts,
                        int rank, int size) {
  check_tensor("reduce_scatter_v", "in", in);
  check_tensor("reduce_scatter_v", "out", out);
  NURI_CHECK(in.dtype() == out.dtype(), "reduce_scatter_v: in is ", dtype_name(in.dtype()),
             " but out is ", dtype_name(out.dtype()));
  const int64_t offset = check_chunks("reduce_scatter_v", out, in, counts, rank, size);
  const char* a = static_cast<const char*>(in.raw());
  const char* b = static_cast<const char*>(out.raw());
  // An empty out overlaps when it points into in (ranks must agree on raising this error).
  NURI_CHECK(a == b || b + std::max<size_t>(out.nbytes(), 1) <= a || a + in.nbytes() <= b,
             "reduce_scatter_v: out overlaps in other than as its first elements (in place); "
             "give it memory of its own");
  return offset;
}

void scale(const Tensor& t, double s) {
  const int64_t n = t.numel();
  if (t.dtype() == DType::f32) {
    float* p = t.data<float>();
    for (int64_t i = 0; i < n; ++i) p[i] = float(double(p[i]) * s);
  } else {
    bf16_t* p = t.data<bf16_t>();
    for (int64_t i = 0; i < n; ++i) p[i] = f32_to_bf16(float(double(bf16_to_f32(p[i])) * s));
  }
}

std::string describe(const char* op, const Tensor& t, std::optional<ReduceOp> rop, int peer) {
  std::ostringstream s;
  s << op;
  if (t.defined()) s << " (" << dtype_name(t.dtype()) << ", " << t.numel() << " elements";
  if (rop) s << ", " << (*rop == ReduceOp::sum ? "sum" : "avg");
  if (peer >= 0) s << ", peer " << peer;
  if (t.defined()) s << ")";
  return s.str();
}

void check_peer(const char* op, int peer, int rank, int size) {
  NURI_CHECK(peer >= 0 && peer < size && peer != rank, op, ": peer ", peer,
             " is not another rank of this communicator (rank ", rank, " of ", size, ")");
}

}  // namespace dist

namespace {

/// World size 1: every collective is the identity (a copy where in and out differ).
class SingleCommunicator final : public Communicator {
 public:
  explicit SingleCommunicator(double timeout_s) { timeout_s_ = timeout_s; }
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend_name() const override { return "single"; }
  void all_reduce(const Tensor& t, ReduceOp) override { dist::check_tensor("all_reduce", "t", t); }
  void reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp) override {
    dist::check_pair("reduce_scatter", in, out, 1, 1);
    if (in.raw() != out.raw()) std::memcpy(out.raw(), in.raw(), in.nbytes());
  }
  void reduce_scatter_v(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts,
                        ReduceOp) override {
    dist::check_scatter_v(in, out, counts, 0, 1);
    if (in.raw() != out.raw()) std::memcpy(out.raw(), in.raw(), in.nbytes());
  }
  void all_gather(const Tensor& in, const Tensor& out) override {
    dist::check_pair("all_gather", in, out, 1, 1);
    if (in.raw() != out.raw()) std::memcpy(out.raw(), in.raw(), in.nbytes());
  }
  void all_gather_v(const Tensor& in, const Tensor& out,
                    const std::vector<int64_t>& counts) override {
    dist::check_gather_v(in, out, counts, 0, 1);
    if (in.raw() != out.raw()) std::memcpy(out.raw(), in.raw(), in.nbytes());
  }
  void broadcast(const Tensor& t, int root) override {
    dist::check_tensor("broadcast", "t", t);
    NURI_CHECK(root == 0, "broadcast: root ", root, " is not a rank of a one-process job");
  }
  void send(const Tensor&, int peer) override { dist::check_peer("send", peer, 0, 1); }
  void recv(const Tensor&, int peer) override { dist::check_peer("recv", peer, 0, 1); }
  void barrier() override {}
  std::unique_ptr<Communicator> split(const std::vector<int>& ranks) override {
    NURI_CHECK(ranks == std::vector<int>{0}, "split: a one-process job has only rank 0");
    return std::make_unique<SingleCommunicator>(timeout_s_);
  }
};

}  // namespace

ProcessGroup init_process_group(const CommOptions& opt) {
  ProcessGroup pg;
  pg.launch = detect_launch();
  if (pg.launch.world_size > 1) pg.comm = make_communicator(pg.launch, opt);
  return pg;
}

std::unique_ptr<Communicator> make_communicator(const LaunchInfo& info, const CommOptions& opt) {
  double timeout = opt.timeout_s;
  if (const char* env = std::getenv("NURI_COMM_TIMEOUT_S"); env && *env) {
    char* end = nullptr;
    timeout = std::strtod(env, &end);
    NURI_CHECK(*end == '\0' && timeout > 0, "NURI_COMM_TIMEOUT_S='", env,
               "' is not a positive number of seconds");
  }
  NURI_CHECK(timeout > 0, "communicator timeout (", timeout, " s) must be positive");
  // A deadline is a clock's nanoseconds: more than ~9.2e9 s overflows it into the past, so the
  // first wait would fail. Longer limits (inf: none) are taken as kMaxCommTimeout (~31 years).
  timeout = std::min(timeout, kMaxCommTimeout);
  if (info.world_size == 1) return std::make_unique<SingleCommunicator>(timeout);
  // torchrun-style (and srun or an mpiexec with MASTER_ADDR): no MPI runtime to ask, so the
  // ranks meet over TCP at MASTER_ADDR:MASTER_PORT.
  if (info.launcher == Launcher::torchrun || !info.master_addr.empty()) {
    return make_tcp_communicator(info, timeout);
  }
  // An mpiexec's ranks: Open MPI's MPI_Init cannot join them (each would come up as a job of
  // one).
  NURI_CHECK(info.launcher != Launcher::mpiexec, "this process is rank ", info.rank, " of ",
             info.world_size, " started by an mpiexec of MPICH, Intel MPI or Cray PALS "
             "(PMI_RANK, PMI_SIZE), whose ranks nuri's MPI (Open MPI) cannot join: export "
             "MASTER_ADDR (the host of the job's first rank) and MASTER_PORT (a free port) "
             "before mpiexec, which passes them to every rank (or give them with -genv / "
             "--env), and the ranks meet over TCP; or start the job with Open MPI's mpirun, "
             "srun or torchrun");
  // srun without a PMI plugin: MPI_Init would abort with Open MPI's advice to rebuild itself (or
  // come up as a job of one); say what the user can change instead.
  NURI_CHECK(info.launcher != Launcher::srun || info.srun_pmi, "this process is rank ",
             info.rank, " of ", info.world_size, " started by srun without a PMI plugin (no "
             "PMIX_RANK or PMI_RANK in its environment), so MPI cannot connect the ranks: start "
             "the job with `srun --mpi=pmix` (`srun --mpi=list` shows the plugins), or export "
             "MASTER_ADDR (the job's first node) and MASTER_PORT (a free port) to meet over TCP");
#if NURI_HAVE_MPI
  return make_mpi_communicator(info, timeout);
#else
  NURI_CHECK(false, "this process is rank ", info.rank, " of ", info.world_size, " (",
             launcher_name(info.launcher), "), but this build of nuri has no MPI communicator: "
             "configure with -DNURI_MPI=ON (needs Open MPI: apt-get install libopenmpi-dev "
             "openmpi-bin)", info.launcher == Launcher::srun ? ", or export MASTER_ADDR and "
             "MASTER_PORT to meet over TCP" : "");
#endif
}

std::shared_ptr<Communicator> make_device_communicator(std::shared_ptr<Communicator> host,
                                                       Backend& backend) {
  NURI_CHECK(host != nullptr, "make_device_communicator: no host communicator");
  if (backend.device().is_cpu()) return host;
#if NURI_HAVE_NCCL
  return make_nccl_communicator(std::move(host), backend);
#else
  NURI_CHECK(false, "data parallelism on ", backend.name(), " needs the NCCL communicator, and "
             "this build of nuri has none (NCCL was not found when it was configured)");
#endif
}

double norm_over_ranks(Communicator& host, double norm) {
  Tensor mine = Tensor::empty({1}, DType::f32), all = Tensor::empty({host.size()}, DType::f32);
  mine.data<float>()[0] = float(norm);
  host.all_gather(mine, all);
  double sq = 0;
  for (int r = 0; r < host.size(); ++r) sq += double(all.data<float>()[r]) * all.data<float>()[r];
  return std::sqrt(sq);
}

}  // namespace nuri
