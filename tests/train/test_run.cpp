// The run policy (nuri/train/run.h) through its hooks: what it prints and records, the run
// directory, resume with metrics kept once per step, an interrupt, the expectation check, and a
// run that cannot start leaving nothing behind.
#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "nuri/ckpt/checkpoint.h"
#include "nuri/ckpt/safetensors.h"
#include "nuri/core/log.h"
#include "nuri/train/preemption.h"
#include "nuri/train/run.h"
#include "test_util.h"

namespace nuri {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path = fs::temp_directory_path() /
                  ("nuri_run_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
                   "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
  TempDir() {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

RunConfig tiny(const fs::path& dir) {
  std::ofstream(dir / "corpus.txt") << [] {
    std::string t;
    for (int i = 0; i < 400; ++i) t += "the cluster checkpoints a preempted job at night. ";
    return t;
  }();
  RunConfig c = RunConfig().with_overrides(
      {"model=gpt2-tiny", "train.steps=6", "train.micro_batch=2", "train.seq_len=32",
       "train.eval_every=3", "train.eval_batches=2", "sample.max_new_tokens=8", "log_every=2"});
  c.data.train = (dir / "corpus.txt").string();
  return c;
}

struct Captured {
  std::string text;
  std::vector<nlohmann::json> records;
  RunHooks hooks() {
    RunHooks h;
    h.write = [this](const std::string& s) { text += s; };
    h.on_step = [this](const std::string& r) { records.push_back(nlohmann::json::parse(r)); };
    return h;
  }
};

// A 2-step run checkpointed under dir/ck, without samples: what the resume tests start from.
RunConfig checkpointed_two_steps(const fs::path& dir) {
  RunConfig c = tiny(dir);
  c.sample.max_new_tokens = 0;
  c.checkpoint.dir = (dir / "ck").string();
  c.train.steps = 2;
  Captured first;
  EXPECT_EQ(run_training(c, first.hooks()).status, kRunDone) << first.text;
  return c;
}

std::vector<nlohmann::json> read_metrics(const fs::path& p) {
  std::vector<nlohmann::json> out;
  std::ifstream in(p);
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

// The ConfigError a run of `cfg` stops with, before anything runs.
std::string config_error_of(const RunConfig& cfg) {
  try {
    run_training(cfg, Captured().hooks());
  } catch (const ConfigError& e) {
    return std::string(e.what());
  }
  return std::string("no ConfigError");
}

// A run starting fresh in an out that holds an earlier run's results moves them into
// out/earlier-N (the first N free) rather than replacing them; one that resumes keeps its own.
TEST(Run, AFreshRunMovesAnEarlierRunsResultsAside) {
  TempDir t;
  RunConfig c = tiny(t.path);
  c.out = (t.path / "run").string();
  c.train.steps = 3;
  c.sample.max_new_tokens = 0;
  Captured first;
  ASSERT_EQ(run_training(c, first.hooks()).status, kRunDone) << first.text;
  EXPECT_EQ(first.text.find("earlier"), std::string::npos);
  const auto first_metrics = read_metrics(t.path / "run" / "metrics.jsonl");
  const uintmax_t model_bytes = fs::file_size(t.path / "run" / "model.safetensors");
  // Another seed, two steps, in the same out: the first run's files move to earlier-1.
  RunConfig d = c;
  d.train.seed = c.train.seed + 1;
  d.train.steps = 2;
  Captured second;
  ASSERT_EQ(run_training(d, second.hooks()).status, kRunDone) << second.text;
  const fs::path e1 = t.path / "run" / "earlier-1";
  EXPECT_NE(second.text.find("run directory: an earlier run's results (metrics to step 3, its "
                             "model) moved to " + e1.string() + ", since this run starts fresh"),
            std::string::npos) << second.text;
  EXPECT_EQ(read_metrics(e1 / "metrics.jsonl"), first_metrics);
  EXPECT_EQ(fs::file_size(e1 / "model.safetensors"), model_bytes);
  EXPECT_TRUE(fs::exists(e1 / "config.json"));
  EXPECT_TRUE(fs::exists(e1 / "ledger.jsonl"));  // the ledger lives in out without a ckpt dir
  const auto second_metrics = read_metrics(t.path / "run" / "metrics.jsonl");
  ASSERT_EQ(second_metrics.size(), 2u);
  EXPECT_NE(second_metrics[0]["loss"], first_metrics[0]["loss"]);  // the other seed's run
  // The ledger's new allocation counts no step as redone work of the earlier run.
  std::ifstream ledger(t.path / "run" / "ledger.jsonl");
  std::string last;
  for (std::string line; std::getline(ledger, line);) last = line;
  EXPECT_EQ(nlohmann::json::parse(last)["redone_steps"], 0) << last;
  // A third fresh start: earlier-2, earlier-1 untouched.
  Captured third;
  ASSERT_EQ(run_training(d, third.hooks()).status, kRunDone) << third.text;
  EXPECT_EQ(read_metrics(t.path / "run" / "earlier-2" / "metrics.jsonl"), second_metrics);
  EXPECT_EQ(read_metrics(e1 / "metrics.jsonl"), first_metrics);
  // A run that resumes moves nothing: its metrics go on.
  RunConfig r = d;
  r.checkpoint.dir = (t.path / "ck").string();
  Captured fourth, fifth;
  ASSERT_EQ(run_training(r, fourth.hooks()).status, kRunDone) << fourth.text;
  EXPECT_NE(fourth.text.find("earlier-3"), std::string::npos);
  r.train.steps = 3;
  ASSERT_EQ(run_training(r, fifth.hooks()).status, kRunDone) << fifth.text;
  EXPECT_EQ(fifth.text.find("earlier"), std::string::npos) << fifth.text;
  EXPECT_FALSE(fs::exists(t.path / "run" / "earlier-4"));
  EXPECT_EQ(read_metrics(t.path / "run" / "metrics.jsonl").size(), 3u);
}

TEST(Run, WritesTheRunDirectoryAndReportsEachStep) {
  TempDir t;
  RunConfig c = tiny(t.path);
  c.out = (t.path / "run").string();
  Captured cap;
  const RunResult r = run_training(c, cap.hooks());
  EXPECT_EQ(r.status, kRunDone);
  EXPECT_EQ(r.steps_done, 6);
  EXPECT_EQ(r.stop_reason, "");
  ASSERT_EQ(cap.records.size(), 6u);
  const auto metrics = read_metrics(t.path / "run" / "metrics.jsonl");
  ASSERT_EQ(metrics.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(metrics[i], cap.records[i]);
    EXPECT_EQ(metrics[i]["step"], int64_t(i + 1));
    EXPECT_EQ(metrics[i].contains("val_loss"), i == 2 || i == 5) << i;
  }
  EXPECT_EQ(metrics.back()["loss"].get<double>(), double(r.final_loss));
  EXPECT_EQ(metrics.back()["val_loss"].get<double>(), double(r.val_loss));
  // Lines at steps 1, 2, 4, 6 (log_every 2, the first and the last), validation at 3 and 6.
  std::istringstream lines(cap.text);
  std::vector<std::string> steps;
  for (std::string l; std::getline(lines, l);) {
    if (l.rfind("step ", 0) == 0 && l.find("| loss") != std::string::npos)
      steps.push_back(l.substr(0, 12));
  }
  EXPECT_EQ(steps, (std::vector<std::string>{"step     1/6", "step     2/6", "step     4/6",
                                             "step     6/6"}));
  EXPECT_NE(cap.text.find("step     3 | val loss"), std::string::npos);
  EXPECT_NE(cap.text.find("---- sample (temperature 0.80, top-k 40) ----\nThe "),
            std::string::npos);
  // config.json is the config; model.safetensors holds every parameter with the model config.
  std::ifstream cfg(t.path / "run" / "config.json");
  std::stringstream ss;
  ss << cfg.rdbuf();
  EXPECT_EQ(RunConfig::from_json(ss.str()).to_json(), c.to_json());
  // Every tensor, in name order (the order of the tensor checksum, which test_export.py checks
  // against the safetensors library's reading of the file).
  SafetensorsFile model((t.path / "run" / "model.safetensors").string());
  std::vector<std::string> names;
  for (const ParamSpec& p : param_layout(c.model)) names.push_back(p.name);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(model.names(), names);
  EXPECT_EQ(model.metadata().at(kTensorsChecksumKey).size(), 64u);
  EXPECT_EQ(model_config_from_json(model.metadata().at("nuri_model_config")).summary(),
            c.model.summary());
  EXPECT_TRUE(fs::exists(t.path / "run" / "sample.txt"));
}

TEST(Run, AWarmupNoShorterThanTheRunIsSaid) {
  TempDir t;
  RunConfig c = tiny(t.path);
  c.sample.max_new_tokens = 0;
  c.train.warmup_steps = 12;
  Captured twice;
  ASSERT_EQ(run_training(c, twice.hooks()).status, kRunDone);
  EXPECT_NE(twice.text.find("warning: warmup_steps 12 is not below steps 6: the learning rate "
                            "rises to 1.0e-03 (of lr 2.0e-03) and never decays"),
            std::string::npos)
      << twice.text;
  c.train.warmup_steps = 5;
  Captured shorter;
  ASSERT_EQ(run_training(c, shorter.hooks()).status, kRunDone);
  EXPECT_EQ(shorter.text.find("warning: warmup_steps"), std::string::npos) << shorter.text;
}

TEST(Run, ResumeKeepsEachStepOnceAndAnInterruptCheckpoints) {
  TempDir t;
  RunConfig c = tiny(t.path);
  c.out = (t.path / "run").string();
  c.checkpoint.dir = (t.path / "ck").string();
  c.sample.max_new_tokens = 0;
  // Interrupted (a front end's Ctrl-C) after step 2: a checkpoint at 2, status 130.
  Captured first;
  RunHooks h = first.hooks();
  int polls = 0;
  h.interrupted = [&] { return ++polls == 3; };  // before the first step, after 1, after 2
  const RunResult a = run_training(c, h);
  EXPECT_EQ(a.status, kRunInterrupted);
  EXPECT_EQ(a.steps_done, 2);
  EXPECT_EQ(a.stop_reason, "interrupted");
  EXPECT_NE(a.checkpoint.find("step-00000002"), std::string::npos);
  EXPECT_NE(first.text.find("interrupted at step 2/6"), std::string::npos);
  // A crash after the checkpoint left records of steps it never saved: they are dropped.
  std::ofstream(t.path / "run" / "metrics.jsonl", std::ios::app) << R"({"step": 3, "loss": 9.0})"
                                                                 << "\n"
                                                                 << R"({"step": 4, "lo)";
  Captured second;
  const RunResult b = run_training(c, second.hooks());
  EXPECT_EQ(b.status, kRunDone);
  EXPECT_NE(
      second.text.find("resumed from " + (t.path / "ck" / "step-00000002").string() + ": step 2"),
      std::string::npos);
  const auto metrics = read_metrics(t.path / "run" / "metrics.jsonl");
  ASSERT_EQ(metrics.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(metrics[i]["step"], int64_t(i + 1));
  // The same six steps as a run never interrupted.
  TempDir u;
  RunConfig straight = tiny(u.path);
  straight.sample.max_new_tokens = 0;
  Captured ref;
  run_training(straight, ref.hooks());
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(metrics[i]["loss"], ref.records[i]["loss"]) << i;
}

// A preemption signal during the startup (here raised while the header is written, after
// the resume): the run stops before its first step with the requeue status, saving nothing,
// and the checkpoint it resumed stays the newest; the next start resumes it and goes on. A
// fresh start stops the same way with nothing to save. (Before the handlers went in first, the
// signal's default action ended the process.)
TEST(Run, ASignalDuringTheStartupStopsBeforeTheFirstStep) {
  TempDir t;
  RunConfig c = checkpointed_two_steps(t.path);
  c.train.steps = 4;
  auto signalled_at = [&](const RunConfig& cfg, const std::string& line, Captured& cap) {
    RunHooks h = cap.hooks();
    bool raised = false;
    h.write = [&](const std::string& s) {
      cap.text += s;
      if (!raised && s.find(line) != std::string::npos) {
        raised = true;
        std::raise(SIGTERM);
      }
    };
    return run_training(cfg, h);
  };
  Captured resumed;
  const RunResult a = signalled_at(c, "resumed from", resumed);
  EXPECT_EQ(a.status, kPreemptedExitCode) << resumed.text;
  EXPECT_EQ(a.steps_done, 2);
  EXPECT_EQ(a.stop_reason, "signal " + std::to_string(SIGTERM));
  EXPECT_NE(resumed.text.find("stopped before its first step (signal " +
                              std::to_string(SIGTERM) + "): the checkpoint it resumed (step 2) "
                              "stays the newest; exit status 75"),
            std::string::npos)
      << resumed.text;
  EXPECT_EQ(resumed.text.find("step     3/4"), std::string::npos) << resumed.text;
  EXPECT_EQ(resumed.text.find("val loss"), std::string::npos) << resumed.text;  // nor evaluates
  EXPECT_EQ(CheckpointReader::find(c.checkpoint.dir), (t.path / "ck" / "step-00000002").string());
  Captured next;
  EXPECT_EQ(run_training(c, next.hooks()).status, kRunDone) << next.text;
  EXPECT_EQ(CheckpointReader::find(c.checkpoint.dir), (t.path / "ck" / "step-00000004").string());

  RunConfig fresh = c;
  fresh.checkpoint.dir = (t.path / "fresh").string();
  Captured started;
  const RunResult b = signalled_at(fresh, "parameters", started);
  EXPECT_EQ(b.status, kPreemptedExitCode) << started.text;
  EXPECT_EQ(b.steps_done, 0);
  EXPECT_NE(started.text.find("stopped before its first step (signal " +
                              std::to_string(SIGTERM) + "): nothing to save yet"),
            std::string::npos)
      << started.text;
  EXPECT_EQ(CheckpointReader::find(fresh.checkpoint.dir), "");
}

// A signal during the last step (no stop is polled after it): the run's final checkpoint is
// committed and it stops there with the requeue status, before the model file; the next start
// resumes the finished run and only writes the model file. An interrupt before a fresh run's
// first step writes no model file of its untrained weights.
TEST(Run, ASignalInTheLastStepStopsAfterItsCheckpointBeforeTheModelFile) {
  TempDir t;
  RunConfig c = tiny(t.path);
  c.out = (t.path / "run").string();
  c.checkpoint.dir = (t.path / "ck").string();
  c.sample.max_new_tokens = 0;
  c.train.steps = 4;
  Captured last;
  RunHooks h = last.hooks();
  h.on_step = [&](const std::string& r) {
    last.records.push_back(nlohmann::json::parse(r));
    if (last.records.back()["step"] == 4) std::raise(SIGTERM);
  };
  const RunResult a = run_training(c, h);
  EXPECT_EQ(a.status, kPreemptedExitCode) << last.text;
  EXPECT_EQ(a.steps_done, 4);
  EXPECT_EQ(a.stop_reason, "signal " + std::to_string(SIGTERM));
  EXPECT_NE(last.text.find("stopped at step 4 (signal " + std::to_string(SIGTERM) +
                           "): checkpointed; exit status 75"),
            std::string::npos)
      << last.text;
  EXPECT_EQ(CheckpointReader::find(c.checkpoint.dir), (t.path / "ck" / "step-00000004").string());
  EXPECT_FALSE(fs::exists(t.path / "run" / "model.safetensors"));
  Captured next;
  const RunResult b = run_training(c, next.hooks());
  EXPECT_EQ(b.status, kRunDone) << next.text;
  EXPECT_EQ(b.steps_done, 4);
  EXPECT_TRUE(next.records.empty()) << next.text;  // no step ran again
  EXPECT_TRUE(fs::exists(t.path / "run" / "model.safetensors"));

  TempDir u;
  RunConfig fresh = tiny(u.path);
  fresh.out = (u.path / "run").string();
  fresh.sample.max_new_tokens = 0;
  Captured stopped;
  RunHooks i = stopped.hooks();
  i.interrupted = [] { return true; };
  const RunResult d = run_training(fresh, i);
  EXPECT_EQ(d.status, kRunInterrupted) << stopped.text;
  EXPECT_EQ(d.steps_done, 0);
  EXPECT_NE(stopped.text.find("before its first step: no model file written"), std::string::npos)
      << stopped.text;
  EXPECT_FALSE(fs::exists(u.path / "run" / "model.safetensors"));
}

// The time limit's arithmetic: the time spent before the watch (the startup) counts, and so
// do twice the longest step and what the stop itself takes (an evaluation due, the save).
TEST(Preemption, TheTimeLimitCountsTheStartupAndWhatTheStopTakes) {
  PreemptionWatch fresh({}, 100.0);
  EXPECT_FALSE(fresh.should_stop(1.0, nullptr));
  EXPECT_FALSE(fresh.should_stop(0.0, nullptr, false, 90.0));  // 2 x 1 + 90 < 100
  EXPECT_TRUE(fresh.should_stop(0.0, nullptr, false, 99.0));   // 2 x 1 + 99 >= 100
  EXPECT_TRUE(fresh.time_limit_reached());
  EXPECT_TRUE(fresh.time_limit_alone());  // (a stop before any step is then an error)
  PreemptionWatch both({}, 100.0);
  EXPECT_TRUE(both.should_stop(0.0, nullptr, /*interrupt=*/true, 99.0));
  EXPECT_FALSE(both.time_limit_alone());  // an interrupt as well: a stop like any other
  PreemptionWatch late({}, 100.0, /*elapsed_s=*/95.0);
  EXPECT_FALSE(late.should_stop(2.0, nullptr));  // 95 + 2 x 2 < 100
  EXPECT_TRUE(late.should_stop(3.0, nullptr));   // 95 + 2 x 3 >= 100
  PreemptionWatch none({}, 0.0, 1e6);            // no limit
  EXPECT_FALSE(none.should_stop(1e3, nullptr, false, 1e6));
  EXPECT_EQ(test::error_of([] { PreemptionWatch({}, 10.0, -1.0); })
                .rfind("time spent before the watch (-1 s) must be >= 0", 0),
            0u);
}

// Setting n_head on a model with full attention keeps it full (n_kv_head follows it), where it
// once stayed the preset's count: GPT-2 with 24 heads became grouped-query with 12 kv heads,
// and with 16 heads an error about a key the user never set. A grouped-query model keeps its
// kv heads (however it got them: a config read whole, then an override), and n_kv_head given,
// before or after, is what it says.
TEST(RunConfig, NHeadAloneKeepsFullAttentionFull) {
  auto model_of = [](std::vector<std::string> args) {
    return parse_run_args(args).config.model;
  };
  EXPECT_EQ(model_of({"--model", "gpt2-124M", "--n-head", "24"}).n_kv_head, 24);
  EXPECT_EQ(model_of({"--model", "gpt2-124M", "--n-head", "16"}).n_kv_head, 16);
  EXPECT_EQ(model_of({"--model", "llama-1B", "--n-head", "16"}).n_kv_head, 4);
  EXPECT_EQ(model_of({"--model", "gpt2-124M", "--n-kv-head", "4", "--n-head", "24"}).n_kv_head, 4);
  // A run's config.json (every key written) read with --config: its n_kv_head is not "given",
  // so an n_head after it keeps the model full.
  const fs::path written = fs::temp_directory_path() / "nuri_nhead_config.json";
  std::ofstream(written) << RunConfig().with_overrides({"model=gpt2-124M"}).to_json();
  EXPECT_EQ(model_of({"--config", written.string(), "--n-head", "24"}).n_kv_head, 24);
  EXPECT_EQ(RunConfig::load(written.string()).with_overrides({"model.n_head=24"}).model.n_kv_head,
            24);
  fs::remove(written);
  // Given as the preset's own count, before n_head: still what it says (it followed n_head).
  EXPECT_EQ(model_of({"--model", "gpt2-124M", "--n-kv-head", "12", "--n-head", "24"}).n_kv_head,
            12);
  EXPECT_EQ(model_of({"--model", "gpt2-124M", "--n-head", "24", "--n-kv-head", "6"}).n_kv_head, 6);
  RunConfig read = RunConfig::from_json(R"({"model": {"n_head": 8, "n_kv_head": 2}})");
  ASSERT_TRUE(read.model_keys_given.empty());
  model_settings().find("n_head")->set(&read.model, int64_t(16));
  EXPECT_EQ(read.model.n_kv_head, 2);  // grouped-query stays
  RunConfig full = RunConfig::from_json(R"({"model": {"n_head": 16, "n_kv_head": 16}})");
  model_settings().find("n_head")->set(&full.model, int64_t(32));
  EXPECT_EQ(full.model.n_kv_head, 32);
  const std::string error = test::error_of([] {
    parse_run_args({"--model", "llama-1B", "--n-head", "2"}).config.model.validate();
  });
  EXPECT_NE(error.find("n_kv_head (4) must divide n_head (2): set n_kv_head to a divisor of "
                       "n_head (n_head itself for full attention"),
            std::string::npos)
      << error;
}

// What a stop takes, for the time limit: the longest evaluation when one is due, the save timed
// as the longest so far (the load's time until one is timed), and a pending asynchronous save
// once more, counted from its start to the step its commit is seen at.
TEST(Preemption, AStopsCostCountsTheSaveItWaitsFor) {
  StopCost cost(/*checkpoints=*/true, /*load_s=*/4.0);
  EXPECT_EQ(cost.seconds(false), 4.0);  // no save timed yet: the load's time
  cost.evaluated(3.0);
  cost.evaluated(2.0);
  EXPECT_EQ(cost.seconds(true), 3.0 + 4.0);
  cost.saved(6.0);
  EXPECT_EQ(cost.seconds(false), 6.0);
  cost.async_started(100.0);  // pending: the stop waits for it, then saves
  EXPECT_EQ(cost.seconds(true), 3.0 + 6.0 + 6.0);
  cost.async_committed(109.5);  // it took 9.5 s: the longest save now
  EXPECT_EQ(cost.seconds(false), 9.5);
  cost.async_committed(200.0);  // nothing pending: no change
  EXPECT_EQ(cost.seconds(false), 9.5);
  // A fresh run (nothing loaded) counts the save its start measured until one is timed.
  StopCost fresh(/*checkpoints=*/true, /*load_s=*/0.0);
  EXPECT_EQ(fresh.seconds(false), 0.0);
  fresh.expect_save(2.5);
  EXPECT_EQ(fresh.seconds(false), 2.5);
  fresh.saved(1.0);  // a timed save replaces the estimate
  EXPECT_EQ(fresh.seconds(false), 1.0);
  StopCost none(/*checkpoints=*/false, 0.0);
  none.evaluated(1.5);
  EXPECT_EQ(none.seconds(false), 0.0);
  EXPECT_EQ(none.seconds(true), 1.5);
}

TEST(Run, AnUnmetExpectationIsStatus3AndBadInputLeavesNothing) {
  TempDir t;
  RunConfig c = tiny(t.path);
  c.expect_val_below = 0.01;
  c.sample.max_new_tokens = 0;
  Captured cap;
  EXPECT_EQ(run_training(c, cap.hooks()).status, kRunExpectationFailed);
  EXPECT_NE(cap.text.find("is not below 0.0100 (expect_val_below)"), std::string::npos);
  RunConfig bad = tiny(t.path);
  bad.out = (t.path / "bad").string();
  bad.model.vocab_size = 100;  // the corpus has larger byte values
  EXPECT_NE(test::error_of([&] { run_training(bad, cap.hooks()); }).find("token id"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(t.path / "bad"));
  // Validation data (the corpus's last 10%: 2080 tokens) shorter than one global batch of 96
  // sequences of 32: a config error before the model is built.
  bad = tiny(t.path);
  bad.out = (t.path / "bad").string();
  bad.train.global_batch = 96;
  const std::string short_val = config_error_of(bad);
  EXPECT_EQ(short_val.rfind("validation data: ", 0), 0u) << short_val;
  EXPECT_NE(short_val.find("fewer than one global batch of 96"), std::string::npos) << short_val;
  EXPECT_NE(short_val.find("micro_batch 2 x grad_accum 48 x 1 ranks"), std::string::npos)
      << short_val;
  EXPECT_NE(short_val.find("give more validation data: data.val (--val FILE), or more training "
                           "data (its last 10% is held out)"),
            std::string::npos)
      << short_val;
  EXPECT_FALSE(fs::exists(t.path / "bad"));
  // data.val naming the training file itself, by another path.
  bad = tiny(t.path);
  bad.out = (t.path / "bad").string();
  bad.data.val = (t.path / "." / "corpus.txt").string();
  const std::string same = config_error_of(bad);
  EXPECT_EQ(same, "data.val: " + bad.data.val + " is data.train's file: validation would be on "
                  "the training data. Leave data.val out (the run holds out the last 10%), or "
                  "give other data");
  EXPECT_FALSE(fs::exists(t.path / "bad"));
  bad = tiny(t.path);
  bad.train.micro_batch = 0;
  EXPECT_EQ(test::error_of([&] { run_training(bad, cap.hooks()); }),
            "train.micro_batch: expected an integer >= 1, got 0");
}

// out and checkpoint.dir naming a file, or data a directory nuri tokenize did not write: a
// config error saying so before anything runs, and the file left as it was.
TEST(Run, PathsOfTheWrongKindAreConfigErrors) {
  TempDir t;
  const fs::path file = t.path / "afile";
  std::ofstream(file) << "x";
  for (const char* key : {"out", "checkpoint.dir"}) {
    RunConfig c = tiny(t.path);
    (std::string(key) == "out" ? c.out : c.checkpoint.dir) = file.string();
    Captured cap;
    try {
      run_training(c, cap.hooks());
      ADD_FAILURE() << key << ": expected an error";
    } catch (const ConfigError& e) {
      EXPECT_EQ(std::string(e.what()), std::string(key) + ": " + file.string() +
                                           " exists and is not a directory; name a directory "
                                           "(it is made if missing)");
    }
    EXPECT_TRUE(fs::is_regular_file(file));
    EXPECT_EQ(fs::file_size(file), 1u);
  }
  RunConfig c = tiny(t.path);
  fs::create_directories(t.path / "texts");
  fs::copy_file(t.path / "corpus.txt", t.path / "texts" / "a.txt");
  c.data.train = (t.path / "texts").string();
  Captured cap;
  EXPECT_NE(test::error_of([&] { run_training(c, cap.hooks()); })
                .find((t.path / "texts").string() + " is a directory without a tokenize.json"),
            std::string::npos);
}

// A model whose f32 weights alone exceed the machine's memory is refused before any
// allocation (it used to grow until the system stopped it).
TEST(Run, AModelTooLargeForTheMachineIsRefusedWithItsSize) {
  TempDir t;
  RunConfig c = tiny(t.path);
  c.model.n_layer = 100000000;
  Captured cap;
  const std::string e = test::error_of([&] { run_training(c, cap.hooks()); });
  EXPECT_NE(e.find("model: 4.998e+12 parameters (vocab_size=257 d_model=64 n_layer=100000000"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find("need 18620.5 GiB for their f32 weights alone on this rank, more than this "
                   "machine's"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find("make the model smaller or split it over more ranks (parallel.tp, parallel.pp, "
                   "or dp with parallel.zero_stage = 3)"),
            std::string::npos)
      << e;
}

// A run resumed on other training data stops before it loads anything, unless told to go on
// (checkpoint.check_data false).
TEST(Run, ResumingOnOtherDataIsRefusedUnlessAskedFor) {
  TempDir t;
  RunConfig c = checkpointed_two_steps(t.path);
  ASSERT_FALSE(::testing::Test::HasFailure());
  std::ofstream(t.path / "other.txt") << std::string(20000, 'z');
  c.data.train = (t.path / "other.txt").string();
  c.train.steps = 4;
  Captured second;
  try {
    run_training(c, second.hooks());
    ADD_FAILURE() << "expected an error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("was saved training on other data"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(second.text.find("resumed from"), std::string::npos) << second.text;
  c.checkpoint.check_data = false;
  Captured third;
  const RunResult r = run_training(c, third.hooks());
  EXPECT_EQ(r.status, kRunDone);
  EXPECT_EQ(r.steps_done, 4);
  EXPECT_NE(third.text.find("resumed from"), std::string::npos) << third.text;
  EXPECT_EQ(third.records.front()["step"], 3);  // steps 3 and 4 alone: the run went on
}

// A run told to start fresh (checkpoint.resume false) in a directory of another run's
// checkpoints is refused before it writes anything there.
TEST(Run, StartingFreshAmongAnotherRunsCheckpointsIsRefused) {
  TempDir t;
  RunConfig c = checkpointed_two_steps(t.path);
  ASSERT_FALSE(::testing::Test::HasFailure());
  const fs::path newest = t.path / "ck" / "step-00000002";
  const auto written = fs::last_write_time(newest / "manifest.json");
  c.checkpoint.resume = false;
  c.train.seed = 7;
  Captured second;
  try {
    run_training(c, second.hooks());
    ADD_FAILURE() << "expected an error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "checkpoint.dir: " + c.checkpoint.dir + " holds checkpoints (the newest " +
                  newest.string() + ") and checkpoint.resume is false: this run's saves would "
                  "overwrite or rotate them out; name a new directory, move them away, or resume "
                  "from them");
  }
  EXPECT_EQ(fs::last_write_time(newest / "manifest.json"), written);
  EXPECT_EQ(second.text, "");
}

// One checkpoint given as checkpoint.dir (as one would to go back to it) is refused: the saves
// would go inside it and every start would resume it again. Its name in the directory's
// `latest` resumes it instead.
TEST(Run, OneCheckpointAsTheCheckpointDirIsRefused) {
  TempDir t;
  RunConfig c = tiny(t.path);
  c.sample.max_new_tokens = 0;
  c.checkpoint.dir = (t.path / "ck").string();
  c.checkpoint.save_every = 1;
  c.train.steps = 2;
  ASSERT_EQ(run_training(c, Captured().hooks()).status, kRunDone);
  const std::string first = (t.path / "ck" / "step-00000001").string();
  RunConfig back = c;
  back.train.steps = 3;
  back.checkpoint.dir = first + "/";
  EXPECT_EQ(config_error_of(back),
            "checkpoint.dir: " + first + "/ is one checkpoint, not a directory of them; give the "
            "directory that holds it (" + c.checkpoint.dir + "). To resume from this one rather "
            "than the newest, write its name into that directory's `latest` file (and move the "
            "newer ones away, which would otherwise count in --keep and be resumed if `latest` "
            "went missing)");
  // Other refusals before anything runs: a time limit with no checkpoint directory to stop
  // into, and a model file to start from that the run would write over at its end.
  RunConfig limited = back;
  limited.checkpoint.dir = "";
  limited.checkpoint.time_limit = 3500;
  EXPECT_EQ(config_error_of(limited),
            "checkpoint.time_limit stops the run to checkpoint it before the limit, and "
            "checkpoint.dir is not set: give one (--ckpt-dir DIR; the next start resumes from "
            "there), or leave the limit out");
  RunConfig over = c;
  over.checkpoint.dir = (t.path / "ck2").string();
  over.out = (t.path / "run").string();
  fs::create_directories(over.out);
  std::ofstream(fs::path(over.out) / "model.safetensors") << "weights";
  over.checkpoint.init = (fs::path(over.out) / ".." / "run" / "model.safetensors").string();
  EXPECT_EQ(config_error_of(over),
            "checkpoint.init: " + over.checkpoint.init + " is the model.safetensors this run "
            "writes into out (" + over.out + ") at its end, which would replace it; name another "
            "out, or copy the file elsewhere and init from the copy");
  EXPECT_FALSE(fs::exists(fs::path(first) / "latest"));
  std::ofstream(t.path / "ck" / "latest") << "step-00000001\n";
  back.checkpoint.dir = c.checkpoint.dir;
  Captured resumed;
  ASSERT_EQ(run_training(back, resumed.hooks()).status, kRunDone) << resumed.text;
  EXPECT_NE(resumed.text.find("resumed from " + first + ": step 1"), std::string::npos)
      << resumed.text;
  EXPECT_EQ(resumed.records.front()["step"], 2);
}

// Two allocations killed in a row before their end records: the first reached step 6 past its
// checkpoint at 4, the second truncated the metrics back to 4 and was killed at 5. The second's
// start record kept the 6 it had found, so the third counts step 6 as redone work.
TEST(Run, StepsReachedSurviveTwoKillsInARow) {
  TempDir t;
  RunConfig c = tiny(t.path);
  c.sample.max_new_tokens = 0;
  c.checkpoint.dir = (t.path / "ck").string();
  c.out = (t.path / "run").string();
  c.checkpoint.save_every = 4;
  c.train.steps = 6;
  c.train.eval_every = 0;
  const fs::path ledger = t.path / "ck" / "ledger.jsonl";
  auto killed = [&] {  // as if SIGKILLed: its end record and the checkpoints after step 4 gone
    std::vector<std::string> lines;
    std::ifstream in(ledger);
    for (std::string l; std::getline(in, l);) {
      if (nlohmann::json::parse(l)["event"] != "end") lines.push_back(l);
    }
    std::ofstream out(ledger, std::ios::trunc);
    for (const auto& l : lines) out << l << "\n";
    for (const char* d : {"step-00000005", "step-00000006"}) fs::remove_all(t.path / "ck" / d);
    std::ofstream(t.path / "ck" / "latest") << "step-00000004\n";
  };
  ASSERT_EQ(run_training(c, Captured().hooks()).status, kRunDone);
  killed();
  {
    Captured second;
    RunHooks h = second.hooks();
    int polls = 0;
    h.interrupted = [&] { return ++polls >= 2; };  // stops after step 5
    ASSERT_EQ(run_training(c, h).status, kRunInterrupted) << second.text;
  }
  killed();
  ASSERT_EQ(run_training(c, Captured().hooks()).status, kRunDone);
  std::ifstream in(ledger);
  nlohmann::json last;
  for (std::string l; std::getline(in, l);) last = nlohmann::json::parse(l);
  EXPECT_EQ(last["event"], "end");
  EXPECT_EQ(last["steps_from"], 4);
  EXPECT_EQ(last["redone_steps"], 2) << last.dump();  // steps 5 and 6
}

// A diverging run (a learning rate of 1e30 from step 4 of a run checkpointed every step, 3 kept):
// the skipped steps commit no checkpoint, so they do not rotate the good ones out, and
// train.skip_limit (5) skipped steps in a row stop the run. A run that ends on a skipped step
// with a non-finite validation loss fails (status 1) without writing its final checkpoint or
// model.safetensors.
// Under on_nonfinite = stop the run stops at the first non-finite step (5, after step 4's
// update at a learning rate of 1e30), and the asynchronous save of step 4 still in flight is
// committed first: the checkpoint to go back to is there (it was left without its manifest).
TEST(Run, StoppingAtANonFiniteStepCommitsTheSaveInFlight) {
  TempDir t;
  RunConfig c = tiny(t.path);
  c.sample.max_new_tokens = 0;
  c.checkpoint.dir = (t.path / "ck").string();
  c.checkpoint.save_every = 1;
  c.checkpoint.async_save = true;
  c.train.steps = 3;
  ASSERT_EQ(run_training(c, Captured().hooks()).status, kRunDone);
  c.train.lr = 1e30f;
  c.train.grad_clip = 0;
  c.train.steps = 20;
  c.train.on_nonfinite = NonFinitePolicy::stop;
  Captured bad;
  const std::string e = test::error_of([&] { run_training(c, bad.hooks()); });
  EXPECT_NE(e.find(" at step 5 (loss "), std::string::npos) << e << "\n" << bad.text;
  EXPECT_NE(e.find("stopping as on_nonfinite=stop asks"), std::string::npos) << e;
  EXPECT_TRUE(fs::exists(t.path / "ck" / "step-00000004" / "manifest.json"));
}

TEST(Run, ADivergingRunStopsWithoutRotatingOutGoodCheckpoints) {
  TempDir t;
  RunConfig c = tiny(t.path);
  c.sample.max_new_tokens = 0;
  c.checkpoint.dir = (t.path / "ck").string();
  c.checkpoint.save_every = 1;
  c.train.steps = 3;
  Captured good;
  ASSERT_EQ(run_training(c, good.hooks()).status, kRunDone);
  auto steps_kept = [&] {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(t.path / "ck")) {
      if (e.is_directory()) names.push_back(e.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  };
  EXPECT_EQ(steps_kept(), (std::vector<std::string>{"step-00000001", "step-00000002",
                                                   "step-00000003"}));
  c.train.lr = 1e30f;
  c.train.grad_clip = 0;
  c.train.steps = 20;
  Captured bad;
  const std::string e = test::error_of([&] { run_training(c, bad.hooks()); });
  EXPECT_NE(e.find("5 steps in a row (5 to 9) had a non-finite loss or gradient norm: the run has "
                   "diverged (train.skip_limit = 5)"),
            std::string::npos)
      << e << "\n" << bad.text;
  // Step 4's update was made (its loss was finite) and checkpointed; 5 to 9 were skipped.
  EXPECT_EQ(steps_kept(), (std::vector<std::string>{"step-00000002", "step-00000003",
                                                   "step-00000004"}));
  // Resumed and stopped after step 5 (skipped, an interrupt as a preemption would): its save
  // rotates out none of the good ones, and the streak goes on in the next allocation, which
  // diverges at the same step as the run never stopped.
  {
    Captured stopped;
    RunHooks h = stopped.hooks();
    int polls = 0;
    h.interrupted = [&] { return ++polls >= 2; };  // the startup's poll, then step 5's
    EXPECT_EQ(run_training(c, h).status, kRunInterrupted) << stopped.text;
    EXPECT_EQ(steps_kept(), (std::vector<std::string>{"step-00000002", "step-00000003",
                                                     "step-00000004", "step-00000005"}));
    const std::string again = test::error_of([&] { run_training(c, Captured().hooks()); });
    EXPECT_NE(again.find("5 steps in a row (5 to 9)"), std::string::npos) << again;
  }
  // Ending before the limit (step 1 updates, 2 to 4 are skipped): the final validation loss is
  // not finite.
  RunConfig shorter = c;
  shorter.train.steps = 4;
  shorter.out = (t.path / "run").string();
  shorter.checkpoint.resume = false;
  shorter.checkpoint.dir = (t.path / "ck2").string();
  Captured ended;
  const RunResult r = run_training(shorter, ended.hooks());
  EXPECT_EQ(r.status, kRunFailed);
  EXPECT_EQ(r.stop_reason, "diverged");
  EXPECT_EQ(r.skipped_steps, 3);
  EXPECT_NE(ended.text.find("the last step was skipped (3 in all) and the validation loss is not "
                            "finite; neither the final checkpoint nor model.safetensors was "
                            "written (the last checkpoint: " +
                            (t.path / "ck2" / "step-00000001").string() + ")"),
            std::string::npos)
      << ended.text;
  EXPECT_EQ(ended.text.find("done in"), std::string::npos);
  EXPECT_FALSE(fs::exists(t.path / "run" / "model.safetensors"));
  EXPECT_TRUE(fs::exists(t.path / "ck2" / "step-00000001"));
  EXPECT_FALSE(fs::exists(t.path / "ck2" / "step-00000002"));
  EXPECT_FALSE(fs::exists(t.path / "ck2" / "step-00000004"));
}

// checkpoint.init: a fresh run starts from a model file's weights (its first validation loss is
// the loss the run that wrote the file ended at), its model taken from the file when the run
// gives none; another model, a damaged file and a directory are refused before anything is
// written; a run with a checkpoint to resume takes the checkpoint's weights instead.
TEST(Run, AFreshRunStartsFromAModelFilesWeights) {
  TempDir t;
  RunConfig a = tiny(t.path);
  a.sample.max_new_tokens = 0;
  a.out = (t.path / "a").string();
  const RunResult trained = run_training(a, Captured().hooks());
  ASSERT_EQ(trained.status, kRunDone);
  const std::string file = (t.path / "a" / "model.safetensors").string();
  const std::string ended = strprintf("step     0 | val loss %.4f", trained.val_loss);

  RunConfig b = tiny(t.path);
  b.sample.max_new_tokens = 0;
  b.train.steps = 2;
  b.checkpoint.init = file;
  Captured from_file;
  ASSERT_EQ(run_training(b, from_file.hooks()).status, kRunDone) << from_file.text;
  EXPECT_NE(from_file.text.find("initialized from " + file), std::string::npos) << from_file.text;
  EXPECT_NE(from_file.text.find(ended), std::string::npos) << ended << "\n" << from_file.text;
  Captured fresh;  // without it the first validation loss is the seed's model's
  b.checkpoint.init = "";
  ASSERT_EQ(run_training(b, fresh.hooks()).status, kRunDone);
  EXPECT_EQ(fresh.text.find(ended), std::string::npos) << fresh.text;

  // No model settings: the model is the file's.
  RunConfig c = RunConfig().with_overrides(
      {"train.steps=1", "train.micro_batch=2", "train.seq_len=32", "train.eval_batches=2",
       "sample.max_new_tokens=0", "checkpoint.init=" + file});
  c.data.train = b.data.train;
  Captured adopted;
  ASSERT_EQ(run_training(c, adopted.hooks()).status, kRunDone) << adopted.text;
  EXPECT_NE(adopted.text.find("model: that of " + file + " ("), std::string::npos)
      << adopted.text;
  EXPECT_NE(adopted.text.find("parameters) | " + a.model.summary() + " |"), std::string::npos)
      << adopted.text;
  EXPECT_NE(adopted.text.find(ended), std::string::npos) << adopted.text;

  // Another model, a directory, a flipped byte: refused before the run directory is made.
  b.model.n_layer = 3;
  b.checkpoint.init = file;
  b.out = (t.path / "refused").string();
  EXPECT_EQ(config_error_of(b),
            "checkpoint.init: " + file + " holds another model than this run's: n_layer=2 (this "
            "run: 3). Leave out the model settings (the model is then the file's), or give the "
            "file's");
  b.model.n_layer = 2;
  b.checkpoint.init = (t.path / "a").string();
  EXPECT_NE(config_error_of(b).find("a is a directory, not a model file. A Hugging Face model "
                                    "directory becomes one with `python -m nuri import DIR "
                                    "--out FILE`"),
            std::string::npos)
      << config_error_of(b);
  fs::copy_file(file, file + ".orig");
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-3, std::ios::end);
    f.put('\x7f');
  }
  b.checkpoint.init = file;
  EXPECT_NE(config_error_of(b).find("checkpoint.init: " + file + " fails its checksum"),
            std::string::npos)
      << config_error_of(b);
  EXPECT_FALSE(fs::exists(t.path / "refused"));

  // The file is read on every start (it gives the model), but a checkpoint to resume wins over
  // its weights.
  b.checkpoint.dir = (t.path / "ck").string();
  b.checkpoint.init = (t.path / "missing.safetensors").string();
  EXPECT_NE(config_error_of(b).find("missing.safetensors"), std::string::npos)
      << config_error_of(b);
  fs::copy_file(file + ".orig", file,
                fs::copy_options::overwrite_existing);
  b.checkpoint.init = file;
  b.out = "";
  Captured first;
  ASSERT_EQ(run_training(b, first.hooks()).status, kRunDone) << first.text;
  EXPECT_NE(first.text.find("initialized from"), std::string::npos) << first.text;
  b.train.steps = 3;
  Captured resumed;
  ASSERT_EQ(run_training(b, resumed.hooks()).status, kRunDone) << resumed.text;
  EXPECT_NE(resumed.text.find("resumed from"), std::string::npos) << resumed.text;
  EXPECT_EQ(resumed.text.find("initialized from"), std::string::npos) << resumed.text;
}

// checkpoint.init with a RoPE model: the run may set its own context settings (max_seq_len,
// rope_*) beyond its preset's, alone (the rest of the model the file's) or with the file's
// model, and a max_seq_len it does not set grows to its sequences; the others stay the file's
// (here rope_theta 500000, which the llama-tiny preset does not have) unless the run names
// them, even to its preset's value. A longer max_seq_len
// computes what the file's model does on the same windows (the first validation loss is the
// file's run's last) and trains on windows longer than the pretrained context; other RoPE
// frequencies change the loss. A model with learned positions keeps its max_seq_len (a weight
// row per position).
TEST(Run, ARopeModelFromAFileTakesTheRunsContext) {
  TempDir t;
  RunConfig a = tiny(t.path).with_overrides(
      {"model=llama-tiny", "model.rope_theta=500000", "sample.max_new_tokens=0"});
  a.out = (t.path / "a").string();
  const RunResult trained = run_training(a, Captured().hooks());
  ASSERT_EQ(trained.status, kRunDone);
  const std::string file = (t.path / "a" / "model.safetensors").string();
  const std::string ended = strprintf("step     0 | val loss %.4f", trained.val_loss);
  auto from_file = [&](const std::vector<std::string>& overrides) {
    std::vector<std::string> all = {"train.steps=1", "train.micro_batch=2", "train.seq_len=32",
                                    "train.eval_batches=2", "sample.max_new_tokens=0",
                                    "checkpoint.init=" + file};
    all.insert(all.end(), overrides.begin(), overrides.end());
    RunConfig c = RunConfig().with_overrides(all);
    c.data.train = a.data.train;
    return c;
  };
  auto run = [&](const std::vector<std::string>& overrides) {
    Captured out;
    EXPECT_EQ(run_training(from_file(overrides), out.hooks()).status, kRunDone) << out.text;
    EXPECT_NE(out.text.find("step     0 | val loss "), std::string::npos) << out.text;
    return out.text;
  };
  {  // the context alone: the file's model with max_seq_len 512, the same windows
    const std::string out = run({"model.max_seq_len=512"});
    EXPECT_NE(out.find("model.max_seq_len 512 (checkpoint.init's model: 128)"),
              std::string::npos)
        << out;
    EXPECT_NE(out.find(ended), std::string::npos) << ended << "\n" << out;
  }
  {  // the file's model given as its preset: the file's rope_theta, not the preset's
    const std::string out = run({"model=llama-tiny"});
    EXPECT_NE(out.find("model: llama-tiny"), std::string::npos) << out;
    EXPECT_EQ(out.find("model.rope_theta"), std::string::npos) << out;
    EXPECT_NE(out.find(ended), std::string::npos) << ended << "\n" << out;
  }
  {  // the preset's rope_theta given by name is the run's, though equal to the preset's; in a
     // config file too (read before the flags' preset, which replaces what it set)
    const std::string out = run({"model=llama-tiny", "model.rope_theta=10000"});
    EXPECT_NE(out.find("model.rope_theta 10000.0 (checkpoint.init's model: 500000.0)"),
              std::string::npos)
        << out;
    const RunConfig named = from_file({"model=llama-tiny", "model.rope_theta=10000"});
    EXPECT_EQ(init_model(named).model.rope_theta, 10000.f);
    EXPECT_EQ(init_model(from_file({"model=llama-tiny"})).model.rope_theta, 500000.f);
    const std::string toml = (t.path / "ctx.toml").string();
    std::ofstream(toml) << "[model]\nrope_theta = 10000.0\n";
    EXPECT_EQ(parse_run_args({"--config", toml}).config.model_keys_given,
              std::vector<std::string>{"rope_theta"});
    EXPECT_TRUE(parse_run_args({"--config", toml, "--model", "llama-tiny"})
                    .config.model_keys_given.empty());
    // The whole way from a config file: its rope_theta is the run's model's. A JSON text (what
    // to_json writes, every key named) counts only what differs from the preset.
    std::ofstream(toml) << "[model]\npreset = \"llama-tiny\"\nrope_theta = 10000.0\n"
                        << "[train]\nseq_len = 32\n[checkpoint]\ninit = \"" << file << "\"\n";
    const RunConfig from_toml = parse_run_args({"--config", toml}).config;
    EXPECT_EQ(init_model(from_toml).model.rope_theta, 10000.f);
    EXPECT_EQ(init_model(RunConfig::from_json(from_toml.to_json())).model.rope_theta, 500000.f);
  }
  const std::string ck = "checkpoint.dir=" + (t.path / "long").string();
  {  // windows of 384 tokens, three times the pretrained context: max_seq_len grows to them
    const std::string out = run({"train.seq_len=384", ck});
    EXPECT_NE(out.find("steps of 2 x 384 tokens"), std::string::npos) << out;
    EXPECT_NE(out.find("model.max_seq_len 384 (checkpoint.init's model: 128)"),
              std::string::npos)
        << out;
  }
  // Its checkpoint resumed with windows of 256 (the model grows to them): the sequence length
  // is what the error names, not the max_seq_len it gave the model.
  std::string resumed;
  try {
    run_training(from_file({"train.seq_len=256", "train.steps=2", ck}), Captured().hooks());
  } catch (const std::exception& e) {
    resumed = e.what();
  }
  EXPECT_NE(resumed.find("trained on sequences of 384 tokens; this run's seq_len is 256. Give "
                         "train.seq_len 384 to resume it"),
            std::string::npos)
      << resumed;
  {  // the file's model given, with linear RoPE scaling: another loss on the same windows
    const std::string out =
        run({"model=llama-tiny", "model.rope_scaling=linear", "model.rope_factor=2"});
    EXPECT_NE(out.find("model.rope_scaling \"linear\" (checkpoint.init's model: \"none\")"),
              std::string::npos)
        << out;
    EXPECT_EQ(out.find("model.rope_theta"), std::string::npos) << out;
    EXPECT_EQ(out.find(ended), std::string::npos) << out;
  }
  // A max_seq_len the run sets stays (the error names it as the run's); the file's exact model
  // given, a sliding window included, still grows to the windows, up to the window.
  EXPECT_EQ(config_error_of(from_file({"model.max_seq_len=320", "train.seq_len=384"})),
            "train.seq_len (384) exceeds model.max_seq_len (320) this run sets; give a longer "
            "one, or leave it out (it then grows to train.seq_len)");
  RunConfig w = tiny(t.path).with_overrides(
      {"model=llama-tiny", "model.sliding_window=256", "sample.max_new_tokens=0"});
  w.out = (t.path / "w").string();
  ASSERT_EQ(run_training(w, Captured().hooks()).status, kRunDone);
  const std::string windowed = "checkpoint.init=" + (t.path / "w" / "model.safetensors").string();
  {
    const std::string out =
        run({"model=llama-tiny", "model.sliding_window=256", "train.seq_len=200", windowed});
    EXPECT_NE(out.find("model.max_seq_len 200 (checkpoint.init's model: 128)"),
              std::string::npos)
        << out;
  }
  EXPECT_EQ(config_error_of(from_file({"train.seq_len=300", windowed})),
            "train.seq_len (300) is longer than checkpoint.init's model's sliding_window (256): "
            "nuri has no sliding-window attention; lower seq_len to the window");
  // Another setting still refused; learned positions keep their rows (their own count given).
  EXPECT_EQ(config_error_of(
                from_file({"model=llama-tiny", "model.max_seq_len=256", "model.d_ff=128"})),
            "checkpoint.init: " + file + " holds another model than this run's: d_ff=176 (this "
            "run: 128). Leave out the model settings (the model is then the file's), or give the "
            "file's");
  RunConfig g = tiny(t.path).with_overrides({"sample.max_new_tokens=0"});
  g.out = (t.path / "g").string();
  ASSERT_EQ(run_training(g, Captured().hooks()).status, kRunDone);
  const std::string gpt2 = (t.path / "g" / "model.safetensors").string();
  EXPECT_EQ(config_error_of(from_file({"model.max_seq_len=512", "checkpoint.init=" + gpt2})),
            "checkpoint.init: " + gpt2 + "'s model has learned positions (a weight row per "
            "position up to max_seq_len 128): its max_seq_len cannot change (this run: 512). "
            "Leave it out, or start from a model with RoPE positions");
  EXPECT_EQ(config_error_of(from_file({"train.seq_len=200", "checkpoint.init=" + gpt2})),
            "train.seq_len (200) exceeds model.max_seq_len (128) of checkpoint.init's model, "
            "whose positions are learned weights (a row per position)");
  EXPECT_EQ(config_error_of(from_file({"model.max_seq_len=128", "train.seq_len=200",
                                       "checkpoint.init=" + gpt2})),
            "train.seq_len (200) exceeds model.max_seq_len (128) of checkpoint.init's model, "
            "whose positions are learned weights (a row per position)");
  EXPECT_EQ(config_error_of(from_file({"model=gpt2-tiny", "train.seq_len=200",
                                       "checkpoint.init=" + gpt2})),
            "train.seq_len (200) exceeds model.max_seq_len (128) of checkpoint.init's model, "
            "whose positions are learned weights (a row per position)");
  Captured own;
  ASSERT_EQ(run_training(from_file({"model.max_seq_len=128", "checkpoint.init=" + gpt2}),
                         own.hooks())
                .status,
            kRunDone)
      << own.text;
}

}  // namespace
}  // namespace nuri
