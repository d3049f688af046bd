// The run policy shared by every front end (nuri/train/run.h): data, model, resume, the step loop
// with progress, metrics, evaluation, checkpoints and stops, and what a run leaves behind.
#include "nuri/train/run.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/json_checked.h"
#include "nuri/backend/backend.h"
#include "nuri/ckpt/checkpoint.h"
#include "nuri/ckpt/safetensors.h"
#include "nuri/backend/build_info.h"
#include "nuri/core/log.h"
#include "nuri/data/corpus.h"
#include "nuri/dist/launch.h"
#include "nuri/train/ledger.h"
#include "nuri/train/plan.h"
#include "nuri/train/preemption.h"

namespace nuri {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string duration(double s) { return strprintf("%dm%02ds", int(s) / 60, int(s) % 60); }

// How long before run_training's start the allocation began: the process's start for the first
// run in a process (launch, imports, the communicator), none for later ones.
double run_origin() {
  static std::atomic<bool> first{true};
  return first.exchange(false) ? process_seconds() : 0.0;
}

// The device profile of a run: its profile setting, else the CPU's on the CPU backend; on a
// GPU without one, a profile of no speeds (MFU is then left out).
DeviceProfile run_profile(const RunConfig& cfg) {
  if (!cfg.profile.empty()) return device_profile(cfg.profile);
  if (cfg.backend == "cpu") return device_profile("cpu");
  DeviceProfile none;
  none.name = "";
  return none;
}

std::string run_layout(const RunConfig& cfg, const GridGroups& grid) {
  Layout l;
  l.dp = grid.grid.dp();
  l.tp = grid.grid.tp();
  l.pp = grid.grid.pp();
  l.zero = cfg.parallel.zero_stage;
  l.recompute = cfg.train.recompute;
  l.recompute_every = cfg.train.recompute_every;
  l.sp = cfg.parallel.sequence_parallel;
  l.micro_batch = cfg.train.micro_batch;
  l.grad_accum = cfg.train.grad_accum;
  return l.str();
}

// --layout auto: the planner's first choice for this job's ranks (nodes of the launcher's local
// ranks), keeping the global batch (train.global_batch, or micro_batch · grad_accum · ranks).
RunConfig auto_layout(const RunConfig& in, const ProcessGroup& pg, const DeviceProfile& profile,
                      std::string* line) {
  if (profile.name.empty()) {
    throw ConfigError("layout = auto needs a device profile on " + in.backend +
                      ": give --profile NAME (h100-sxm-80gb, a100-sxm-80gb, rtx-4090, rtx-3090) "
                      "or a file from nuri calibrate");
  }
  PlanRequest r;
  r.model = in.model;
  r.device = profile;
  const int per_node = std::max(1, pg.launch.local_world_size);
  r.devices_per_node = per_node;
  r.nodes = std::max(1, pg.size() / per_node);
  r.seq_len = in.train.seq_len;
  r.global_batch = in.train.global_batch > 0
                       ? in.train.global_batch
                       : in.train.micro_batch * in.train.grad_accum * pg.size();
  r.bucket_bytes = in.parallel.bucket_bytes;
  r.keep_gathered = in.parallel.keep_gathered;
  r.overlap = in.parallel.overlap;
  const std::vector<PlanEntry> plan = plan_layouts(r);
  if (plan.empty() || !plan.front().fits) {
    throw ConfigError("layout = auto: no layout of " + std::to_string(pg.size()) + " ranks fits " +
                      profile.name + "'s memory:\n" + plan_report(r, plan, 0));
  }
  const Layout& l = plan.front().layout;
  RunConfig c = in;
  c.parallel.tp = l.tp;
  c.parallel.pp = l.pp;
  c.parallel.zero_stage = l.zero;
  c.parallel.sequence_parallel = l.sp;
  c.train.recompute = l.recompute;
  c.train.recompute_every = l.recompute_every;
  c.train.micro_batch = l.micro_batch;
  c.train.grad_accum = l.grad_accum;
  c.validate();
  *line = strprintf("layout auto (%s): %s; predicted %.2f GiB a device, %.0f tok/s, MFU %.1f%%%s",
                    profile.name.c_str(), l.str().c_str(),
                    double(plan.front().memory.peak()) / double(int64_t(1) << 30),
                    plan.front().tokens_per_second, 100 * plan.front().mfu,
                    pg.launch.local_world_size > 0 || pg.size() == 1
                        ? ""
                        : " (the launcher does not say how many ranks share a node: planned as "
                          "one a node, with no tensor parallelism)");
  return c;
}

// Adds the seconds of its scope to a ledger part.
class Span {
 public:
  explicit Span(double& part) : part_(part), t0_(Clock::now()) {}
  ~Span() { part_ += seconds_since(t0_); }
  Span(const Span&) = delete;
  Span& operator=(const Span&) = delete;

 private:
  double& part_;
  Clock::time_point t0_;
};

// What the run shows: rank 0 only; progress rewrites one line on a terminal (at most ten times
// a second), and is a line every log_every steps (and at the first and last) otherwise. A job of
// several ranks always prints lines: mpirun gives each rank a terminal of its own even when the
// job's output goes to a file.
class Output {
 public:
  Output(const RunHooks& hooks, const ProcessGroup& pg, const RunConfig& cfg)
      : hooks_(hooks), lead_(pg.rank() == 0), log_every_(cfg.log_every), total_(cfg.train.steps) {
    const bool terminal = hooks.write ? hooks.terminal : isatty(fileno(stdout)) != 0;
    rewrite_ = terminal && !cfg.quiet && pg.size() == 1;
  }

  void line(const std::string& text) {
    close();
    emit(text + "\n");
  }

  void progress(const StepStats& st, double tok_per_s, double elapsed, double eta) {
    const bool due = st.step % log_every_ == 0 || st.step == 1 || st.step == total_;
    if (!rewrite_ && !due) return;
    if (rewrite_ && elapsed - shown_at_ < 0.1 && st.step != total_) return;
    shown_at_ = elapsed;
    const std::string text =
        strprintf("step %5lld/%lld | loss %.4f | lr %.2e | norm %6.3f | %7.0f tok/s | eta %s%s",
                  (long long)st.step, (long long)total_, st.loss, st.lr, st.grad_norm, tok_per_s,
                  duration(eta).c_str(),
                  st.skipped     ? " | SKIPPED (non-finite)"
                  : st.untrained ? " | NO TRAINED TARGET (no update)"
                                 : "");
    if (rewrite_) {
      emit("\r" + text + "\x1b[K");
      open_ = true;
    } else {
      emit(text + "\n");
    }
  }

  void close() {
    if (open_) emit("\n");
    open_ = false;
  }

 private:
  void emit(const std::string& s) {
    if (!lead_) return;
    if (hooks_.write) {
      hooks_.write(s);
    } else {
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
    }
  }

  const RunHooks& hooks_;
  bool lead_, rewrite_ = false, open_ = false;
  int64_t log_every_, total_;
  double shown_at_ = -1;
};

std::string json_number(double x) {
  return std::isfinite(x) ? nlohmann::json(x).dump() : "null";  // JSON has no NaN
}

// The records of a metrics.jsonl (each line and its step) and the last step recorded (0: none);
// a line cut short by a crash is passed over.
int64_t read_metrics(const std::string& path,
                     std::vector<std::pair<int64_t, std::string>>* records = nullptr) {
  int64_t reached = 0;
  if (std::ifstream in(path); in.good()) {
    for (std::string line; std::getline(in, line);) {
      try {
        const int64_t step = json_checked::integer(json_checked::parse(line).at("step"));
        reached = std::max(reached, step);
        if (records) records->push_back({step, line});
      } catch (const nlohmann::json::exception&) {
      }
    }
  }
  return reached;
}

// metrics.jsonl: one record per step. On resume the records of steps after the checkpoint (a
// run that crashed past it redoes them) are dropped, so each step appears once.
class Metrics {
 public:
  /// Returns the last step the file recorded before (0: none).
  int64_t open(const std::string& path, int64_t steps_done) {
    std::vector<std::pair<int64_t, std::string>> records;
    const int64_t reached = read_metrics(path, &records);
    std::vector<std::string> keep;
    for (const auto& [step, line] : records) {
      if (step <= steps_done) keep.push_back(line);
    }
    // The kept records go to a new file that replaces the old one whole: rewritten in place, a
    // kill or a full disk between the truncation and the last line would lose the earlier
    // allocations' records.
    // (also a file of only a line cut short: the next record would continue that line)
    if (std::error_code exists; fs::exists(path, exists)) {
      const std::string tmp = path + ".tmp";
      {
        std::ofstream rewrite(tmp, std::ios::trunc);
        for (const auto& l : keep) rewrite << l << "\n";
        rewrite.flush();
        NURI_CHECK(rewrite.good(), "cannot write ", tmp, ": ", std::strerror(errno));
      }
      std::error_code ec;
      fs::rename(tmp, path, ec);
      NURI_CHECK(!ec, "cannot replace ", path, " with ", tmp, ": ", ec.message());
    }
    out_.open(path, std::ios::app);
    NURI_CHECK(out_.good(), "cannot write ", path, ": ", std::strerror(errno));
    return reached;
  }
  void write(const std::string& record) {
    if (!out_.is_open()) return;
    out_ << record << "\n";
    out_.flush();
  }

 private:
  std::ofstream out_;
};

std::string metrics_record(const StepStats& st, const float* val_loss) {
  std::string r = "{\"step\": " + std::to_string(st.step) + ", \"loss\": " + json_number(st.loss) +
                  ", \"lr\": " + json_number(st.lr) +
                  ", \"grad_norm\": " + json_number(st.grad_norm) +
                  ", \"tokens_per_s\": " + json_number(st.tokens_per_second) +
                  ", \"step_seconds\": " + json_number(st.step_seconds) +
                  ", \"peak_bytes\": " + std::to_string(st.peak_bytes) +
                  ", \"skipped\": " + (st.skipped ? "true" : "false") +
                  (st.untrained ? ", \"untrained\": true" : "");
  if (val_loss) r += ", \"val_loss\": " + json_number(*val_loss);
  return r + "}";
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  NURI_CHECK(out.good(), "cannot write ", path.string(), ": ", std::strerror(errno));
}

// out/model.safetensors: the f32 master weights under their Hugging Face names, with the model
// config in the metadata (what nuri.load reads). Collective: the masters may be sharded; rank 0
// writes one tensor at a time.
void save_model(Trainer& trainer, Transformer& model, const fs::path& path) {
  trainer.save_model(path.string(), {{"nuri_model_config", model_config_to_json(model.config())},
                                     {"nuri_version", build_info().version}});
}

// data.tokenizer: the shards must come from the model's tokenizer (their tokenize.json says
// which wrote them), and text, which is read as byte tokens, needs the byte tokenizer.
void check_data_tokenizer(const DataConfig& data) {
  if (data.tokenizer.empty()) return;
  std::string sha256;
  if (data.tokenizer != "bytes") {
    NURI_CHECK(std::filesystem::is_regular_file(data.tokenizer), "data.tokenizer ",
               data.tokenizer, " is not a file (a Hugging Face tokenizer.json, or bytes)");
    sha256 = sha256_file(data.tokenizer);
  }
  for (const std::string* file : {&data.train, &data.val}) {
    const std::string& path = *file;
    if (file == &data.val && path.empty()) break;  // the train data's split or val shards
    if (is_shard_dir(path)) {
      check_shard_tokenizer(path, data.tokenizer, sha256);
    } else if (data.tokenizer != "bytes" &&
               (data.format == "text" ||
                (data.format == "auto" && (path.empty() || !is_token_file(path))))) {
      NURI_CHECK(false, "data.tokenizer is ", data.tokenizer, ", but ",
                 path.empty() ? std::string("the default corpus") : path,
                 " is text, which nuri reads as byte tokens; tokenize it with that tokenizer "
                 "first (nuri tokenize FILES --tokenizer ", data.tokenizer,
                 " --out DIR) and train on DIR");
    }
  }
}

// out and checkpoint.dir name directories, made where missing: one that names something else is
// a config error before anything runs. So is a run that would start fresh (checkpoint.resume
// false) among checkpoints, which its saves would overwrite or rotate out.
void check_run_directories(const RunConfig& cfg) {
  for (const auto& [key, path] : {std::pair<const char*, const std::string*>{"out", &cfg.out},
                                  {"checkpoint.dir", &cfg.checkpoint.dir}}) {
    std::error_code ec;
    if (!path->empty() && fs::exists(*path, ec) && !fs::is_directory(*path, ec)) {
      throw ConfigError(std::string(key) + ": " + *path +
                        " exists and is not a directory; name a directory (it is made if missing)");
    }
  }
  const CheckpointConfig& ck = cfg.checkpoint;
  if (ck.time_limit > 0 && ck.dir.empty()) {
    throw ConfigError("checkpoint.time_limit stops the run to checkpoint it before the limit, "
                      "and checkpoint.dir is not set: give one (--ckpt-dir DIR; the next start "
                      "resumes from there), or leave the limit out");
  }
  std::error_code ec;
  if (!cfg.out.empty() && !ck.init.empty() &&
      fs::equivalent(ck.init, fs::path(cfg.out) / "model.safetensors", ec)) {
    throw ConfigError("checkpoint.init: " + ck.init + " is the model.safetensors this run " +
                      "writes into out (" + cfg.out + ") at its end, which would replace it; " +
                      "name another out, or copy the file elsewhere and init from the copy");
  }
  if (!ck.dir.empty() && CheckpointReader::find(ck.dir) == ck.dir) {
    // Its saves would go inside it, and every start would resume this one again.
    fs::path self = fs::weakly_canonical(fs::absolute(ck.dir));
    if (!self.has_filename()) self = self.parent_path();  // a trailing '/'
    throw ConfigError("checkpoint.dir: " + ck.dir + " is one checkpoint, not a directory of " +
                      "them; give the directory that holds it (" + self.parent_path().string() +
                      "). To resume from this one rather than the newest, write its name into " +
                      "that directory's `latest` file (and move the newer ones away, which " +
                      "would otherwise count in --keep and be resumed if `latest` went missing)");
  }
  if (!ck.dir.empty() && !ck.resume) {
    const std::string newest = CheckpointReader::find(ck.dir);
    if (!newest.empty()) {
      throw ConfigError("checkpoint.dir: " + ck.dir + " holds checkpoints (the newest " +
                        newest + ") and checkpoint.resume is false: this run's saves would " +
                        "overwrite or rotate them out; name a new directory, move them away, " +
                        "or resume from them");
    }
  }
}

// Every rank's `mine`, on every rank (one all-reduce of a flag a rank): the ranks where it
// holds and those where it does not, each as "0, 2, 3".
std::pair<std::string, std::string> ranks_where(const ProcessGroup& pg, bool mine) {
  Tensor flags = Tensor::empty({pg.size()}, DType::f32);
  std::fill_n(flags.data<float>(), pg.size(), 0.f);
  flags.data<float>()[pg.rank()] = mine ? 1.f : 0.f;
  pg.comm->host_communicator()->all_reduce(flags, ReduceOp::sum);
  std::string yes, no;
  for (int r = 0; r < pg.size(); ++r) {
    std::string& list = flags.data<float>()[r] > 0 ? yes : no;
    list += (list.empty() ? "" : ", ") + std::to_string(r);
  }
  return {yes, no};
}

// Every rank learns whether any rank's check failed, and all stop together: a failed rank
// with its own message, the others naming it (`others`: what it could not do). A rank stopping
// alone would leave the others waiting in a collective until the communicator's timeout.
// `config`: a ConfigError (status 2: the settings or what they name), else an Error (status 1:
// a file that cannot be read or written).
void agree(const ProcessGroup& pg, const std::string& mine, const std::string& others,
           bool config = true) {
  const auto fail = [config](const std::string& what) {
    if (config) throw ConfigError(what);
    throw Error(what, "", 0);  // (no place of its own: `what` names one where it has one)
  };
  if (!pg.comm || pg.size() <= 1) {
    if (!mine.empty()) fail(mine);
    return;
  }
  const std::string failed = ranks_where(pg, !mine.empty()).first;
  if (!mine.empty()) fail(mine);
  if (!failed.empty()) fail("rank " + failed + " " + others);
}

// Every rank resumes the same checkpoint, or none does: a rank that finds none where another
// finds one, or finds another step (a checkpoint directory that is not shared, a file system's
// stale listing, or a checkpoint written while the ranks looked) would train other weights and
// wait in collectives the others never make. `found`: this rank's (CheckpointReader::find).
void agree_on_resuming(const ProcessGroup& pg, const std::string& found, const std::string& dir) {
  if (!pg.comm || pg.size() <= 1) return;
  const std::string fix = "; every rank must see the same directory (a shared file system), and "
                          "no other job may be writing to it";
  const auto [with, without] = ranks_where(pg, !found.empty());
  if (!with.empty() && !without.empty()) {
    throw ConfigError("checkpoint.dir " + dir + ": rank " + with + " found a checkpoint to " +
                      "resume and rank " + without + " found none" + fix);
  }
  if (found.empty()) return;
  // Each rank's step, exactly, as two floats of 24 bits each (-1: a manifest it cannot read).
  int64_t step = -1;
  try {
    step = CheckpointReader(found).step();
  } catch (const Error&) {
  }
  Tensor mine = Tensor::empty({2}, DType::f32), all = Tensor::empty({2 * pg.size()}, DType::f32);
  mine.data<float>()[0] = float(step >> 24);
  mine.data<float>()[1] = float(step & 0xFFFFFF);
  pg.comm->host_communicator()->all_gather(mine, all);
  std::string steps;
  bool same = true;
  for (int r = 0; r < pg.size(); ++r) {
    const float* f = all.data<float>() + 2 * r;
    const int64_t s = int64_t(f[0]) * (int64_t(1) << 24) + int64_t(f[1]);
    same = same && s == step;
    steps += (r ? ", " : "") + std::to_string(s);
  }
  if (!same) {
    throw ConfigError("checkpoint.dir " + dir + ": the ranks found other newest checkpoints "
                      "(steps " + steps + ", by rank)" + fix);
  }
}


/// The ConfigError `check` throws, or "".
template <class F>
std::string config_error_of(F&& check) {
  try {
    check();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

// Rank 0's `text` on every rank: a byte an f32 (what communicators move), after its length in
// two 16-bit halves (each exact in an f32). Collective over host.
std::string rank0_text(Communicator& host, int rank, const std::string& text) {
  Tensor len = Tensor::empty({2}, DType::f32);
  len.data<float>()[0] = float(text.size() >> 16);
  len.data<float>()[1] = float(text.size() & 0xffff);
  host.broadcast(len, 0);
  const size_t n = (size_t(len.data<float>()[0]) << 16) | size_t(len.data<float>()[1]);
  Tensor bytes = Tensor::empty({int64_t(std::max<size_t>(n, 1))}, DType::f32);
  for (size_t i = 0; i < n && rank == 0; ++i) {
    bytes.data<float>()[i] = float(static_cast<unsigned char>(text[i]));
  }
  host.broadcast(bytes, 0);
  std::string theirs(n, '\0');
  for (size_t i = 0; i < n; ++i) theirs[i] = char(int(bytes.data<float>()[i]));
  return theirs;
}

// Every rank of a job must run the same settings. Rank 0's (as JSON) go to every rank, which
// compares them with its own; when any rank's differ, every rank stops with a config error, the
// differing ones naming what differs. Not compared: what may differ by rank (the output-only
// quiet and log_every, a cuda:N backend's device, the time limit, on which the ranks agree as
// they go).
void check_same_settings(const RunConfig& cfg, const ProcessGroup& pg) {
  if (!pg.comm || pg.size() <= 1) return;
  Communicator& host = *pg.comm->host_communicator();
  RunConfig compared = cfg;
  compared.quiet = false;
  compared.log_every = 0;
  compared.backend = cfg.backend.substr(0, cfg.backend.find(':'));
  compared.checkpoint.time_limit = 0;
  compared.sample.prompt = valid_utf8(cfg.sample.prompt);  // JSON holds UTF-8 only
  // With the model keys named (which of checkpoint.init's model's settings are the run's).
  nlohmann::ordered_json whole = nlohmann::ordered_json::parse(compared.to_json());
  std::vector<std::string> named = cfg.model_keys_given;
  std::sort(named.begin(), named.end());
  whole["model keys named"] = named;
  const std::string text = whole.dump(2);
  const std::string theirs = rank0_text(host, pg.rank(), text);
  std::string differ;  // "train.lr is 0.5 here and 0.002 on rank 0, ..."
  if (theirs != text) {
    const nlohmann::json a = nlohmann::json::parse(text).flatten(),
                         b = nlohmann::json::parse(theirs).flatten();
    for (const auto& [key, value] : a.items()) {
      const auto it = b.find(key);
      if (it != b.end() && *it == value) continue;
      std::string name = key.substr(1);  // "/train/lr" -> "train.lr"
      std::replace(name.begin(), name.end(), '/', '.');
      differ += (differ.empty() ? "" : ", ") + name + " is " + value.dump() + " here and " +
                (it == b.end() ? std::string("unset") : it->dump()) + " on rank 0";
    }
    if (differ.empty()) differ = "the settings' text differs from rank 0's";
  }
  const std::string fix =
      "; start every rank of a job with the same command, config file and overrides";
  agree(pg,
        differ.empty() ? "" : "rank " + std::to_string(pg.rank()) +
                                  " started with other settings than rank 0: " + differ + fix,
        "started with other settings than rank 0 (its output names them)" + fix);
}

// Every rank must read the same training and validation tokens: a node with a stale or partial
// copy of the data would draw other samples and epochs than the others, unnoticed until a
// resume compared it with the checkpoint. Compared by token count and fingerprint with rank 0's.
void check_same_data(const ProcessGroup& pg, const TokenFile& train, const TokenFile& val) {
  if (!pg.comm || pg.size() <= 1) return;
  auto about = [](const TokenFile& f) {
    return std::to_string(f.size()) + " tokens (fingerprint " + f.fingerprint() + ")";
  };
  const std::string mine = "training data " + about(train) + ", validation data " + about(val);
  const std::string theirs = rank0_text(*pg.comm->host_communicator(), pg.rank(), mine);
  const std::string fix = "; every rank must read the same files: a shared file system, or "
                          "copies that are the same to the byte";
  agree(pg,
        mine == theirs ? "" : "rank " + std::to_string(pg.rank()) + " reads other data than " +
                                  "rank 0: " + mine + " here, " + theirs + " on rank 0" + fix,
        "reads other data than rank 0 (its output says how)" + fix);
}

// On the CPU backend the f32 weights alone of this machine's ranks (each its 1 / (tp · pp) of
// them, under ZeRO 3 its 1 / dp of that) must fit the machine's memory: a model that cannot is
// refused with its size before any allocation, where it would otherwise grow until the system
// stopped it. (A lower bound: gradients, optimizer state and activations come on top.)
void check_weights_fit_host(const RunConfig& cfg, const std::string& backend,
                            const ProcessGroup& pg) {
  if (backend != "cpu") return;
  const int split = cfg.parallel.tp * cfg.parallel.pp;
  const int dp = std::max(1, pg.size() / split);
  const double share = 1.0 / split / (cfg.parallel.zero_stage == 3 ? dp : 1);
  const int here = std::max(1, pg.launch.local_world_size);
  const double weights = double(cfg.model.num_params()) * 4.0 * share * here;
  const double memory = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  if (memory <= 0 || weights <= memory) return;
  throw ConfigError(strprintf(
      "model: %.4g parameters (%s) need %.1f GiB for their f32 weights alone on %s, more than "
      "this machine's %.1f GiB of memory; make the model smaller or split it over more ranks "
      "(parallel.tp, parallel.pp, or dp with parallel.zero_stage = 3)",
      double(cfg.model.num_params()), cfg.model.summary().c_str(), weights / double(1 << 30),
      here > 1 ? strprintf("this machine's %d ranks", here).c_str() : "this rank",
      memory / double(1 << 30)));
}

void make_directories(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  NURI_CHECK(!ec, "cannot make the directory ", dir.string(), ": ", ec.message());
}

// Seconds to write `bytes` into dir, from a timed write of up to 64 MiB of them (written,
// fsynced, removed); 0 where dir cannot be written (the save will say why). *what: that write.
double probe_save_seconds(const std::string& dir, int64_t bytes, int rank, std::string* what) {
  const int64_t probe = std::min<int64_t>(bytes, int64_t(64) << 20);
  if (probe <= 0) return 0;
  std::error_code ec;
  fs::create_directories(dir, ec);
  const std::string path = dir + "/.nuri-write-probe-" + std::to_string(rank) + "-" +
                           std::to_string(::getpid());
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return 0;
  ::unlink(path.c_str());  // written and synced unnamed: nothing is left if the process dies
  std::vector<char> block(size_t(1) << 20, 'n');
  const Clock::time_point t0 = Clock::now();
  bool ok = true;
  for (int64_t left = probe; left > 0 && ok;) {
    const ssize_t k = ::write(fd, block.data(), size_t(std::min<int64_t>(left, 1 << 20)));
    ok = k > 0;
    left -= k > 0 ? k : 0;
  }
  ok = ok && ::fsync(fd) == 0;
  const double seconds = seconds_since(t0);
  ::close(fd);
  if (!ok) return 0;
  *what = strprintf("a write of %.0f MiB timed at the start took %.2f s, for %.2f GiB",
                    double(probe) / double(1 << 20), seconds, double(bytes) / double(1 << 30));
  return seconds * double(bytes) / double(probe);
}

// A run that starts fresh (nothing resumed) in an out holding an earlier run's results (metrics
// recorded, or a model written) would replace them: they move into out/earlier-N, the first N
// free, and the line returned says so ("": nothing to move). The ledger moves with them where it
// lives in out, so the new run's steps are not counted as redone work of the earlier one.
std::string move_earlier_run_aside(const fs::path& out, bool ledger_in_out) {
  std::error_code ec;
  const int64_t last_step = read_metrics((out / "metrics.jsonl").string());
  const bool model = fs::exists(out / "model.safetensors", ec);
  if (last_step == 0 && !model) return "";
  fs::path aside;
  for (int n = 1;; ++n) {
    aside = out / ("earlier-" + std::to_string(n));
    if (!fs::exists(aside, ec)) break;
  }
  make_directories(aside);
  std::vector<std::string> names = {"config.json", "metrics.jsonl", "model.safetensors",
                                    "sample.txt", "loss.png", "timeline.json"};
  if (ledger_in_out) names.push_back("ledger.jsonl");
  for (const auto& name : names) {
    if (!fs::exists(out / name, ec)) continue;
    fs::rename(out / name, aside / name, ec);
    NURI_CHECK(!ec, "cannot move ", (out / name).string(), " to ", aside.string(),
               " (this run starts fresh in ", out.string(), ", which holds an earlier run's ",
               "results): ", ec.message());
  }
  return "run directory: an earlier run's results (" +
         (last_step > 0 ? "metrics to step " + std::to_string(last_step) : std::string()) +
         (last_step > 0 && model ? ", " : "") + (model ? "its model" : "") + ") moved to " +
         aside.string() + ", since this run starts fresh";
}

}  // namespace

// checkpoint.init's model: the file's. A run that gives a model (a preset, or model keys) must
// give the file's, but for the context settings of a RoPE model (context_setting): those the
// run gives (named in its file or flags, or unlike its preset's) are the run's, and a
// max_seq_len not given grows to train.seq_len.
RunConfig init_model(const RunConfig& cfg, std::vector<std::string>* notes) {
  const std::string& path = cfg.checkpoint.init;
  if (path.empty()) return cfg;
  std::map<std::string, std::string> metadata;
  try {
    NURI_CHECK(!fs::is_directory(path), path, " is a directory, not a model file. A Hugging Face "
               "model directory becomes one with `python -m nuri import DIR --out FILE`");
    metadata = SafetensorsFile(path).metadata();
  } catch (const ConfigError&) {
    throw;
  } catch (const Error& e) {
    throw ConfigError(std::string("checkpoint.init: ") + e.what());
  }
  const auto recorded = metadata.find("nuri_model_config");
  if (recorded == metadata.end()) return cfg;  // its tensors are checked against the run's model
  const ModelConfig theirs =
      model_config_from_json(recorded->second, "checkpoint.init " + path + ": model");
  const std::string mine = model_config_to_json(cfg.model);
  const bool grows =
      theirs.position == PositionKind::rope && cfg.train.seq_len > theirs.max_seq_len;
  const RunConfig defaults;
  const ModelConfig preset = cfg.preset.empty() ? defaults.model : model_preset(cfg.preset);
  // The model keys this run sets: those a file, flag or override named (even to the preset's
  // value), and those that differ from the preset (set another way, as Python's attributes).
  std::vector<std::string> named = cfg.model_keys_given;
  for (const auto& d : model_config_differences(model_config_to_json(preset), cfg.model)) {
    if (std::find(named.begin(), named.end(), d.key) == named.end()) named.push_back(d.key);
  }
  std::vector<std::string> set;  // the context settings among them
  bool model_given = cfg.preset != defaults.preset;
  for (const std::string& key : named) {
    if (context_setting(key)) {
      set.push_back(key);
    } else {
      model_given = true;
    }
  }
  std::string differ;
  std::vector<ModelSettingDifference> changed;  // context settings set and not the file's
  for (auto& d : model_config_differences(model_config_to_json(theirs), cfg.model)) {
    if (!context_setting(d.key)) {
      differ += (differ.empty() ? "" : ", ") + d.key + "=" + d.recorded + " (this run: " +
                d.mine + ")";
    } else if (std::find(set.begin(), set.end(), d.key) != set.end()) {
      changed.push_back(std::move(d));
    }
  }
  if (model_given && !differ.empty()) {
    throw ConfigError("checkpoint.init: " + path + " holds another model than this run's: " +
                      differ + ". Leave out the model settings (the model is then the file's), "
                      "or give the file's");
  }
  if (!changed.empty() && theirs.position != PositionKind::rope) {
    const ModelSettingDifference& d = changed.front();
    throw ConfigError("checkpoint.init: " + path + "'s model has learned positions (a weight row "
                      "per position up to max_seq_len " + std::to_string(theirs.max_seq_len) +
                      "): its " + d.key + " cannot change (this run: " + d.mine + "). Leave it "
                      "out, or start from a model with RoPE positions");
  }
  nlohmann::json model = nlohmann::json::parse(model_config_to_json(theirs));
  const nlohmann::json given = nlohmann::json::parse(mine);
  for (const auto& d : changed) model[d.key] = given[d.key];
  const bool max_set = std::find(set.begin(), set.end(), "max_seq_len") != set.end();
  if (!max_set && grows) model["max_seq_len"] = cfg.train.seq_len;  // RoPE: no weight changes
  RunConfig out = cfg;
  out.model = model_config_from_json(
      model.dump(), changed.empty() ? "checkpoint.init " + path + ": model"
                                    : "checkpoint.init " + path + "'s model with this run's " +
                                          changed.front().key);
  const int64_t seq_len = cfg.train.seq_len;
  if (seq_len > out.model.max_seq_len) {  // learned positions, or a max_seq_len the run sets
    throw ConfigError(
        "train.seq_len (" + std::to_string(seq_len) + ") exceeds model.max_seq_len (" +
        std::to_string(out.model.max_seq_len) + ") " +
        (theirs.position == PositionKind::rope
             ? "this run sets; give a longer one, or leave it out (it then grows to "
               "train.seq_len)"
             : "of checkpoint.init's model, whose positions are learned weights (a row "
               "per position)"));
  }
  if (out.model.sliding_window > 0 && seq_len > out.model.sliding_window) {
    throw ConfigError("train.seq_len (" + std::to_string(seq_len) + ") is longer than "
                      "checkpoint.init's model's sliding_window (" +
                      std::to_string(out.model.sliding_window) + "): nuri has no "
                      "sliding-window attention; lower seq_len to the window");
  }
  if (!model_given) out.preset = "";
  for (const auto& d : model_config_differences(recorded->second, out.model)) {
    if (notes) {
      notes->push_back("model." + d.key + " " + d.mine + " (checkpoint.init's model: " +
                       d.recorded + ")");
    }
  }
  return out;
}

RunResult run_training(const RunConfig& cfg_in, const RunHooks& hooks, const ProcessGroup* pg_in) {
  cfg_in.validate();
  const auto start = Clock::now();
  const double origin = run_origin();  // the allocation began this long before
  const ProcessGroup pg = pg_in ? *pg_in : init_process_group();
  // Preemption's handlers go in once the ranks have met (a rank waiting for the others is
  // still ended by a signal at once): a signal during the rest of the startup (the data, the
  // model, a checkpoint's load) stops the run before its first step instead of killing it. The
  // time limit counts from the run's start (not the process's: a notebook's kernel or a script
  // that prepared its data first would start past it).
  const CheckpointConfig& ck_in = cfg_in.checkpoint;
  PreemptionWatch watch(!ck_in.dir.empty() ? parse_signals(ck_in.signals) : std::vector<int>{},
                        !ck_in.dir.empty() ? ck_in.time_limit : 0.0, seconds_since(start));
  check_same_settings(cfg_in, pg);
  agree(pg, config_error_of([&] { check_run_directories(cfg_in); }),
        "cannot use the run's directories (its output says why)");
  const bool lead = pg.rank() == 0;
  RunConfig with_init = cfg_in;  // the model of checkpoint.init's file
  std::vector<std::string> init_notes;  // the context settings that are not the file's
  agree(pg, config_error_of([&] {
          with_init = init_model(cfg_in, &init_notes);
          const ModelConfig& m = with_init.model;  // (validate() left this to init_model)
          if (with_init.train.seq_len > m.max_seq_len) {  // a file that records no model
            throw ConfigError("train.seq_len (" + std::to_string(with_init.train.seq_len) +
                              ") exceeds model.max_seq_len (" + std::to_string(m.max_seq_len) +
                              "); checkpoint.init's file records no model config, so the "
                              "model is this run's: give a longer model.max_seq_len");
          }
        }),
        "cannot start from checkpoint.init (its output says why)");
  const DeviceProfile profile = run_profile(with_init);
  std::string auto_line;
  RunConfig cfg =
      with_init.layout == "auto" ? auto_layout(with_init, pg, profile, &auto_line) : with_init;
  // train.global_batch: this allocation's grad_accum, derived now as the Trainer would (the
  // header and the ledger show it). Every rank has the same settings, so all agree.
  const int model_ranks = cfg.parallel.tp * cfg.parallel.pp;
  if (pg.size() % model_ranks == 0) {
    cfg.train = with_global_batch(cfg.train, pg.size() / model_ranks);
  }
  Output out(hooks, pg, cfg);
  for (const std::string& note : init_notes) out.line(note);
  if (!auto_line.empty()) out.line(auto_line);
  RunResult result;
  LedgerParts parts;

  // Data: the vocabulary is the model's; every token id is checked against it. A rank that
  // cannot read it (a node's partial copy) stops every rank, naming itself.
  std::string what;
  std::shared_ptr<TokenFile> data, train, val;
  std::string more_val;  // how to give more validation data
  std::string unreadable;
  try {
    check_data_tokenizer(cfg.data);
    if (cfg.data.train.empty()) {
      data = default_corpus(&what);
      NURI_CHECK(int64_t(data->max_token()) < cfg.model.vocab_size,
                 "the default corpus is byte "
                 "tokens (ids up to ",
                 data->max_token(), "), beyond model.vocab_size ", cfg.model.vocab_size,
                 "; give data.train (--data FILE) or a vocab_size of 257");
    } else {
      data = read_data(cfg.data.train, cfg.model.vocab_size, &what, cfg.data.format);
    }
    train = data;
    if (!cfg.data.val.empty()) {
      more_val = "a longer data.val";
      std::string vwhat;
      if (is_shard_dir(cfg.data.val)) {
        // Its val shards; a directory with none (tokenized for validation alone, --val-every 0)
        // its train shards, but not when it is the training data's.
        val = read_shards(cfg.data.val, "val", cfg.model.vocab_size, &vwhat);
        std::error_code ec;
        if (!val && fs::equivalent(cfg.data.val, cfg.data.train, ec)) {
          throw ConfigError("data.val: " + cfg.data.val + " is data.train's directory of shards, " +
                            "and it holds no val shards: validation would be on the training " +
                            "data. Leave data.val out (the run holds out the last 10%), or " +
                            "tokenize with --val-every N");
        }
      }
      std::error_code ec;
      if (!is_shard_dir(cfg.data.val) && fs::equivalent(cfg.data.val, cfg.data.train, ec)) {
        throw ConfigError("data.val: " + cfg.data.val + " is data.train's file: validation would "
                          "be on the training data. Leave data.val out (the run holds out the last "
                          "10%), or give other data");
      }
      if (!val) val = read_data(cfg.data.val, cfg.model.vocab_size, &vwhat, cfg.data.format);
      what += ", validation " + vwhat;
    } else if (is_shard_dir(cfg.data.train) &&
               (val = read_shards(cfg.data.train, "val", cfg.model.vocab_size)) != nullptr) {
      what += ", validation its val shards (" + std::to_string(val->size()) + " tokens)";
      more_val = "data.val (--val FILE), or shards tokenized with a smaller --val-every (0: none, "
                 "and the run holds out the last 10% of the training data)";
    } else {
      std::tie(train, val) = split_validation(data);
      what += ", last 10% held out for validation";
      more_val = "data.val (--val FILE), or more training data (its last 10% is held out)";
    }
  } catch (const Error& e) {
    if (!pg.comm || pg.size() <= 1) throw;
    unreadable = e.what();
  }
  agree(pg, unreadable, "cannot read the data (its output says why)");
  // Training and validation take whole global batches: data shorter than one is refused now,
  // before the model is built, not at the first step or evaluation.
  if (pg.size() % model_ranks == 0) {
    const TrainConfig& t = cfg.train;
    const int64_t dp = pg.size() / model_ranks;
    agree(pg, config_error_of([&] {
            try {
              DataLoader(train, t.seq_len, t.micro_batch, t.grad_accum, dp, 0, t.seed, true);
            } catch (const Error& e) {
              throw ConfigError(std::string("training data: ") + e.what());
            }
            try {
              validation_loader(val, t, dp, 0);
            } catch (const ConfigError& e) {
              throw ConfigError(std::string(e.what()) + "; give more validation data: " +
                                more_val);
            }
          }),
          "the data is shorter than one global batch (its output says how)");
  }
  check_same_data(pg, *train, *val);

  // The model on this rank's device, and the trainer over the job's ranks.
  const std::string backend = backend_for_rank(cfg.backend, pg.launch);
  agree(pg, config_error_of([&] { check_weights_fit_host(cfg, backend, pg); }),
        "cannot hold the model (its output says why)");
  // The ranks as a dp × tp × pp grid; this rank's stage (of the split that balances the
  // stages' compute) and tensor-parallel slice, its dp shard alone under ZeRO 3.
  check_tensor_parallel(cfg.model, cfg.parallel.tp);
  const std::vector<int64_t> stage_first =
      pipeline_stages(cfg.model, cfg.parallel.pp, cfg.train.seq_len);
  const GridGroups grid = make_grid_groups(pg.comm, cfg.parallel.tp, cfg.parallel.pp);
  // Resume from the newest checkpoint under checkpoint.dir, or start from checkpoint.init's
  // weights: either way the weights are read below, and the seed's would be thrown away.
  const CheckpointConfig& ck = cfg.checkpoint;
  const bool checkpoints = !ck.dir.empty();
  const std::string resume_dir = checkpoints && ck.resume ? CheckpointReader::find(ck.dir) : "";
  const bool resuming = !resume_dir.empty();
  agree_on_resuming(pg, resume_dir, ck.dir);
  const WeightInit init = resuming || !ck.init.empty() ? WeightInit::zeros : WeightInit::random;
  Transformer model = grid_model(cfg.model, make_backend(backend), cfg.train.seed, grid,
                                 cfg.parallel.zero_stage, cfg.train.seq_len, init);
  Trainer trainer(model, cfg.train, train, val, grid, cfg.parallel);
  const double baseline = unigram_baseline(*train, *val, cfg.model.vocab_size);
  const TrainConfig& tc = cfg.train;
  const char* threads = std::getenv("OMP_NUM_THREADS");
  out.line("data: " + what);
  const std::string model_name = !cfg.preset.empty()        ? cfg.preset
                                 : !cfg.checkpoint.init.empty() ? "that of " + cfg.checkpoint.init
                                                                : "custom";
  out.line(strprintf("model: %s (%.2fM parameters) | %s | backend %s", model_name.c_str(),
                     double(cfg.model.num_params()) / 1e6, cfg.model.summary().c_str(),
                     backend.c_str()));
  const std::string from_global =  // grad_accum derived on this allocation (train.global_batch)
      tc.global_batch > 0 ? strprintf(", from global batch %lld", (long long)tc.global_batch) : "";
  out.line(strprintf("training: %lld steps of %lld x %lld tokens (accum %lld%s), lr %.1e, "
                     "threads %s",
                     (long long)tc.steps, (long long)tc.micro_batch, (long long)tc.seq_len,
                     (long long)tc.grad_accum, from_global.c_str(), tc.lr,
                     threads ? threads : "all"));
  if (model.document_separator() >= 0) {
    out.line(strprintf("documents: attention stays inside documents, each %s token %lld",
                       model.document_separator_starts() ? "beginning with" : "ending with",
                       (long long)model.document_separator()));
  } else if (train->packed_window() > 0) {
    out.line("note: the data's rows were packed (tokenize --pack), and each attends to the rows "
             "before it in its window; --document-mask end keeps attention inside each row");
  }
  if (tc.warmup_steps >= tc.steps) {  // allowed (a short trial of a long run's settings), but said
    out.line(strprintf("warning: warmup_steps %lld is not below steps %lld: the learning rate "
                       "rises to %.1e (of lr %.1e) and never decays",
                       (long long)tc.warmup_steps, (long long)tc.steps,
                       double(learning_rate(tc, tc.steps - 1)), double(tc.lr)));
  }
  if (const DataParallel* dp = trainer.data_parallel()) {
    out.line(strprintf(
        "data parallel: %d ranks (%s, gradients over %s), ZeRO stage %d, global batch "
        "%lld sequences, %zu gradient buckets%s",
        dp->world(), launcher_name(pg.launch.launcher), dp->comm().backend_name().c_str(),
        dp->zero_stage(), (long long)(tc.micro_batch * tc.grad_accum * dp->world()),
        dp->buckets().size(),
        dp->overlapping() ? " overlapped with the backward" : " reduced after the backward"));
  }
  if (const TensorParallel* tpc = trainer.tensor_parallel()) {
    out.line(strprintf("tensor parallel: %d ranks a group (activations over %s), grid %s",
                       cfg.parallel.tp, tpc->comm().backend_name().c_str(),
                       grid.grid.str().c_str()));
  }
  if (trainer.pipeline()) {
    out.line(
        strprintf("pipeline parallel: %d stages, %s, 1F1B over %lld micro-batches (bubble "
                  "(p-1)/(m+p-1) = %.0f%%), grid %s",
                  cfg.parallel.pp, stages_summary(cfg.model, stage_first, tc.seq_len).c_str(),
                  (long long)tc.grad_accum,
                  100 * pipeline_bubble_formula(cfg.parallel.pp, int(tc.grad_accum)),
                  grid.grid.str().c_str()));
  }
  out.line(strprintf("validation: unigram baseline %.3f nats/token", baseline));

  // The ledger of allocations, in the checkpoint directory (else the run directory), and the
  // most steps an earlier allocation reached (steps up to it are redone work).
  const std::string ledger_dir = !cfg.checkpoint.dir.empty() ? cfg.checkpoint.dir : cfg.out;
  if (!cfg.out.empty() && !resuming) {
    std::string moved, failed;
    if (lead) {
      try {
        std::error_code ec;
        moved = move_earlier_run_aside(cfg.out, fs::equivalent(ledger_dir, cfg.out, ec));
      } catch (const Error& e) {
        failed = e.what();
      }
    }
    agree(pg, failed, "cannot move an earlier run's results out of the way (its output says why)");
    if (!moved.empty()) out.line(moved);
  }
  int64_t reached = ledger_dir.empty() ? 0 : RunLedger::steps_reached(ledger_dir);
  int64_t redone_steps = 0, steps_from = 0;
  RunLedger ledger;  // started once the run can start (below): a run that cannot leaves none
  // An error ends the allocation too (its record says so); the normal ends write theirs below.
  struct LedgerOnError {
    RunLedger& ledger;
    const int64_t &from, &done, &reached, &redone;
    const LedgerParts& parts;
    ~LedgerOnError() {
      if (std::uncaught_exceptions() == 0) return;
      try {
        ledger.end(from, done, std::max(reached, done), redone, kRunFailed, "error", parts);
      } catch (...) {  // the error in flight is the one to report
      }
    }
  } ledger_on_error{ledger, steps_from, result.steps_done, reached, redone_steps, parts};

  if (resuming) {
    Span timed(parts.checkpoint_load);
    if (ck.check_data) {  // every rank's copy of the data, agreed on before any rank loads
      std::string other_data;
      try {
        trainer.check_checkpoint_data(resume_dir);
      } catch (const Error& e) {
        other_data = e.what();
      }
      agree(pg, other_data, "holds other training data than the checkpoint's (its output says "
                            "how)");
    }
    // A rank that cannot read its slices (ZeRO 3, tensor and pipeline ranks read only theirs: a
    // corrupted or missing file, a node's stale view) stops every rank, not only itself.
    std::string dir, unloadable;
    try {
      dir = trainer.load_checkpoint(resume_dir, ck.check_data);
    } catch (const std::exception& e) {  // (a file gone between two looks: filesystem_error)
      if (!pg.comm || pg.size() <= 1) throw;  // (alone: the error as it is)
      unloadable = e.what();
    }
    agree(pg, unloadable, "cannot load the checkpoint (its output says why)", false);
    const DataPosition pos = trainer.data_position();
    out.line(strprintf("resumed from %s: step %lld, data epoch %lld, batch %lld", dir.c_str(),
                       (long long)trainer.steps_done(), (long long)pos.epoch,
                       (long long)pos.batch));
  } else if (!ck.init.empty()) {  // a fresh start from a model file's weights
    Span timed(parts.checkpoint_load);
    std::string failed;
    try {
      trainer.load_model_file(ck.init);
    } catch (const Error& e) {
      failed = std::string("checkpoint.init: ") + e.what();
    }
    agree(pg, failed, "cannot read checkpoint.init (its output says why)");
    out.line("initialized from " + ck.init);
  }
  steps_from = result.steps_done = trainer.steps_done();
  int64_t saved_at = checkpoints ? trainer.steps_done() : -1;
  auto committed = [&](const std::string& dir) {
    if (dir.empty()) return;
    result.checkpoint = dir;
    out.line("checkpoint " + dir + " committed");
  };
  StopCost stop_cost(checkpoints, parts.checkpoint_load);  // what a stop takes: the time limit
  std::string probe_what;  // the timed write, for the message of a limit the startup uses up
  if (checkpoints && ck.time_limit > 0) {
    // Before its first save a run knows no save's time (a fresh one has loaded nothing; a model
    // file is a third of a checkpoint's bytes): each rank writes a part of its own like it,
    // 12 bytes a weight of its shard (f32 weights and AdamW's two moments), at most 64 MiB of
    // it, to time the checkpoint directory's writes.
    const int64_t weights =
        (model.parameter_count() + grid.grid.dp() - 1) / std::max(1, grid.grid.dp());
    stop_cost.expect_save(
        probe_save_seconds(ck.dir, 12 * weights, pg.comm ? pg.comm->rank() : 0, &probe_what));
  }
  // keep: more than checkpoint.keep at a stop during a skip streak, whose saves must not rotate
  // out the checkpoints of before the divergence.
  auto save = [&](int64_t keep) {
    const double before = parts.checkpoint_save;
    {
      Span timed(parts.checkpoint_save);
      committed(trainer.save_checkpoint(ck.dir, int(keep)));
    }
    saved_at = trainer.steps_done();
    stop_cost.saved(parts.checkpoint_save - before);
  };
  auto async_committed = [&](const std::string& dir) {
    if (!dir.empty()) stop_cost.async_committed(seconds_since(start));
  };
  auto finish_save = [&] {
    Span timed(parts.checkpoint_save);
    const std::string dir = trainer.finish_checkpoint();
    committed(dir);
    async_committed(dir);
  };
  auto run_eval = [&] {
    const double before = parts.evaluation;
    float loss;
    {
      Span timed(parts.evaluation);
      loss = trainer.evaluate();
    }
    stop_cost.evaluated(parts.evaluation - before);
    return loss;
  };
  // The per-step agreement on stopping is collective; it is needed where there is a reason to stop.
  const bool watch_stops = checkpoints || hooks.interrupted != nullptr;
  auto stop_reason = [&] {
    // (A rank whose own clock is under the limit names the limit another rank reached.)
    if (watch.interrupted()) return std::string("interrupted");
    if (watch.signal()) return "signal " + std::to_string(watch.signal());
    if (watch.time_limit_reached() || watch.time_limit_alone()) return std::string("time limit");
    return std::string("another rank was signalled");
  };
  // What stopping after step `step` would take beyond it, against the time limit.
  auto stop_seconds = [&](int64_t step) {
    return stop_cost.seconds((tc.eval_every > 0 && (step + 1) % tc.eval_every == 0) ||
                             step + 1 == tc.steps);
  };

  // A signal or the time limit during the startup: stop before the first evaluation and step,
  // saving nothing (what was resumed is the newest checkpoint already).
  if (trainer.steps_done() < tc.steps && watch_stops &&
      watch.should_stop(0.0, pg.comm.get(), hooks.interrupted && hooks.interrupted(),
                        stop_seconds(trainer.steps_done()))) {
    result.stop_reason = stop_reason();
  }
  float val_loss = std::nanf("");
  if (result.stop_reason.empty()) {
    val_loss = run_eval();
    out.line(strprintf("step %5lld | val loss %.4f", (long long)trainer.steps_done(), val_loss));
  }

  // The run directory, once the data and the model are known to work.
  const fs::path dir = cfg.out;
  Metrics metrics;
  // What rank 0 alone writes (the run directory, the ledger) is agreed on: a rank 0 that cannot
  // (permissions, a full disk) would otherwise leave the others waiting in the first step.
  std::string unwritable;
  try {
    if (!cfg.out.empty() && lead) {
      make_directories(dir);
      write_text(dir / "config.json", cfg.to_json() + "\n");
      reached =
          std::max(reached, metrics.open((dir / "metrics.jsonl").string(), trainer.steps_done()));
    }
    if (lead && !ledger_dir.empty()) {
      const int64_t tokens_per_step =
          tc.micro_batch * tc.seq_len * tc.grad_accum * grid.grid.dp();
      ledger = RunLedger(
          ledger_dir,
          strprintf("\"ranks\": %d, \"backend\": \"%s\", \"layout\": \"%s\", "
                    "\"tokens_per_step\": %lld, \"flops_per_token\": %.6g, \"peak_flops\": %.6g, "
                    "\"profile\": \"%s\", \"steps_reached\": %lld",
                    pg.size(), backend.c_str(), run_layout(cfg, grid).c_str(),
                    (long long)tokens_per_step, model_flops_per_token(cfg.model, tc.seq_len),
                    profile.peak_flops, profile.name.c_str(), (long long)reached),
          origin + seconds_since(start));
    }
  } catch (const std::exception& e) {
    if (!pg.comm || pg.size() <= 1) throw;  // (alone: the error as it is)
    unwritable = e.what();
  }
  agree(pg, unwritable, "cannot write the run directory or the ledger (its output says why)",
        false);
  if (!cfg.out.empty()) out.line("run directory: " + cfg.out);

  // The ledger's parts: startup is what came before the first step, less loading and evaluating.
  parts.startup = origin + seconds_since(start) - parts.checkpoint_load - parts.evaluation;
  // A step's time (its loop iteration less evaluation and saves) is training, or redone when
  // an earlier allocation had reached the step.
  auto account_step = [&](int64_t step, Clock::time_point t0, double saved0, double evaluated0) {
    const double t =
        seconds_since(t0) - (parts.checkpoint_save - saved0) - (parts.evaluation - evaluated0);
    if (step <= reached) {
      parts.redone += t;
      ++redone_steps;
    } else {
      parts.training += t;
    }
    result.steps_done = step;
  };
  bool save_due = false;                  // a periodic save waiting for a step that updates
  bool last_skipped = false;              // the last step's loss or gradient norm not finite
  const auto steps_start = Clock::now();  // the ETA counts steps only
  const int64_t first = trainer.steps_done();
  double tok_per_s = 0;
  result.final_loss = std::nanf("");
  if (trainer.pipeline() && cfg.parallel.pp_timeline) trainer.pipeline()->record_timeline(true);
  for (int64_t s = first; result.stop_reason.empty() && s < tc.steps; ++s) {
    const auto step_start = Clock::now();
    const double saved_before = parts.checkpoint_save, evaluated_before = parts.evaluation;
    StepStats st;
    try {
      st = trainer.step();
    } catch (const DivergedError&) {
      finish_save();  // a good step's pending save (every rank stops here: collective is safe)
      throw;
    }
    last_skipped = st.skipped;
    result.final_loss = st.loss;
    tok_per_s =
        tok_per_s == 0 ? st.tokens_per_second : 0.9 * tok_per_s + 0.1 * st.tokens_per_second;
    const double elapsed = seconds_since(steps_start);
    out.progress(st, tok_per_s, elapsed,
                 elapsed / double(st.step - first) * double(tc.steps - st.step));
    const bool evaluate =
        (tc.eval_every > 0 && st.step % tc.eval_every == 0) || st.step == tc.steps;
    if (evaluate) {
      val_loss = run_eval();
      out.line(strprintf("step %5lld | val loss %.4f (unigram baseline %.3f)", (long long)st.step,
                         val_loss, baseline));
    }
    if (lead) {
      const std::string record = metrics_record(st, evaluate ? &val_loss : nullptr);
      metrics.write(record);
      if (hooks.on_step) hooks.on_step(record);
    }
    if (checkpoints) {
      committed(st.checkpoint);  // an asynchronous save that every rank has finished
      async_committed(st.checkpoint);
      // A save falls due every save_every steps; at a skipped step (a non-finite loss) it waits
      // for the next step that updates, so a diverging run does not rotate good checkpoints out.
      save_due = save_due || (ck.save_every > 0 && st.step % ck.save_every == 0);
      if (save_due && !st.skipped && st.step < tc.steps) {
        save_due = false;
        if (ck.async_save) {
          finish_save();  // the previous one, if it is late
          Span timed(parts.checkpoint_save);
          stop_cost.async_started(seconds_since(start));
          trainer.save_checkpoint_async(ck.dir, int(ck.keep));
          saved_at = st.step;
        } else {
          save(ck.keep);
        }
      }
    }
    const bool interrupt = hooks.interrupted && hooks.interrupted();
    if (st.step < tc.steps && watch_stops &&
        watch.should_stop(st.step_seconds, pg.comm.get(), interrupt, stop_seconds(st.step))) {
      if (checkpoints) {
        finish_save();
        if (saved_at != st.step) save(ck.keep + trainer.skipped_in_a_row());
      }
      account_step(st.step, step_start, saved_before, evaluated_before);
      result.stop_reason = stop_reason();
      break;
    }
    // For tests/train/preempt_resume.sh: this process stops itself (SIGSTOP) after step N's stop
    // poll, so that a signal can be sent to another rank at a known point of the run.
    if (const char* at = std::getenv("NURI_TEST_STOP_AFTER_STEP");
        at && std::to_string(st.step) == at) {
      std::raise(SIGSTOP);
    }
    account_step(st.step, step_start, saved_before, evaluated_before);
  }
  const auto finish_start = Clock::now();
  const double saved_before_finish = parts.checkpoint_save;
  auto close_ledger = [&] {
    parts.finish = seconds_since(finish_start) - (parts.checkpoint_save - saved_before_finish);
    const std::string reason = result.stop_reason.empty() ? "done" : result.stop_reason;
    // The run's outcome is settled (its checkpoint committed): a ledger that cannot be written
    // now is a warning, not a status of rank 0's own the other ranks would not share.
    try {
      ledger.end(steps_from, result.steps_done, std::max(reached, result.steps_done),
                 redone_steps, result.status, reason, parts);
    } catch (const Error& e) {
      NURI_LOG(warn, "the run ledger's end record was not written: ", e.what());
    }
  };
  finish_save();
  // A run that ends on a skipped step with a non-finite validation loss has diverged: its model
  // is neither checkpointed nor written, and the run fails (below). (A finite validation loss
  // after an isolated skipped step is a working model; masked validation data without counted
  // targets gives a non-finite one after a step that updated.)
  const bool diverged = result.stop_reason.empty() && last_skipped && !std::isfinite(val_loss);
  if (result.stop_reason.empty() && checkpoints && saved_at != trainer.steps_done() && !diverged) {
    save(ck.keep + trainer.skipped_in_a_row());
  }
  // A signal during the last step or its checkpoint (no stop is polled after the last step):
  // the run is checkpointed at its end, so it stops there with the requeue status before the
  // model file and the sample, which for a large model (gathered to rank 0) could outlast the
  // pool's grace period; the next allocation resumes the finished run and writes them.
  if (result.stop_reason.empty() && checkpoints && !diverged && watch_stops &&
      watch.signalled_on_any_rank(pg.comm.get())) {
    result.stop_reason = watch.signal() ? "signal " + std::to_string(watch.signal())
                                        : std::string("another rank was signalled");
  }
  result.steps_done = trainer.steps_done();
  result.skipped_steps = trainer.skipped_steps();
  result.val_loss = val_loss;
  result.peak_bytes = model.memory().peak_bytes;

  const bool preempted = !result.stop_reason.empty() && result.stop_reason != "interrupted";
  if (preempted && result.steps_done == first && watch.time_limit_alone()) {
    // Every allocation would start the same way and stop here again: requeuing cannot help.
    out.line(strprintf("the time limit (%.0f s) leaves no step: the startup took %.0f s and a "
                       "stop is counted as %.0f s more (a save as long as the load or a "
                       "timed write of the checkpoint's bytes, an evaluation due%s); raise "
                       "--time-limit, since every allocation would stop here again%s",
                       ck.time_limit, seconds_since(start), stop_seconds(first),
                       probe_what.empty() ? "" : ("; " + probe_what).c_str(),
                       resuming ? ("; the checkpoint it resumed (step " + std::to_string(first) +
                                   ") stays the newest").c_str()
                                : ""));
    result.status = kRunFailed;
    result.seconds = seconds_since(start);
    close_ledger();
    return result;
  }
  if (preempted) {
    if (result.steps_done == first) {  // stopped during the startup
      out.line(strprintf("stopped before its first step (%s): %s; exit status %d means "
                         "\"requeue me\"",
                         result.stop_reason.c_str(),
                         resuming ? ("the checkpoint it resumed (step " +
                                     std::to_string(first) + ") stays the newest").c_str()
                                  : "nothing to save yet",
                         kPreemptedExitCode));
    } else {
      out.line(strprintf(
          "stopped at step %lld (%s): checkpointed; exit status %d means \"requeue me\"",
          (long long)result.steps_done, result.stop_reason.c_str(), kPreemptedExitCode));
    }
    result.status = kPreemptedExitCode;
    result.seconds = seconds_since(start);
    close_ledger();
    return result;
  }
  if (std::getenv("NURI_CKPT_CRASH_AT")) {  // for the fault-injection sweep (tests/ckpt/crash.sh)
    out.line(
        strprintf("checkpoint crash points passed: %lld", (long long)ckpt::crash_points_passed()));
  }
  // (An interrupt before this run's first step: its weights are no result of it, untrained in a
  // fresh run, so no model file that nuri.load or checkpoint.init would take for one.)
  const bool no_step = result.stop_reason == "interrupted" && result.steps_done == first;
  if (!cfg.out.empty() && !diverged && !no_step) {
    Span timed(parts.checkpoint_save);
    save_model(trainer, model, dir / "model.safetensors");
  }
  if (Pipeline* pipe = trainer.pipeline(); pipe && cfg.parallel.pp_timeline && !cfg.out.empty() &&
                                           grid.coord.dp == 0 && grid.coord.tp == 0) {
    pipe->write_chrome_trace((dir / "timeline.json").string());  // the first pipeline's ranks
    if (lead) {
      out.line(strprintf("pipeline timeline of the last step: %s (rank 0 idle %.0f%% of it)",
                         (dir / "timeline.json").string().c_str(), 100 * pipe->measured_bubble()));
    }
  }
  result.seconds = seconds_since(start);
  if (result.stop_reason == "interrupted") {
    out.line(strprintf("interrupted at step %lld/%lld after %s%s", (long long)result.steps_done,
                       (long long)tc.steps, duration(result.seconds).c_str(),
                       no_step ? ", before its first step: no model file written"
                       : checkpoints ? ": checkpointed" : ""));
    result.status = kRunInterrupted;
    close_ledger();
    return result;
  }
  if (diverged) {
    const std::string last =
        result.checkpoint.empty() ? "" : " (the last checkpoint: " + result.checkpoint + ")";
    out.line(strprintf(
        "diverged after %s: the last step was skipped (%lld in all) and the validation loss is "
        "not finite; neither the final checkpoint nor model.safetensors was written%s. Lower "
        "train.lr (%g)%s",
        duration(result.seconds).c_str(), (long long)result.skipped_steps, last.c_str(),
        double(tc.lr),
        checkpoints ? " and resume from a checkpoint of before the divergence (its name, as "
                      "step-00000100, written into checkpoint.dir's `latest` file; move the "
                      "newer ones away)"
                    : ""));
    result.status = kRunFailed;
    result.stop_reason = "diverged";
    close_ledger();
    return result;
  }
  out.line(
      strprintf("done in %s: val loss %.4f vs unigram baseline %.3f (%.2f nats below); %lld "
                "skipped steps; peak memory %.1f MiB (nuri allocator)",
                duration(result.seconds).c_str(), val_loss, baseline, baseline - val_loss,
                (long long)result.skipped_steps, double(result.peak_bytes) / (1 << 20)));

  const SampleConfig& sc = cfg.sample;
  // Sampling runs the model: on rank 0 alone, except under ZeRO 3, whose forward gathers the
  // weights from every rank (all sample the same tokens; rank 0 shows them).
  // So does tensor parallelism: every rank of a group computes its columns of the logits; and
  // pipeline parallelism: each token's forward runs through every stage.
  const bool sharded = (trainer.data_parallel() && trainer.data_parallel()->zero_stage() == 3) ||
                       cfg.parallel.tp > 1 || cfg.parallel.pp > 1;
  if ((lead || sharded) && sc.max_new_tokens > 0 && !sc.prompt.empty() &&
      cfg.model.vocab_size == ByteTokenizer::kVocabSize) {
    SampleOptions so;
    so.max_new_tokens = sc.max_new_tokens;
    so.temperature = sc.temperature;
    so.top_k = sc.top_k;
    so.top_p = sc.top_p;
    so.seed = tc.seed;
    const auto enc = ByteTokenizer().encode(sc.prompt);
    const auto gen = trainer.generate(std::vector<int32_t>(enc.begin(), enc.end()), so);
    const std::string text = valid_utf8(sc.prompt + ByteTokenizer().decode(gen));
    if (lead && !cfg.out.empty()) write_text(dir / "sample.txt", text + "\n");
    out.line(strprintf("---- sample (temperature %.2f, top-k %lld%s) ----", sc.temperature,
                       (long long)sc.top_k,
                       sc.top_p < 1 ? strprintf(", top-p %g", sc.top_p).c_str() : ""));
    out.line(text);
    out.line("----");
  }
  if (cfg.expect_val_below > 0 && !(val_loss < cfg.expect_val_below)) {
    out.line(strprintf("final validation loss %.4f is not below %.4f (expect_val_below)", val_loss,
                       cfg.expect_val_below));
    result.status = kRunExpectationFailed;
  }
  close_ledger();
  return result;
}

}  // namespace nuri
