// Everything a training run needs, as one schema (nuri/core/settings.h): the model, training,
// parallel, checkpoint, data and sample sections, and a few top-level keys. Config files (TOML or
// JSON), KEY=VALUE overrides, the command-line flags of nuri-train and `nuri train`, config.json
// in run and checkpoint directories, and the Python properties all come from run_schema(); a new
// setting is one line in its struct's table.
//
//   backend = "cpu"            # or "cuda" (each rank on its local rank's GPU), "cuda:N",
//   "cuda-emu" out = "runs/x"             # run directory: config.json, metrics.jsonl,
//   model.safetensors [model]   preset = "gpt2-tiny", then any ModelConfig field [train]
//   TrainConfig        [parallel]  ParallelConfig [checkpoint] dir, save_every, keep, async_save,
//   resume, signals, time_limit [data]    train, val         [sample]    prompt, max_new_tokens,
//   temperature, top_k, top_p
//
// Flags are the keys with dashes (--micro-batch is train.micro_batch), except four that name a
// file or a choice more plainly: --model (model.preset), --data (data.train), --val (data.val),
// --ckpt-dir (checkpoint.dir). Booleans take --KEY / --no-KEY.
#pragma once

#include <string>
#include <vector>

#include "nuri/core/settings.h"
#include "nuri/model/config.h"
#include "nuri/parallel/data_parallel.h"
#include "nuri/train/trainer.h"

namespace nuri {

struct DataConfig {
  std::string train;  ///< text (byte tokens), llm.c .bin or 1-D .npy; "": the default corpus
  std::string val;    ///< "": the last 10% of train, held out
  /// How train and val are read (read_data): auto, text, llmc, npy, uint16, uint32.
  std::string format = "auto";
  /// The model's tokenizer: a tokenizer.json, or "bytes". Shard directories that tokenize.json
  /// says another tokenizer wrote are refused, and so is text (read as bytes) with a
  /// tokenizer.json. "": not checked.
  std::string tokenizer;
};

struct SampleConfig {  ///< the sample printed after training (byte-level models)
  std::string prompt = "The ";
  int64_t max_new_tokens = 200;  ///< 0: no sample
  float temperature = 0.8f;      ///< 0: greedy
  int64_t top_k = 40;            ///< 0: the whole vocabulary
  float top_p = 1.0f;            ///< the nucleus's share (1: no cut)
};

struct CheckpointConfig {
  std::string dir;                    ///< "": no checkpoints
  int64_t save_every = 0;             ///< also save every N steps (0: at the end and when stopped)
  int64_t keep = 3;                   ///< the newest K checkpoints are kept
  bool async_save = false;            ///< write the periodic saves on a background thread
  bool resume = true;                 ///< resume from the newest checkpoint under dir
  bool check_data = true;             ///< refuse a checkpoint saved training on other data
  std::string signals = "TERM,USR1";  ///< signals that mean "preempted"
  double time_limit = 0;  ///< seconds of wall clock before stopping as if preempted (0: none)
  /// A model file to start from when there is no checkpoint to resume ("": the seed's weights).
  std::string init;
};

struct RunConfig {
  std::string preset = "demo";  ///< the model preset the model section started from ("": none)
  ModelConfig model = model_preset("demo");
  TrainConfig train;
  ParallelConfig parallel;
  CheckpointConfig checkpoint;
  DataConfig data;
  SampleConfig sample;
  std::string backend = "cpu";
  std::string out;              ///< run directory ("": none)
  int64_t log_every = 10;       ///< a progress line every N steps (when not a terminal)
  bool quiet = false;           ///< progress as lines even on a terminal
  double expect_val_below = 0;  ///< > 0: exit status 3 unless the final validation loss is below
  /// "manual": the parallel and batch settings as given; "auto": the planner's first choice
  /// (nuri/train/plan.h) for the job's ranks, keeping the global batch.
  std::string layout = "manual";
  /// The device profile (a name or a nuri calibrate file) for layout = auto and the ledger's
  /// MFU; "": cpu on the CPU backend, none on a GPU.
  std::string profile;
  /// The model keys a config file, flag or override set (after the last preset), each once,
  /// even to the preset's value: checkpoint.init's model takes these from the run (init_model).
  /// Not a setting, so not in to_json; from_json (a whole config as to_json writes it, naming
  /// every key) and Python's attribute assignments leave it empty.
  std::vector<std::string> model_keys_given;

  /// Every section's ranges and the checks across sections; throws ConfigError naming the key.
  void validate() const;
  /// Every setting, resolved, in the schema's layout (what config.json holds).
  std::string to_json(int indent = 2) const;
  /// Reads a JSON object in the schema's layout over the defaults, then validates.
  static RunConfig from_json(const std::string& json, const std::string& origin = "");
  /// Reads a .toml or .json file over the defaults, then validates.
  static RunConfig load(const std::string& path);
  /// A copy with KEY=VALUE overrides applied (settings_apply_overrides), validated.
  RunConfig with_overrides(const std::vector<std::string>& overrides) const;
};

/// The tables of the run-only sections (over their structs).
const Settings& checkpoint_settings();
const Settings& data_settings();
const Settings& sample_settings();

/// The run's schema: sections "" (top-level keys), model, train, parallel, checkpoint, data,
/// sample; every setting operates on a RunConfig.
const Schema& run_schema();

/// A parsed command line of nuri-train / `nuri train`:
///   [--config FILE] [--FLAG VALUE | --FLAG=VALUE | --BOOL | --no-BOOL]... [KEY=VALUE]...
/// The config file is read first, then the model preset (--model, model=...), then the rest in
/// order. Throws ConfigError for an unknown flag, a missing value, or a bad value.
struct RunArgs {
  RunConfig config;
  bool help = false;  ///< --help or -h: print run_usage() and exit 0
};
RunArgs parse_run_args(const std::vector<std::string>& args);
/// The --help text of the run's flags, generated from the schema (with each flag's key).
std::string run_usage(const std::string& program);

}  // namespace nuri
