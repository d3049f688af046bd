// The MPI communicator (builds with NURI_MPI; host tensors). Every operation is MPI's
// non-blocking form followed by a wait that polls MPI_Test against the timeout, so a dead or hung
// peer becomes an error naming the operation instead of a hang. bf16 has no MPI type: it moves
// as 2-byte elements and sums through a user-defined operation (f32 add, round to nearest even).
#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "dist/comm_check.h"
#include "nuri/core/error.h"
#include "nuri/dist/communicator.h"

namespace nuri {

namespace {

void mpi_check(int err, const char* call) {
  if (err == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(err, msg, &len);
  NURI_CHECK(false, call, " failed: ", std::string(msg, size_t(len)));
}

void bf16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const bf16_t*>(in);
  auto* b = static_cast<bf16_t*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = f32_to_bf16(bf16_to_f32(a[i]) + bf16_to_f32(b[i]));
}

/// MPI itself, once per process: initialized by the first communicator (unless the program did
/// it) and ended at exit if nuri initialized it: MPI_Finalize after a healthy run, but
/// MPI_Abort once a communicator has timed out, because Open MPI's MPI_Finalize waits for every
/// rank, the hung one too; MPI_Abort ends the whole job (mpirun reports errorcode 3).
struct MpiRuntime {
  MPI_Datatype bf16 = MPI_DATATYPE_NULL;
  MPI_Op bf16_sum_op = MPI_OP_NULL;
  bool we_initialized = false;
  int thread_level = MPI_THREAD_SINGLE;  ///< what MPI provides
  std::atomic<bool> failed{false};
  /// Why (the first operation that timed out or was interrupted), set once with `failed`.
  std::string failed_what;
  /// What the requests left pending by a failed wait still point at (buffers, counts and
  /// displacements): kept for the rest of the process, as MPI may still write into them.
  std::mutex abandoned_mutex;
  std::vector<std::shared_ptr<void>> abandoned;

  static MpiRuntime& get() {
    static MpiRuntime* rt = [] {
      auto* r = new MpiRuntime;  // leaked on purpose: used by the atexit hook
      int inited = 0;
      MPI_Initialized(&inited);
      if (!inited) {
        // SERIALIZED: the data-parallel progress thread makes calls too, never at the same
        // time as the main thread (DataParallel waits for it before its own calls).
        int provided = 0;
        mpi_check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided),
                  "MPI_Init_thread");
        r->we_initialized = true;
        std::atexit([] {
          int finalized = 0;
          MPI_Finalized(&finalized);
          if (finalized) return;
          if (get().failed.load()) MPI_Abort(MPI_COMM_WORLD, 3);
          MPI_Finalize();
        });
      }
      mpi_check(MPI_Query_thread(&r->thread_level), "MPI_Query_thread");
      mpi_check(MPI_Type_contiguous(2, MPI_BYTE, &r->bf16), "MPI_Type_contiguous");
      mpi_check(MPI_Type_commit(&r->bf16), "MPI_Type_commit");
      mpi_check(MPI_Op_create(&bf16_sum, /*commute=*/1, &r->bf16_sum_op), "MPI_Op_create");
      return r;
    }();
    return *rt;
  }
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, double timeout_s, bool owned) : comm_(comm), owned_(owned) {
    timeout_s_ = timeout_s;
    mpi_check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    mpi_check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized && !broken_) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend_name() const override { return "mpi"; }

  void all_reduce(const Tensor& t, ReduceOp op) override {
    dist::check_tensor("all_reduce", "t", t);
    start("all_reduce", t, op);
    MPI_Request req;
    mpi_check(MPI_Iallreduce(MPI_IN_PLACE, t.raw(), count(t), type(t), reduce_op(t), comm_, &req),
              "MPI_Iallreduce");
    wait(req, {t});
    if (op == ReduceOp::avg) dist::scale(t, 1.0 / size_);
  }

  void reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op) override {
    dist::check_pair("reduce_scatter", in, out, size_, 1);
    start("reduce_scatter", in, op);
    MPI_Request req;
    mpi_check(MPI_Ireduce_scatter_block(in.raw(), out.raw(), count(out), type(in), reduce_op(in),
                                        comm_, &req),
              "MPI_Ireduce_scatter_block");
    wait(req, {in, out});
    if (op == ReduceOp::avg) dist::scale(out, 1.0 / size_);
  }

  void reduce_scatter_v(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts,
                        ReduceOp op) override {
    dist::check_scatter_v(in, out, counts, rank_, size_);
    start("reduce_scatter_v", in, op);
    auto counts_n = std::make_shared<std::vector<int>>(static_cast<size_t>(size_));
    std::vector<int>& n = *counts_n;
    for (int r = 0; r < size_; ++r) n[size_t(r)] = int_count("reduce_scatter_v", counts[size_t(r)]);
    int_count("reduce_scatter_v", in.numel());
    MPI_Request req;
    const bool in_place = in.raw() == out.raw();  // the result lands at in's start
    mpi_check(MPI_Ireduce_scatter(in_place ? MPI_IN_PLACE : in.raw(), out.raw(), n.data(),
                                  type(in), reduce_op(in), comm_, &req),
              "MPI_Ireduce_scatter");
    wait(req, {in, out}, {counts_n});  // n stays alive until the operation completes
    if (op == ReduceOp::avg) dist::scale(out, 1.0 / size_);
  }

  bool callable_from_any_thread() const override {
    return MpiRuntime::get().thread_level >= MPI_THREAD_SERIALIZED;
  }
  bool concurrent_with_other_communicators() const override {
    return MpiRuntime::get().thread_level >= MPI_THREAD_MULTIPLE;
  }

  void all_gather(const Tensor& in, const Tensor& out) override {
    dist::check_pair("all_gather", in, out, 1, size_);
    start("all_gather", in);
    MPI_Request req;
    mpi_check(MPI_Iallgather(in.raw(), count(in), type(in), out.raw(), count(in), type(in), comm_,
                             &req),
              "MPI_Iallgather");
    wait(req, {in, out});
  }

  void all_gather_v(const Tensor& in, const Tensor& out,
                    const std::vector<int64_t>& counts) override {
    const int64_t offset = dist::check_gather_v(in, out, counts, rank_, size_);
    start("all_gather_v", out);
    auto counts_n = std::make_shared<std::vector<int>>(static_cast<size_t>(size_));
    auto displs = std::make_shared<std::vector<int>>(static_cast<size_t>(size_));
    std::vector<int>& n = *counts_n;
    std::vector<int>& displ = *displs;
    int64_t at = 0;
    for (int r = 0; r < size_; ++r) {
      n[size_t(r)] = int_count("all_gather_v", counts[size_t(r)]);
      displ[size_t(r)] = int_count("all_gather_v", at);
      at += counts[size_t(r)];
    }
    const size_t esize = dtype_size(out.dtype());
    const bool in_place = in.raw() == static_cast<char*>(out.raw()) + size_t(offset) * esize;
    MPI_Request req;
    mpi_check(MPI_Iallgatherv(in_place ? MPI_IN_PLACE : in.raw(), n[size_t(rank_)], type(in),
                              out.raw(), n.data(), displ.data(), type(out), comm_, &req),
              "MPI_Iallgatherv");
    wait(req, {in, out}, {counts_n, displs});  // n and displ stay alive until it completes
  }

  void broadcast(const Tensor& t, int root) override {
    dist::check_tensor("broadcast", "t", t);
    NURI_CHECK(root >= 0 && root < size_, "broadcast: root ", root, " is not a rank of this ",
               size_, "-rank communicator");
    start("broadcast", t);
    MPI_Request req;
    mpi_check(MPI_Ibcast(t.raw(), count(t), type(t), root, comm_, &req), "MPI_Ibcast");
    wait(req, {t});
  }

  void send(const Tensor& t, int peer) override { point_to_point(true, t, peer); }
  void recv(const Tensor& t, int peer) override { point_to_point(false, t, peer); }

  void barrier() override {
    start("barrier", Tensor());
    MPI_Request req;
    mpi_check(MPI_Ibarrier(comm_, &req), "MPI_Ibarrier");
    wait(req);
  }

  std::unique_ptr<Communicator> split(const std::vector<int>& ranks) override {
    NURI_CHECK(!ranks.empty(), "split: no ranks given");
    bool me = false;
    for (size_t i = 0; i < ranks.size(); ++i) {
      NURI_CHECK(ranks[i] >= 0 && ranks[i] < size_, "split: rank ", ranks[i], " is outside this ",
                 size_, "-rank communicator");
      for (size_t j = 0; j < i; ++j)
        NURI_CHECK(ranks[j] != ranks[i], "split: rank ", ranks[i], " is listed twice");
      me = me || ranks[i] == rank_;
    }
    NURI_CHECK(me, "split: rank ", rank_, " is not in the group it asked for");
    check_usable("split");
    MPI_Group world_group, group;
    mpi_check(MPI_Comm_group(comm_, &world_group), "MPI_Comm_group");
    mpi_check(MPI_Group_incl(world_group, int(ranks.size()), ranks.data(), &group),
              "MPI_Group_incl");
    MPI_Comm sub = MPI_COMM_NULL;
    // Called by the group's members only; the tag keeps concurrent creations apart.
    mpi_check(MPI_Comm_create_group(comm_, group, kTag + 1, &sub), "MPI_Comm_create_group");
    MPI_Group_free(&group);
    MPI_Group_free(&world_group);
    return std::make_unique<MpiCommunicator>(sub, timeout_s_, true);
  }

 private:
  static constexpr int kTag = 7100;

  static int int_count(const char* op, int64_t n) {
    NURI_CHECK(n <= INT32_MAX, op, ": ", n, " elements are more than one MPI call moves "
               "(2^31 - 1): split the tensor");
    return int(n);
  }
  static int count(const Tensor& t) {
    NURI_CHECK(t.numel() <= INT32_MAX, "a tensor of ", t.numel(),
               " elements is more than one MPI call moves (2^31 - 1): split it");
    return int(t.numel());
  }
  static MPI_Datatype type(const Tensor& t) {
    return t.dtype() == DType::f32 ? MPI_FLOAT : MpiRuntime::get().bf16;
  }
  static MPI_Op reduce_op(const Tensor& t) {
    return t.dtype() == DType::f32 ? MPI_SUM : MpiRuntime::get().bf16_sum_op;
  }
  void point_to_point(bool sending, const Tensor& t, int peer) {
    const char* op = sending ? "send" : "recv";
    dist::check_tensor(op, "t", t);
    dist::check_peer(op, peer, rank_, size_);
    start(op, t, std::nullopt, peer);
    MPI_Request req;
    if (sending) {
      mpi_check(MPI_Isend(t.raw(), count(t), type(t), peer, kTag, comm_, &req), "MPI_Isend");
    } else {
      mpi_check(MPI_Irecv(t.raw(), count(t), type(t), peer, kTag, comm_, &req), "MPI_Irecv");
    }
    wait(req, {t});
  }

  void check_usable(const char* op) const {
    NURI_CHECK(!broken_, op, " on rank ", rank_, ": this communicator failed earlier (",
               broken_what_, ") and cannot be used again; end the process");
    // Nor any other: an MPI call would advance the failed operation's request.
    MpiRuntime& rt = MpiRuntime::get();
    if (rt.failed.load()) {
      const std::lock_guard<std::mutex> lock(rt.abandoned_mutex);
      NURI_CHECK(false, op, " on rank ", rank_, ": an MPI operation of this process failed "
                 "earlier (", rt.failed_what, "), so MPI cannot be used again; end the process");
    }
  }

  /// Records what is about to run, for the timeout's message.
  void start(const char* op, const Tensor& t, std::optional<ReduceOp> rop = std::nullopt,
             int peer = -1) {
    check_usable(op);
    what_ = dist::describe(op, t, rop, peer);
  }

  /// Polls until req completes, the timeout passes or the wait is interrupted
  /// (set_wait_interrupt). `buffers` and `arrays`: what the request points at, kept for the
  /// rest of the process when it is left pending.
  void wait(MPI_Request& req, std::initializer_list<Tensor> buffers = {},
            std::initializer_list<std::shared_ptr<std::vector<int>>> arrays = {}) {
    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    const auto deadline = t0 + std::chrono::duration<double>(timeout_s_);
    int done = 0;
    bool interrupted = false;
    for (int spin = 0;; ++spin) {
      mpi_check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (done) return;
      const auto now = Clock::now();
      if (now > deadline || (interrupted = dist::wait_interrupted())) break;
      // Non-blocking collectives advance only inside MPI calls, so a nap between tests delays
      // every round of the algorithm: test back to back (yielding the core to anyone who needs
      // it, e.g. ranks oversubscribed on few cores) for the first 20 ms, then nap 50 µs.
      if (now - t0 > std::chrono::milliseconds(20)) {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      } else {
        std::this_thread::yield();
      }
    }
    // The request stays pending: no MPI communicator can be used again, the process ends with
    // MPI_Abort (MPI_Finalize would wait for the request), and what the request points at is
    // kept (a caller catching the error, Python's KeyboardInterrupt, say, may go on).
    broken_ = true;
    broken_what_ = what_;
    {
      MpiRuntime& rt = MpiRuntime::get();
      const std::lock_guard<std::mutex> lock(rt.abandoned_mutex);
      for (const Tensor& b : buffers) rt.abandoned.push_back(std::make_shared<Tensor>(b));
      for (const auto& a : arrays) rt.abandoned.push_back(a);
      if (!rt.failed.load()) rt.failed_what = what_ + " on rank " + std::to_string(rank_);
      rt.failed = true;
    }
    NURI_CHECK(!interrupted, what_, " on rank ", rank_, " of ", size_, " (mpi) was interrupted "
               "while waiting for the other ranks (Ctrl-C); this rank gives up");
    std::ostringstream t;
    t << timeout_s_;
    NURI_CHECK(false, what_, " on rank ", rank_, " of ", size_, " (mpi) did not complete within ",
               t.str(), " s: a peer died, hung, or is in a different collective. This rank gives "
               "up; every rank should exit (NURI_COMM_TIMEOUT_S sets the limit)");
  }

  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
  std::string what_;
  bool broken_ = false;
  std::string broken_what_;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(const LaunchInfo& info, double timeout_s) {
  MpiRuntime::get();
  int rank = 0, size = 0;
  mpi_check(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank");
  mpi_check(MPI_Comm_size(MPI_COMM_WORLD, &size), "MPI_Comm_size");
  NURI_CHECK(rank == info.rank && size == info.world_size, "MPI says rank ", rank, " of ", size,
             " but the ", launcher_name(info.launcher), " said rank ", info.rank, " of ",
             info.world_size, "; was this process started by another launcher than MPI's?");
  MPI_Comm world = MPI_COMM_NULL;
  mpi_check(MPI_Comm_dup(MPI_COMM_WORLD, &world), "MPI_Comm_dup");  // nuri's own traffic
  return std::make_unique<MpiCommunicator>(world, timeout_s, true);
}

}  // namespace nuri
