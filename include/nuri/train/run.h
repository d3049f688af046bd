// A training run: the policy around the Trainer that nuri-train and `nuri train` (and Python's
// nuri.run) share, so the same RunConfig gives the same output, files and exit status from any
// front end.
//
//   data        data.train (a text or token file; default: the license texts every Debian system
//               has), data.val or the last 10% held out, the unigram baseline to beat
//   model       the model section on `backend` (cuda: the local rank's GPU)
//   ranks       the launcher's process group: data-parallel with the parallel section's ZeRO stage
//   resume      from the newest checkpoint under checkpoint.dir (unless resume = false)
//   each step   progress (a rewritten line on a terminal, a line every log_every steps
//               otherwise), a metrics.jsonl record, validation every eval_every steps and at the
//               end, a checkpoint every save_every steps (asynchronous with async_save)
//   stopping    a preemption signal or the time limit on any rank: every rank checkpoints at the
//               same step boundary and the run ends with status 75 ("requeue me"); an interrupt
//               (the front end's Ctrl-C) the same way with status 130
//   the end     a checkpoint, out/model.safetensors, the summary line, a sample (byte models)
//
// Rank 0 alone prints and writes the run directory; every rank takes part in the collectives.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "nuri/dist/communicator.h"
#include "nuri/train/run_config.h"

namespace nuri {

/// Exit statuses of a run (and of nuri-train / `nuri train`).
constexpr int kRunDone = 0;
constexpr int kRunFailed = 1;             ///< a runtime error (bad data, a peer that died, ...)
constexpr int kRunUsage = 2;              ///< a config or command-line error
constexpr int kRunExpectationFailed = 3;  ///< expect_val_below was not met
constexpr int kRunInterrupted = 130;      ///< stopped by the front end's interrupt (Ctrl-C)
// kPreemptedExitCode (75, nuri/train/preemption.h): stopped by a signal or the time limit.

/// Where a run's output goes. Every member may be left empty.
struct RunHooks {
  /// Text to show (whole lines, or a progress line starting with '\r'); default: stdout.
  std::function<void(const std::string& text)> write;
  /// Whether `write` reaches a terminal (then progress rewrites one line); default: whether
  /// stdout is one, when `write` is empty.
  bool terminal = false;
  /// Polled after every step on every rank; true stops the run (collectively) with status 130.
  std::function<bool()> interrupted;
  /// Each step's metrics record (one JSON object, as written to metrics.jsonl), on rank 0.
  std::function<void(const std::string& record)> on_step;
};

struct RunResult {
  ///< kRunDone, kPreemptedExitCode, kRunExpectationFailed, kRunInterrupted, or kRunFailed for a
  ///< run that diverged (stop_reason "diverged"; other failures throw)
  int status = kRunDone;
  int64_t steps_done = 0;
  int64_t skipped_steps = 0;
  float final_loss = 0;     ///< the last step's training loss (NaN when no step ran)
  float val_loss = 0;       ///< the last validation loss
  double seconds = 0;       ///< wall clock of the whole run
  int64_t peak_bytes = 0;   ///< the model's allocator peak
  ///< "" (ran to the end), "signal 15", "time limit", "interrupted", "diverged", ...
  std::string stop_reason;
  std::string checkpoint;   ///< the last checkpoint committed ("" when none)
};

/// Runs `cfg` (validated first). pg: the job's ranks; null: init_process_group() from the
/// environment. Throws nuri::Error for what stops a run before its end (ConfigError for the
/// config); a stop for preemption or an interrupt is a result, not an error.
RunResult run_training(const RunConfig& cfg, const RunHooks& hooks = {},
                       const ProcessGroup* pg = nullptr);

/// `cfg` with the model a run of it trains when checkpoint.init names a model file: the file's
/// model (the one it records; `cfg` unchanged where it records none), with the context settings
/// of a RoPE model that `cfg` names (RunConfig::model_keys_given) or sets unlike its preset,
/// and max_seq_len grown to train.seq_len where not set. What run_training starts from, and
/// what `nuri plan --config` plans.
/// `notes` (optional): a line for each setting that is not the file's. Throws ConfigError where
/// the run's model is another than the file's, or its sequences do not fit the result.
RunConfig init_model(const RunConfig& cfg, std::vector<std::string>* notes = nullptr);

}  // namespace nuri
