// Collectives between the ranks of a job (DESIGN.md, "Distributed").
//
// Every call is collective over the communicator (send/recv: over the pair) and blocks until
// this rank's part is done. Tensors are contiguous, f32 or bf16, in the memory the backend
// serves (the MPI communicator: host tensors). bf16 sums add in f32 and round to bf16 after
// each addition, so they depend on the reduction order; f32 sums do too, but every rank
// receives the same bits (tested). A call that has not completed after `timeout_s` (a peer died,
// hung, or entered another collective) throws nuri::Error naming the operation, the rank and
// the timeout; the communicator is unusable afterwards and the process should exit — the other
// ranks then fail the same way or are ended by the launcher. Never a silent hang.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "nuri/core/tensor.h"
#include "nuri/dist/launch.h"

namespace nuri {

class Backend;

enum class ReduceOp { sum, avg };

/// The longest communicator timeout, in seconds (about 31 years): longer ones, inf included, are
/// taken as this (the deadlines are a clock's nanoseconds).
constexpr double kMaxCommTimeout = 1e9;

struct CommOptions {
  /// Seconds a collective may take before it is declared failed. NURI_COMM_TIMEOUT_S overrides;
  /// more than kMaxCommTimeout (inf: no limit) is taken as kMaxCommTimeout.
  double timeout_s = 600;
};

/// While `flag` is set for the calling thread (null: never), that thread's waits in the TCP
/// rendezvous and in the TCP and MPI communicators' operations end with an Error saying
/// "interrupted" once *flag reads true, instead of at their timeout; the communicator (under
/// MPI, every MPI communicator of the process) cannot be used again, as after a timeout.
/// Python's bindings set it, with a SIGINT handler of their own, around init_process_group,
/// barrier and all_reduce, so that Ctrl-C ends a wait for ranks that never come. (MPI_Init,
/// under mpirun and srun, is not ended by it, nor are NCCL's waits, which no binding makes
/// while the flag is set.)
void set_wait_interrupt(const std::atomic<bool>* flag);

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// "single", "mpi", "tcp"
  virtual std::string backend_name() const = 0;

  /// t (every rank, same shape) becomes the sum (or mean) over ranks, in place.
  virtual void all_reduce(const Tensor& t, ReduceOp op = ReduceOp::sum) = 0;
  /// in [size · n] on every rank; out [n] = the reduction over ranks of in's chunk `rank()`.
  virtual void reduce_scatter(const Tensor& in, const Tensor& out,
                              ReduceOp op = ReduceOp::sum) = 0;
  /// in [counts summed] on every rank; out [counts[rank()]] = the reduction over ranks of in's
  /// chunk rank() (chunks of counts[i] elements in rank order; a count may be 0). out may be
  /// in's first counts[rank()] elements (in place, as MPI_IN_PLACE: in is then overwritten);
  /// otherwise the two must not overlap.
  virtual void reduce_scatter_v(const Tensor& in, const Tensor& out,
                                const std::vector<int64_t>& counts,
                                ReduceOp op = ReduceOp::sum) = 0;
  /// in [n] on every rank; out [size · n] = every rank's in, in rank order.
  virtual void all_gather(const Tensor& in, const Tensor& out) = 0;
  /// The same with chunks of counts[i] elements from rank i (out has their sum; in has
  /// counts[rank()]). in may be out's own chunk (in place: a ZeRO shard of a flat buffer).
  virtual void all_gather_v(const Tensor& in, const Tensor& out,
                            const std::vector<int64_t>& counts) = 0;
  /// t becomes root's t on every rank.
  virtual void broadcast(const Tensor& t, int root) = 0;
  /// Point to point, matched by order between the pair.
  virtual void send(const Tensor& t, int peer) = 0;
  virtual void recv(const Tensor& t, int peer) = 0;
  virtual void barrier() = 0;

  /// A communicator over `ranks` of this one (a group of the ProcessGrid), called by exactly
  /// those ranks with the same list; its rank i is ranks[i].
  virtual std::unique_ptr<Communicator> split(const std::vector<int>& ranks) = 0;

  double timeout_s() const { return timeout_s_; }
  /// Whether calls may come from a thread other than the one that created the communicator (one
  /// thread at a time): what a progress thread that overlaps reductions with the backward needs.
  /// MPI: when the library provides MPI_THREAD_SERIALIZED or more.
  virtual bool callable_from_any_thread() const { return true; }
  /// Whether this communicator's calls may run at the same time as calls of another communicator
  /// of the same library on another thread (data parallelism's progress thread beside tensor
  /// parallelism's calls on the training thread). MPI: only with MPI_THREAD_MULTIPLE.
  virtual bool concurrent_with_other_communicators() const { return true; }
  /// The communicator for host tensors over the same ranks: this one, except for NCCL's, which
  /// moves CUDA tensors and answers with the host communicator it was bootstrapped through.
  virtual Communicator* host_communicator() { return this; }

  /// Stream-ordered calls (NCCL's; tensor parallelism's activations): all_reduce,
  /// reduce_scatter and all_gather then only enqueue the collective after the work queued on
  /// the backend's compute stream and make the compute stream's later work wait for it on the
  /// device; the call returns without a host wait. A failure or the timeout then surfaces at
  /// wait_pending() (or at the next call that waits), which the caller must reach before the
  /// host reads anything the collectives fed. Host communicators complete every call before it
  /// returns and ignore this.
  virtual void set_stream_ordered(bool on) { (void)on; }
  /// Waits on the host, with the timeout, for every collective enqueued (stream-ordered).
  virtual void wait_pending() {}

 protected:
  double timeout_s_ = 600;
};

/// The communicator of this process's job: one process (world size 1) needs none and gets the
/// "single" one; mpirun and srun give MPI (builds with NURI_MPI); a torchrun-style launch (RANK,
/// WORLD_SIZE, MASTER_ADDR, MASTER_PORT) gives "tcp": the ranks meet at MASTER_ADDR:MASTER_PORT
/// and then talk over one socket per pair (csrc/dist/tcp_communicator.cpp).
std::unique_ptr<Communicator> make_communicator(const LaunchInfo& info,
                                                const CommOptions& opt = {});

/// This process's place in its job: where the launcher put it, and the communicator over the
/// job's ranks (null for a job of one process).
struct ProcessGroup {
  LaunchInfo launch;
  std::shared_ptr<Communicator> comm;
  int rank() const { return launch.rank; }
  int size() const { return launch.world_size; }
};

/// The launcher's process group: detect_launch() and, with several ranks, make_communicator()
/// (collective: every rank of the job calls it).
ProcessGroup init_process_group(const CommOptions& opt = {});

/// The communicator for tensors in `backend`'s memory over host's ranks: host itself for the CPU
/// backend; for the CUDA backend (real or emulated) an NCCL communicator bootstrapped through
/// host (rank 0's unique id broadcast over it), which is a collective call over host's ranks.
/// Throws when this build has no NCCL.
std::shared_ptr<Communicator> make_device_communicator(std::shared_ptr<Communicator> host,
                                                       Backend& backend);

/// The root of the sum over host's ranks of norm² (norms of disjoint parts of the gradients):
/// each rank's norm gathered and squared in f64, summed in rank order, so every rank gets the
/// same number and no finite f32 norm overflows (its square in f32 would, above ~1.8e19).
/// Collective over host, a communicator of host tensors.
double norm_over_ranks(Communicator& host, double norm);

/// Whether this build has the MPI communicator.
bool have_mpi();
/// Whether this build has the NCCL communicator (real, or emulated in the emulated CUDA build).
bool have_nccl();

}  // namespace nuri
