// Leaving a shared pool's allocation in order (DESIGN.md, "Checkpoints"): a preemption signal
// (SIGTERM and SIGUSR1 by default, as Slurm's --signal sends before it ends a job) or a
// wall-clock limit makes every rank stop at the same step boundary, so they can write one
// checkpoint together and exit with kPreemptedExitCode, which means "checkpointed, requeue me".
#pragma once

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace nuri {

class Communicator;

/// The exit status of a run that stopped for preemption or its time limit after committing a
/// checkpoint: 75 (EX_TEMPFAIL in sysexits.h, "try again later").
constexpr int kPreemptedExitCode = 75;

class PreemptionWatch {
 public:
  /// Installs handlers for `signals` (each only records that it arrived). time_limit_s > 0:
  /// also stop once the time spent (elapsed_s, what came before this watch, e.g. the process's
  /// startup, plus the time since construction), twice the longest step seen and what the stop
  /// itself will take (should_stop's then_s) would pass the limit.
  explicit PreemptionWatch(std::vector<int> signals, double time_limit_s = 0,
                           double elapsed_s = 0);
  ~PreemptionWatch();
  PreemptionWatch(const PreemptionWatch&) = delete;
  PreemptionWatch& operator=(const PreemptionWatch&) = delete;

  /// Call after each step with its duration (0 before the first). Collective over comm's ranks
  /// when comm has more than one (a three-element all-reduce): true on every rank when any rank
  /// got a signal, reached the time limit, or passed interrupt = true (a user's Ctrl-C, which
  /// the caller detects). then_s: the seconds that stopping after the next step would take
  /// beyond it (an evaluation due, the checkpoint's save), counted against the time limit.
  bool should_stop(double step_seconds, Communicator* comm, bool interrupt = false,
                   double then_s = 0);
  /// Whether a signal arrived on any rank: a collective over comm's ranks as should_stop is, for
  /// where the run has no step left (the time limit does not count there).
  bool signalled_on_any_rank(Communicator* comm);
  /// The signal that arrived on this rank (0: none), and whether the time limit was the reason.
  int signal() const;
  bool time_limit_reached() const { return time_up_; }
  /// Whether the last should_stop() stopped for an interrupt on any rank.
  bool interrupted() const { return interrupted_; }
  /// Whether the last should_stop() stopped for the time limit alone: reached on some rank, no
  /// signal or interrupt on any (the same answer on every rank).
  bool time_limit_alone() const { return any_time_up_ && !any_signal_ && !interrupted_; }

 private:
  std::vector<int> signals_;
  std::vector<std::shared_ptr<void>> previous_;  // struct sigaction of each signal before us
  double limit_s_;
  std::chrono::steady_clock::time_point start_;
  double longest_step_ = 0;
  bool time_up_ = false;
  bool interrupted_ = false;
  bool any_time_up_ = false, any_signal_ = false;  ///< over the ranks, at the last should_stop
};

/// What stopping after a step would take beyond it, for the time limit (should_stop's then_s):
/// the evaluation due after the next step (the longest one so far), and with checkpoints the
/// stop's save, timed as the longest save so far (the load's time until one is), plus as much
/// again while an asynchronous save is pending, since the stop waits for it first. An
/// asynchronous save counts from its start to the step its commit is seen at.
class StopCost {
 public:
  StopCost(bool checkpoints, double load_s) : checkpoints_(checkpoints), load_s_(load_s) {}
  void saved(double seconds) { longest_save_ = std::max(longest_save_, seconds); }
  /// A save's time known before any is made (a write of the checkpoint's bytes measured at the
  /// start): what a stop's save is counted as until a save is timed.
  void expect_save(double seconds) { expected_save_ = std::max(expected_save_, seconds); }
  void evaluated(double seconds) { longest_eval_ = std::max(longest_eval_, seconds); }
  /// now_s: seconds on one clock of the caller's choosing, the same for both calls.
  void async_started(double now_s) {
    async_started_s_ = now_s;
    async_pending_ = true;
  }
  void async_committed(double now_s) {
    if (!async_pending_) return;
    saved(now_s - async_started_s_);
    async_pending_ = false;
  }
  double seconds(bool eval_next) const {
    // (The write timed at the start stands for a save until one is timed.)
    const double save = std::max(longest_save_ > 0 ? longest_save_ : expected_save_, load_s_);
    return (eval_next ? longest_eval_ : 0.0) + (checkpoints_ ? save : 0.0) +
           (async_pending_ ? save : 0.0);
  }

 private:
  bool checkpoints_;
  double load_s_, longest_save_ = 0, longest_eval_ = 0, async_started_s_ = 0, expected_save_ = 0;
  bool async_pending_ = false;
};

/// "TERM,USR1" → {SIGTERM, SIGUSR1} (names with or without SIG, or numbers); throws nuri::Error
/// naming an unknown one.
std::vector<int> parse_signals(const std::string& list);

}  // namespace nuri
