// Data parallelism: bucketed gradient reduction from the backward's hooks, on a progress thread,
// and ZeRO stages 0, 1 and 2 (see the header).
#include "nuri/parallel/data_parallel.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>
#include <tuple>

#include "nuri/core/error.h"
#include "nuri/core/log.h"
#include "nuri/core/settings.h"

namespace nuri {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

const Settings& parallel_settings() {
  static const Settings s = [] {
    Settings t;
    using C = ParallelConfig;
    t.add("zero_stage", &C::zero_stage,
          "ZeRO stage over the data-parallel ranks: 0 shards nothing, 1 AdamW's state, "
          "2 the gradients too, 3 the weights too").at_least(0).at_most(3);
    t.add("tp", &C::tp,
          "tensor parallelism: ranks that split every layer's heads, MLP columns and vocabulary "
          "(neighbouring ranks, normally one node); the data-parallel ranks are world / tp")
        .at_least(1)
        .at_most(32768);  // tp · pp stays an int
    t.add("pp", &C::pp,
          "pipeline parallelism: stages, each holding a contiguous range of the blocks (the "
          "slowest-varying coordinate, normally across nodes); 1F1B over grad_accum "
          "micro-batches").at_least(1).at_most(32768);
    t.add("pp_timeline", &C::pp_timeline,
          "with pp > 1: write the last step's pipeline timeline (every rank's forwards, "
          "backwards and transfers) as a Chrome trace, timeline.json in the output directory");
    t.add("sequence_parallel", &C::sequence_parallel,
          "with tp > 1: split the residual stream and the norms along the token rows too "
          "(activation memory / tp; the all-reduces become reduce-scatters and all-gathers)");
    t.custom("bucket_mb", SettingKind::number, "gradient bytes per reduction bucket, in MiB",
             [](const void* o) {
               return SettingValue(double(static_cast<const C*>(o)->bucket_bytes) / 1048576.0);
             },
             [](void* o, const SettingValue& v) {
               static_cast<C*>(o)->bucket_bytes =
                   std::max<int64_t>(1, int64_t(std::get<double>(v) * 1048576.0));
             }).above(0).at_most(1048576);  // 1 TiB: the bytes stay an int64
    t.add("overlap", &C::overlap,
          "reduce each bucket while the backward goes on (false: after the backward)");
    t.add("keep_gathered", &C::keep_gathered,
          "ZeRO 3: keep each block's gathered weights from its forward to its backward (ZeRO "
          "2's memory, one gather fewer)");
    return t;
  }();
  return s;
}

void ParallelConfig::validate() const {
  parallel_settings().check_bounds(this, "");
  NURI_CHECK(bucket_bytes > 0, "bucket_bytes (", bucket_bytes, ") must be positive");
  NURI_CHECK(!pp_timeline || pp > 1, "parallel.pp_timeline records the pipeline's timeline, "
             "and parallel.pp is 1; set pp > 1 or leave pp_timeline off");
  NURI_CHECK(!sequence_parallel || tp > 1, "parallel.sequence_parallel splits the token rows "
             "over the tensor-parallel ranks, and parallel.tp is 1; set tp > 1 or leave "
             "sequence_parallel off");
}

/// One thread that runs the reductions in the order they are submitted. Its tasks are the only
/// communicator calls while it is busy: DataParallel waits for it before calling the
/// communicator itself (MPI_THREAD_SERIALIZED suffices). The first error stops the queue (the
/// tasks behind it are dropped) and is rethrown by wait().
class DataParallel::Progress {
 public:
  Progress() : thread_([this] { run(); }) {}
  ~Progress() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  /// Queues fn; returns its ticket (tasks run in ticket order).
  uint64_t push(std::function<void()> fn) {
    uint64_t ticket = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(fn));
      ticket = pushed_++;
    }
    cv_.notify_all();
    return ticket;
  }

  /// Blocks until the task with this ticket is no longer queued or running. rethrow: when the
  /// task failed or was dropped after a failure, rethrows that failure, since what it was to
  /// fill (ZeRO 3's gathered weights) was never filled; without it (freeing what the task used,
  /// from a destructor) the caller learns of it from wait().
  void wait_for(uint64_t ticket, bool rethrow = true) {
    std::unique_lock<std::mutex> lock(mu_);
    idle_cv_.wait(lock, [&] { return done_ > ticket; });
    if (rethrow && failed_at_ <= ticket && ticket < recovered_at_) {
      std::rethrow_exception(failure_);
    }
  }

  /// Blocks until every task so far has run; rethrows the first error (once).
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    idle_cv_.wait(lock, [&] { return queue_.empty() && !busy_; });
    if (error_) {
      std::exception_ptr e = error_;
      error_ = nullptr;
      recovered_at_ = pushed_;  // the tasks queued from now on run again
      std::rethrow_exception(e);
    }
  }

  /// Blocks until at most n tasks are queued or running (rethrows nothing: wait() does).
  void wait_pending_at_most(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    idle_cv_.wait(lock, [&] { return queue_.size() + (busy_ ? 1 : 0) <= n || error_; });
  }

  /// Seconds the tasks ran since the last call.
  double take_busy_seconds() {
    std::lock_guard<std::mutex> lock(mu_);
    const double s = busy_seconds_;
    busy_seconds_ = 0;
    return s;
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_
      std::function<void()> fn = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      const bool failed = error_ != nullptr;
      lock.unlock();
      std::exception_ptr err;
      const auto t0 = Clock::now();
      if (!failed) {
        try {
          fn();
        } catch (...) {
          err = std::current_exception();
        }
      }
      fn = nullptr;  // frees what the task held (a ZeRO 2 bucket) on this thread, now
      const double dt = seconds_since(t0);
      lock.lock();
      busy_seconds_ += dt;
      if (err && !error_) {
        error_ = failure_ = err;
        failed_at_ = done_;  // this task's ticket: tasks finish in ticket order
        recovered_at_ = std::numeric_limits<uint64_t>::max();
      }
      busy_ = false;
      ++done_;
      idle_cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<std::function<void()>> queue_;
  bool busy_ = false, stop_ = false;
  uint64_t pushed_ = 0, done_ = 0;  // tickets handed out, tasks finished
  std::exception_ptr error_;
  // The last failure, kept after wait() cleared error_: the tasks of tickets [failed_at_,
  // recovered_at_) failed or were dropped (those queued after wait() rethrew it run again).
  std::exception_ptr failure_;
  uint64_t failed_at_ = std::numeric_limits<uint64_t>::max();
  uint64_t recovered_at_ = std::numeric_limits<uint64_t>::max();
  double busy_seconds_ = 0;
  std::thread thread_;  // last: starts after the members it uses
};

struct DataParallel::Bucket {
  int64_t lo = 0, hi = 0;
  int units = 0;      ///< units of the backward in this bucket
  int ready = 0;      ///< of them complete in this backward
  Tensor staging;     ///< ZeRO 2: the bucket's gradients of this backward
  /// ZeRO 2 with overlap: the progress ticket of this bucket's last reduction this step (its
  /// result must be in the shard before the next micro-batch's staging starts from it).
  int64_t ticket = -1;
};

DataParallel::DataParallel(std::shared_ptr<Communicator> comm, const ParallelConfig& cfg)
    : comm_(std::move(comm)), cfg_((cfg.validate(), cfg)) {
  NURI_CHECK(comm_ != nullptr, "DataParallel: no communicator");
  overlap_ = cfg_.overlap && comm_->size() > 1 && comm_->callable_from_any_thread();
  if (cfg_.overlap && !overlap_ && comm_->size() > 1) {
    NURI_LOG(warn, "the ", comm_->backend_name(), " communicator cannot be called from a "
             "progress thread (MPI was initialized without MPI_THREAD_SERIALIZED): gradients are "
             "reduced after the backward, not overlapped with it");
  }
  if (overlap_) progress_ = std::make_unique<Progress>();
}

DataParallel::~DataParallel() {
  if (progress_) {
    try {
      progress_->wait();
    } catch (...) {  // the error was the step's to report; nothing to do with it here
    }
  }
  // The model outlives this (a Python model, a second trainer built on it): it must not keep
  // pointers here, but hooks another DataParallel set since are that one's.
  if (model_ && model_->grad_hooks() == static_cast<GradHooks*>(this)) {
    model_->set_grad_hooks(nullptr);
  }
  if (model_ && model_->param_hooks() == static_cast<ParamHooks*>(this)) {
    model_->set_param_hooks(nullptr);  // a ZeRO 3 shard: its forward now says it needs them
  }
}

std::vector<int64_t> DataParallel::shard_counts(int64_t n) const {
  std::vector<int64_t> counts(size_t(world()), n / world());
  for (int64_t r = 0; r < n % world(); ++r) ++counts[size_t(r)];
  return counts;
}

std::pair<int64_t, int64_t> DataParallel::shard(int64_t n) const {
  return shard_of(n, world(), rank());
}

std::pair<int64_t, int64_t> DataParallel::shard_of(int64_t n, int world, int rank) {
  const int64_t base = n / world, extra = n % world;
  const int64_t begin = rank * base + std::min<int64_t>(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

void DataParallel::attach(Transformer& model) {
  NURI_CHECK(model_ == nullptr, "DataParallel::attach: already attached to a model");
  const bool host = model.backend().device().is_cpu();
  NURI_CHECK(host || world() == 1 || comm_->host_communicator() != comm_.get(),
             "the ", comm_->backend_name(), " communicator moves host tensors, but the model is on ",
             model.backend().name(), "; pass make_device_communicator(comm, backend) (the "
             "Trainer does that itself)");
  NURI_CHECK(!model.parameters_sharded() || cfg_.zero_stage == 3, "DataParallel: the model "
             "holds a shard of its weights, which only ZeRO stage 3 (parallel.zero_stage=3) "
             "gathers; this run has stage ", cfg_.zero_stage);
  model_ = &model;
  const int64_t total = model.parameter_count();
  std::tie(lo_, hi_) = shard(total);
  // ZeRO 1, 2 with a compute copy (a GPU model): the f32 masters are optimizer state, sharded
  // like AdamW's moments; the forward reads the bf16 copy, which gather_parameters() refreshes.
  if (cfg_.zero_stage == 3) {
    if (!model.parameters_sharded()) model.shard_parameters(lo_, hi_);  // else made as a shard
    NURI_CHECK(model.master_begin() == lo_ && model.master_end() == hi_, "DataParallel: the "
               "model holds the weights of [", model.master_begin(), ", ", model.master_end(),
               "), not this rank's shard [", lo_, ", ", hi_, ")");
    unit_ranges_ = model.unit_ranges();
    gathered_.assign(unit_ranges_.size(), Gathered{});
    model.set_param_hooks(this);
  } else if (cfg_.zero_stage >= 1 && model.compute_buffer().defined() && world() > 1) {
    model.shard_master_weights(lo_, hi_);
  }
  // Buckets: whole units in backward order, merged until bucket_bytes.
  const auto& units = model.grad_units();
  buckets_.clear();
  unit_bucket_.clear();
  for (const auto& [lo, hi] : plan_buckets(units, cfg_.bucket_bytes)) {
    buckets_.push_back(Bucket{lo, hi, 0, 0, Tensor()});
  }
  size_t b = 0;  // the units in order fill the buckets in order
  for (const auto& unit : units) {
    if (unit.first < buckets_[b].lo) ++b;
    ++buckets_[b].units;
    unit_bucket_.push_back(b);
  }
  if (cfg_.zero_stage >= 2) {
    // On the CPU a counting view of the backend's allocator (its limit and categories apply), so
    // tests can read the gradients' own peak bytes.
    grad_alloc_ = host ? std::make_shared<CountingAllocator>(model.backend().allocator())
                       : model.backend().allocator();
    MemoryScope gradients(MemoryCategory::gradients);
    shard_grad_ = Tensor::empty({hi_ - lo_}, DType::f32, grad_alloc_);
    model.backend().zero(shard_grad_);
    communicate_ = true;
    model.set_grad_hooks(this, /*own_storage=*/true);
  } else {
    grad_alloc_ = model.backend().allocator();
    model.set_grad_hooks(this);
  }
}

std::vector<std::pair<int64_t, int64_t>> DataParallel::plan_buckets(
    const std::vector<std::pair<int64_t, int64_t>>& grad_units, int64_t bucket_bytes) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const auto& [lo, hi] : grad_units) {
    const bool fresh = out.empty() || (out.back().second - out.back().first) * 4 >= bucket_bytes;
    NURI_ASSERT(fresh || hi == out.back().first,
                "backward units are not contiguous and descending");
    if (fresh) out.push_back({lo, hi});
    out.back().first = lo;
  }
  return out;
}

std::vector<std::pair<int64_t, int64_t>> DataParallel::buckets() const {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const Bucket& b : buckets_) out.push_back({b.lo, b.hi});
  return out;
}

void DataParallel::begin_step() {
  NURI_CHECK(model_ != nullptr, "DataParallel: attach(model) before training");
  if (shard_grad_.defined()) model_->backend().zero(shard_grad_);
  for (Bucket& b : buckets_) b.ticket = -1;
  stats_ = CommStats{};
  stats_.gathered_peak_bytes = gathered_bytes_;  // units kept from an evaluation
  gather_ns_->store(0);
}

void DataParallel::before_backward(bool last_micro_batch) {
  // Stage 2 reduces even with one rank: its "reduction" moves the bucket into the shard.
  communicate_ = cfg_.zero_stage >= 2 || (world() > 1 && last_micro_batch);
  for (Bucket& b : buckets_) b.ready = 0;
}

Tensor DataParallel::region(int64_t lo, int64_t hi) {
  // Only ZeRO 2 owns the storage: each bucket's gradients of this backward, zeroed.
  size_t u = 0;
  while (u < model_->grad_units().size() && model_->grad_units()[u].first != lo) ++u;
  NURI_ASSERT(u < model_->grad_units().size(), "no backward unit starts at ", lo);
  Bucket& b = buckets_[unit_bucket_[u]];
  if (!b.staging.defined()) {
    // At most one bucket in flight while the backward fills the next: a rank's staging stays
    // under two buckets (plus the tied embedding's, which lives through the whole backward).
    if (progress_) {
      const auto t0 = Clock::now();
      progress_->wait_pending_at_most(1);
      stats_.exposed_seconds += seconds_since(t0);
    }
    MemoryScope gradients(MemoryCategory::gradients);
    b.staging = Tensor::empty({b.hi - b.lo}, DType::f32, grad_alloc_);
    model_->backend().zero(b.staging);
    // This rank's part of the bucket starts from its shard's sum so far (earlier micro-batches):
    // the backward adds this micro-batch on top, the reduce-scatter the other ranks' parts, and
    // its result replaces the shard. No addition outside the backward and the collective.
    const auto [from, to] = piece(b);
    if (to > from) {
      if (progress_ && b.ticket >= 0) {  // the previous micro-batch's sum must have landed
        const auto t0 = Clock::now();
        progress_->wait_for(uint64_t(b.ticket));
        stats_.exposed_seconds += seconds_since(t0);
      }
      model_->backend().copy(shard_grad_.slice(0, from - lo_, to - lo_),
                             b.staging.slice(0, from - b.lo, to - b.lo));
    }
  }
  return b.staging.slice(0, lo - b.lo, hi - b.lo);
}

void DataParallel::ready(int64_t lo, int64_t) {
  size_t u = 0;
  while (u < model_->grad_units().size() && model_->grad_units()[u].first != lo) ++u;
  NURI_ASSERT(u < model_->grad_units().size(), "no backward unit starts at ", lo);
  Bucket& b = buckets_[unit_bucket_[u]];
  if (++b.ready == b.units && communicate_) launch(b);
}

void DataParallel::count(int64_t bytes, double bus_factor) {
  ++stats_.collectives;
  stats_.payload_bytes += bytes;
  stats_.bus_bytes += int64_t(double(bytes) * bus_factor + 0.5);
}

void DataParallel::launch(Bucket& b) {
  const double n = world();
  Communicator* comm = comm_.get();
  if (cfg_.zero_stage < 2) {
    const Tensor g = model_->grad_buffer().slice(0, b.lo, b.hi);
    count(g.nbytes(), 2 * (n - 1) / n);
    submit([comm, g] { comm->all_reduce(g, ReduceOp::sum); });
    return;
  }
  // ZeRO 2, 3: rank r receives the sum of the bucket's part inside its shard (maybe nothing).
  std::vector<int64_t> counts = shard_counts(model_->parameter_count());
  int64_t at = 0;
  for (int64_t& c : counts) {  // shard [at, at + c) ∩ [b.lo, b.hi)
    const int64_t from = std::max(at, b.lo), to = std::min(at + c, b.hi);
    at += c;
    c = std::max<int64_t>(0, to - from);
  }
  const auto [from, to] = piece(b);
  count(b.staging.nbytes(), (n - 1) / n);
  Tensor staging = std::move(b.staging);  // the task frees it when done
  b.staging = Tensor();
  const Tensor dst = shard_grad_.slice(0, from - lo_, to - lo_);
  if (world() == 1) {  // the bucket is the shard's range: its sum is the staging itself
    Backend* be = &model_->backend();
    submit([be, staging, dst] { be->copy(staging, dst); });
    return;
  }
  b.ticket = submit([comm, staging, dst, counts] {
    comm->reduce_scatter_v(staging, dst, counts, ReduceOp::sum);
  });
}

std::pair<int64_t, int64_t> DataParallel::piece(const Bucket& b) const {
  const int64_t from = std::min(std::max(lo_, b.lo), hi_);  // maybe empty
  return {from, std::max(from, std::min(hi_, b.hi))};
}

int64_t DataParallel::submit(std::function<void()> fn) {
  if (progress_) return int64_t(progress_->push(std::move(fn)));
  deferred_.push_back(std::move(fn));
  // ZeRO 2 without a progress thread: now, on this thread, so the bucket's memory goes at once
  // (and the shard holds the sum before the next micro-batch starts from it).
  if (cfg_.zero_stage >= 2) after_backward();
  return -1;
}

// ---- ZeRO 3: the units' weights, gathered for the model ------------------------------------------

void DataParallel::start_gather(size_t u) {
  Gathered& g = gathered_[u];
  if (g.weights.defined()) return;  // gathered, or on its way
  const auto [lo, hi] = unit_ranges_[u];
  Backend& be = model_->backend();
  MemoryScope weights(MemoryCategory::parameters);
  g.weights = be.empty({hi - lo}, model_->compute_dtype());
  gathered_bytes_ += g.weights.nbytes();
  stats_.gathered_peak_bytes = std::max(stats_.gathered_peak_bytes, gathered_bytes_);
  // Rank r holds [lo, hi) ∩ its shard: the pieces, in rank order, are the unit.
  std::vector<int64_t> counts = shard_counts(model_->parameter_count());
  int64_t at = 0;
  for (int64_t& c : counts) {
    const int64_t from = std::max(at, lo), to = std::min(at + c, hi);
    at += c;
    c = std::max<int64_t>(0, to - from);
  }
  const int64_t from = std::min(std::max(lo_, lo), hi_), to = std::max(from, std::min(hi_, hi));
  const Tensor mine = model_->compute_weights().slice(0, from - lo_, to - lo_);
  const Tensor dst = g.weights;
  ++stats_.unit_gathers;
  count(dst.nbytes(), (double(world()) - 1) / world());
  Communicator* comm = comm_.get();
  auto ns = gather_ns_;
  auto gather = [comm, &be, mine, dst, counts, ns, world = world()] {
    const auto t0 = Clock::now();
    if (world == 1) be.copy(mine, dst);
    else comm->all_gather_v(mine, dst, counts);
    ns->fetch_add(int64_t(seconds_since(t0) * 1e9));
  };
  if (progress_) {
    g.ticket = int64_t(progress_->push(std::move(gather)));
  } else {  // no progress thread: now, on this thread, all of it exposed
    const auto t0 = Clock::now();
    gather();
    stats_.gather_exposed_seconds += seconds_since(t0);
  }
}

Tensor DataParallel::acquire(size_t u, int64_t lo, int64_t hi, bool backward) {
  NURI_ASSERT(u < unit_ranges_.size() && unit_ranges_[u] == std::make_pair(lo, hi),
              "acquire of an unknown unit");
  const auto t0 = Clock::now();
  start_gather(u);  // a no-op when it was prefetched (or kept from the forward)
  Gathered& g = gathered_[u];
  if (progress_ && g.ticket >= 0) {
    progress_->wait_for(uint64_t(g.ticket));
    g.ticket = -1;
    stats_.gather_exposed_seconds += seconds_since(t0);
  }
  // The next unit's gather overlaps this one's compute: the forward's next unit; the backward's
  // block below. None beside the head and its tied embedding (two units already): the head's
  // forward takes the embedding after the head, its backward both.
  const size_t head = unit_ranges_.size() - 1;
  const bool tied_for_head = u == 0 && gathered_[head].weights.defined();
  if (!backward && u < head && !tied_for_head) start_gather(u + 1);
  if (backward && u >= 2 && u < head) start_gather(u - 1);
  return g.weights;
}

void DataParallel::release(size_t u, bool backward) {
  if (!backward && cfg_.keep_gathered) return;  // the backward takes it as it is
  if (progress_ && gathered_[u].ticket >= 0) {
    progress_->wait_for(uint64_t(gathered_[u].ticket), /*rethrow=*/false);  // (a destructor's)
  }
  gathered_bytes_ -= gathered_[u].weights.nbytes();
  gathered_[u] = Gathered{};
}

void DataParallel::drop_gathered() {
  for (size_t u = 0; u < gathered_.size(); ++u) {
    if (progress_ && gathered_[u].ticket >= 0) {
      progress_->wait_for(uint64_t(gathered_[u].ticket), /*rethrow=*/false);
    }
    gathered_bytes_ -= gathered_[u].weights.nbytes();
    gathered_[u] = Gathered{};
  }
}

void DataParallel::after_backward() {
  if (deferred_.empty()) return;
  const auto t0 = Clock::now();
  std::vector<std::function<void()>> tasks;
  tasks.swap(deferred_);
  for (auto& fn : tasks) {
    fn();
    fn = nullptr;
  }
  const double dt = seconds_since(t0);
  stats_.reduce_seconds += dt;
  stats_.exposed_seconds += dt;
}

void DataParallel::finish_gradients() {
  after_backward();
  if (progress_) {
    const auto t0 = Clock::now();
    progress_->wait();
    stats_.exposed_seconds += seconds_since(t0);
  }
  // ZeRO 3's gathers of this step so far; the progress thread's other time was reductions.
  const double gathers = double(gather_ns_->exchange(0)) / 1e9;
  stats_.gather_seconds += gathers;
  if (progress_) stats_.reduce_seconds += std::max(0.0, progress_->take_busy_seconds() - gathers);
}

float DataParallel::global_norm(float shard_norm) {
  if (progress_) progress_->wait();
  return float(norm_over_ranks(*comm_->host_communicator(), shard_norm));
}

void DataParallel::gather_parameters(Transformer& model) {
  if (cfg_.zero_stage == 3) {  // nothing to gather now: the next forward gathers each unit
    drop_gathered();
    return;
  }
  if (world() == 1) return;
  if (progress_) progress_->wait();
  const auto t0 = Clock::now();
  // Sharded masters (a GPU model under ZeRO 1, 2) stay with their rank; only the compute copy
  // the forward reads is gathered.
  for (const Tensor* buf : {&model.param_buffer(), &model.compute_buffer()}) {
    if (!buf->defined() || (buf == &model.param_buffer() && model.masters_sharded())) continue;
    NURI_CHECK(buf->device().is_cpu() || comm_->host_communicator() != comm_.get(),
               "the ", comm_->backend_name(), " communicator moves host tensors, but the model's "
               "parameters are on ", model.backend().name());
    const auto [lo, hi] = shard(buf->numel());
    count(buf->nbytes(), (double(world()) - 1) / world());
    comm_->all_gather_v(buf->slice(0, lo, hi), *buf, shard_counts(buf->numel()));
  }
  stats_.gather_seconds += seconds_since(t0);
}

Tensor DataParallel::gather_master_weights(const Transformer& model, int root) {
  NURI_CHECK(root >= -1 && root < world(), "gather_master_weights: root ", root, " is not a rank "
             "of ", world(), " (or -1 for every rank)");
  const int64_t total = model.parameter_count();
  const bool receive = root < 0 || rank() == root;
  if (!model.masters_sharded()) {  // every rank holds them all
    if (!receive) return Tensor();
    Tensor all = Tensor::empty({total}, DType::f32);
    model.backend().copy(model.param_buffer(), all);
    return all;
  }
  if (progress_) progress_->wait();
  NURI_CHECK(model.master_begin() == lo_ && model.master_end() == hi_, "gather_master_weights: "
             "the model holds masters [", model.master_begin(), ", ", model.master_end(),
             "), not this rank's shard [", lo_, ", ", hi_, ")");
  Communicator& host = *comm_->host_communicator();
  const std::vector<int64_t> counts = shard_counts(total);
  Tensor all = receive ? Tensor::empty({total}, DType::f32) : Tensor();
  Tensor mine = receive ? all.slice(0, lo_, hi_) : Tensor::empty({hi_ - lo_}, DType::f32);
  model.backend().copy(model.param_buffer(), mine);
  if (root < 0) {
    host.all_gather_v(mine, all, counts);  // in place, as gather_parameters()
    return all;
  }
  if (rank() != root) {
    if (hi_ > lo_) host.send(mine, root);
    return Tensor();
  }
  int64_t at = 0;
  for (int q = 0; q < world(); ++q) {  // each rank's shard into place, in rank order
    const int64_t n = counts[size_t(q)];
    if (q != root && n > 0) host.recv(all.slice(0, at, at + n), q);
    at += n;
  }
  return all;
}

std::vector<float> DataParallel::gather(const std::vector<float>& mine) {
  if (world() == 1) return mine;
  if (progress_) progress_->wait();
  Tensor in = Tensor::empty({int64_t(mine.size())}, DType::f32);
  std::copy(mine.begin(), mine.end(), in.data<float>());
  Tensor all = Tensor::empty({int64_t(mine.size()) * world()}, DType::f32);
  comm_->host_communicator()->all_gather(in, all);
  return std::vector<float>(all.data<float>(), all.data<float>() + all.numel());
}

}  // namespace nuri
