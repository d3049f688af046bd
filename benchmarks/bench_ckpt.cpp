// Checkpoint cost (issue #10): the training time a save takes away, synchronous against
// asynchronous, and the time to load, on the CPU backend (default gpt2-124M, B=1, T=64).
//
//   sync   save_checkpoint: the step loop waits for the whole save (files fsynced, committed)
//   async  save_checkpoint_async: the loop waits for the host copies; the files are written on a
//          thread during the next `window` steps, then finish_checkpoint() waits for what is
//          left and commits. Time lost = snapshot + (those steps − window · a plain step) +
//          the final wait.
//   load   load_checkpoint into a fresh trainer (checksums of every file included).
// Alternating sync and async saves, median of --reps; one JSON object on stdout (--json FILE).
//   build/benchmarks/bench_ckpt [--model NAME] [--reps N] [--window W] [--dir DIR] [--quick]
#include <filesystem>
#include <string>

#include "bench_common.h"
#include "nuri/train/trainer.h"

namespace {

namespace fs = std::filesystem;

int64_t dir_bytes(const std::string& dir) {
  int64_t n = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) n += int64_t(e.file_size());
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_name = "gpt2-124M", dir = (fs::temp_directory_path() / "nuri_bench_ckpt").string(),
              json;
  int reps = 5, window = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--model") model_name = value();
    else if (a == "--reps") reps = std::stoi(value());
    else if (a == "--window") window = std::stoi(value());
    else if (a == "--dir") dir = value();
    else if (a == "--json") json = value();
    else if (a == "--quick") {
      model_name = "gpt2-tiny";
      reps = 3;
    } else {
      std::fprintf(stderr, "bench_ckpt: unknown option %s (see the file's header)\n", a.c_str());
      return 2;
    }
  }
  try {
    const int threads = bench::bench_threads();
    fs::remove_all(dir);
    const nuri::ModelConfig mc = nuri::model_preset(model_name);
    std::vector<uint32_t> tokens(size_t(1) << 16);
    for (size_t i = 0; i < tokens.size(); ++i) {
      tokens[i] = uint32_t((i * 7919 + i / 13) % uint64_t(mc.vocab_size));
    }
    auto data = nuri::TokenFile::from_tokens(tokens, "bench", mc.vocab_size);
    nuri::TrainConfig tc;
    tc.steps = 1000000;
    tc.micro_batch = 1;
    tc.seq_len = 64;
    tc.eval_every = 0;
    nuri::Transformer model(mc, nuri::make_backend("cpu"), 1);
    nuri::Trainer trainer(model, tc, data, nullptr);
    std::vector<double> plain;
    for (int i = 0; i < 2 + reps; ++i) {  // warm-up, then a plain step's time
      const double s = trainer.step().step_seconds;
      if (i >= 2) plain.push_back(s);
    }
    const double step_s = bench::summarize(plain).median_s;
    std::vector<double> lost_sync, lost_async, snapshot, load;
    int64_t bytes = 0;
    for (int r = 0; r < reps; ++r) {
      double t0 = bench::now_s();
      const std::string d = trainer.save_checkpoint(dir, 1);
      lost_sync.push_back(bench::now_s() - t0);
      bytes = dir_bytes(d);
      t0 = bench::now_s();
      trainer.step();  // a different step, so the async save writes a new directory
      t0 = bench::now_s();
      trainer.save_checkpoint_async(dir, 1);
      const double snap = bench::now_s() - t0;
      double steps = 0;
      for (int w = 0; w < window; ++w) steps += trainer.step().step_seconds;
      t0 = bench::now_s();
      trainer.finish_checkpoint();
      const double wait = bench::now_s() - t0;
      snapshot.push_back(snap);
      lost_async.push_back(snap + std::max(0.0, steps - window * step_s) + wait);
      nuri::Transformer fresh(mc, nuri::make_backend("cpu"), 2);
      nuri::Trainer t2(fresh, tc, data, nullptr);
      t0 = bench::now_s();
      t2.load_checkpoint(dir);
      load.push_back(bench::now_s() - t0);
    }
    const bench::Stats ss = bench::summarize(lost_sync), sa = bench::summarize(lost_async);
    bench::Json cfg, a, b, l;
    cfg.kv("model", model_name).kv("params", mc.num_params()).kv("B", int64_t(1))
        .kv("T", int64_t(64)).kv("checkpoint_bytes", bytes).kv("window_steps", window)
        .kv("plain_step_s", step_s).kv("threads", threads);
    a.kv("name", "async (snapshot + slowdown of the next steps + final wait)").stats(sa)
        .kv("snapshot_median_s", bench::summarize(snapshot).median_s);
    b.kv("name", "sync save_checkpoint").stats(ss)
        .kv("write_GBps", double(bytes) / ss.median_s / 1e9);
    l.stats(bench::summarize(load)).kv("read_GBps", double(bytes) / bench::summarize(load).median_s / 1e9);
    bench::Json j;
    j.kv("bench", "checkpoint_cpu").kv("config", cfg).kv("nuri", a).kv("peer", b)
        .kv("ratio", ss.median_s / sa.median_s).kv("load", l)
        .kv("sync_steps_lost", ss.median_s / step_s).kv("async_steps_lost", sa.median_s / step_s);
    bench::Output out(json);
    out.emit(j);
    fs::remove_all(dir);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_ckpt: %s\n", e.what());
    return 1;
  }
  return 0;
}
