// The run ledger (issue #24): every run that starts (its data and model work) in a checkpoint
// (or run) directory appends a record of its allocation to DIR/ledger.jsonl, and its end
// another: the ranks and devices, the layout, the steps done, and where the wall time went, so
// `nuri report DIR` can tell what the device-hours bought across preemptions and restarts.
// Rank 0 writes it.
//
//   {"event": "start", "id": ..., "time": unix seconds at the process's start (for a later run in
//    the same process, at its own start), "ranks", "backend",
//    "layout", "tokens_per_step", "flops_per_token",
//    "peak_flops" (the device profile's, 0 when none), "profile", "steps_reached" (the most steps
//    any run before it reached, as it found them: a run killed before its end record keeps them
//    for the next)}
//   {"event": "end", "id": ..., "time": unix seconds, "wall": seconds since the start,
//    "steps_from" (resumed at), "steps_done", "steps_reached", "redone_steps", "status", "reason",
//    "parts": {"startup", "checkpoint_load", "evaluation", "training", "redone",
//              "checkpoint_save", "finish", "unaccounted"}}
//
// The parts are timed apart; "unaccounted" is the wall time none of them covers (it stays near
// zero: tests/train/ledger.sh holds it under 2 % over a run preempted three times).
#pragma once

#include <cstdint>
#include <string>

namespace nuri {

/// Seconds since this process started (from /proc; 0 where there is none).
double process_seconds();

/// Where a run's wall time went, in seconds.
struct LedgerParts {
  double startup = 0;          ///< process start to the first step, less loads and evaluation
  double checkpoint_load = 0;  ///< resuming
  double evaluation = 0;       ///< validation passes
  double training = 0;         ///< steps that advance the run
  double redone = 0;           ///< steps an earlier allocation had done but not checkpointed
  double checkpoint_save = 0;  ///< checkpoints and the model file (the blocking part)
  double finish = 0;           ///< after the last step: sampling, the timeline, the summary
};

class RunLedger {
 public:
  RunLedger() = default;  ///< inactive: writes nothing
  /// Appends the start record (`fields`: a JSON object's members without braces, as above) to
  /// dir/ledger.jsonl.
  /// `origin_seconds`: how long before this call the allocation started (the process's start
  /// for the first run in a process).
  RunLedger(const std::string& dir, const std::string& fields, double origin_seconds);
  bool active() const { return !path_.empty(); }
  /// The most steps any earlier allocation in `dir` reached (its start and end records'
  /// steps_reached), 0 when none.
  static int64_t steps_reached(const std::string& dir);
  /// Appends the end record (once; later calls do nothing).
  void end(int64_t steps_from, int64_t steps_done, int64_t steps_reached, int64_t redone_steps,
           int status, const std::string& reason, const LedgerParts& parts);
  /// Seconds since the allocation started.
  double wall() const;

 private:
  std::string path_, id_;
  double start_ = 0;  // unix seconds
  bool ended_ = false;
};

}  // namespace nuri
