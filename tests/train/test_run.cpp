// The run policy (nuri/train/run.h) through its hooks: what it prints and records, the run
// directory, resume with metrics kept once per step, an interrupt, the expectation check, and a
// run that cannot start leaving nothing behind.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "nuri/ckpt/safetensors.h"
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

std::vector<nlohmann::json> read_metrics(const fs::path& p) {
  std::vector<nlohmann::json> out;
  std::ifstream in(p);
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
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
  SafetensorsFile model((t.path / "run" / "model.safetensors").string());
  EXPECT_EQ(model.names().front(), "wte.weight");
  EXPECT_EQ(model_config_from_json(model.metadata().at("nuri_model_config")).summary(),
            c.model.summary());
  EXPECT_TRUE(fs::exists(t.path / "run" / "sample.txt"));
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
  h.interrupted = [&] { return ++polls == 2; };
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
  bad = tiny(t.path);
  bad.train.micro_batch = 0;
  EXPECT_EQ(test::error_of([&] { run_training(bad, cap.hooks()); }),
            "train.micro_batch: expected an integer >= 1, got 0");
}

}  // namespace
}  // namespace nuri
