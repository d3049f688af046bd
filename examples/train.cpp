// nuri-train: trains a model on a text or token file, shows step, loss, tokens/s and the
// validation loss against the data's unigram baseline, and ends with a generated sample.
// With no --data it trains on text every Debian system has (the license texts of base-files),
// or, where that is missing, on a corpus it generates deterministically: no download.
//   nuri-train [options]          train (see --help)
//   nuri-train tokenize IN OUT    text file -> token file (byte tokenizer, llm.c layout)
// Under mpirun, srun or a torchrun-style start the ranks train data-parallel: --batch and --accum
// are per rank, each rank reads its slice of every global batch, and rank 0 prints. With
// --backend cuda each rank trains on its local rank's GPU and the gradients move over NCCL.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "nuri/core/rng.h"
#include "nuri/data/token_file.h"
#include "nuri/dist/communicator.h"
#include "nuri/dist/launch.h"
#include "nuri/model/transformer.h"
#include "nuri/ckpt/checkpoint.h"
#include "nuri/train/preemption.h"
#include "nuri/train/trainer.h"

using namespace nuri;
namespace fs = std::filesystem;

namespace {

const char* kUsage = R"(usage: nuri-train [options]
       nuri-train tokenize IN.txt OUT.bin

data
  --data FILE          text (byte-tokenized), llm.c token file (.bin) or 1-D .npy of tokens;
                       default: Debian's /usr/share/common-licenses texts
  --val FILE           validation data (default: the last 10% of --data)
model
  --model NAME         demo (default, 3.3M parameters), or a preset: gpt2-tiny, gpt2-124M, ...
  --backend NAME       cpu (default), cuda (each rank on its node's GPU of its local rank),
                       cuda:N, or cuda-emu in the emulated build
  --d-model N --n-layer N --n-head N --n-kv-head N --d-ff N --max-seq-len N
training
  --steps N (400)  --batch B (8)  --seq T (128)  --accum K (1)  --lr X (2e-3)
  --warmup N (30)  --min-lr-ratio X (0.1)  --weight-decay X (0.1)  --clip X (1.0)
  --eval-every N (50)  --eval-batches N (16)  --seed S (1337)  --on-nonfinite skip|stop
several processes (started by mpirun or srun: --batch and --accum are per rank)
  --zero 0|1|2         ZeRO stage: 1 shards AdamW's moments over the ranks, 2 the gradients
                       too (default 0)
  --bucket-mb X        gradient bytes per reduction bucket, in MiB (default 8)
  --no-overlap         reduce the gradients after the backward instead of during it
checkpoints (a shared pool: resume anywhere, any number of ranks)
  --ckpt-dir DIR       save checkpoints under DIR and resume from its newest one on start
  --save-every N       also save every N steps (default 0: at the end and when stopped)
  --keep K             keep the newest K checkpoints (default 3)
  --async-save         write the --save-every checkpoints on a background thread (the step
                       waits only for host copies; committed when every rank has written)
  --no-resume          start fresh even if DIR holds a checkpoint
  --signals LIST       signals that mean "preempted": checkpoint at the next step boundary
                       and exit with status 75 (default TERM,USR1)
  --time-limit S       do the same before S seconds of wall clock have passed
output
  --log-every N (10)  --quiet  --sample N (300)  --prompt TEXT  --temperature X (0.8)  --top-k K (40)
  --expect-val-below X   exit with status 3 unless the final validation loss is below X
)";

struct Options {
  std::string data, val, model = "demo", backend = "cpu", prompt = "The ";
  std::map<std::string, int64_t> overrides;
  TrainConfig train;
  ParallelConfig parallel;
  int64_t log_every = 10, sample = 300, top_k = 40;
  float temperature = 0.8f, expect_val_below = 0.f;
  bool quiet = false;
  std::string ckpt_dir, signals = "TERM,USR1";
  int64_t save_every = 0, keep = 3;
  bool resume = true, async_save = false;
  double time_limit = 0;
};

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "nuri-train: %s\n\n%s", msg.c_str(), kUsage);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  o.train.steps = 400;
  o.train.micro_batch = 8;
  o.train.seq_len = 128;
  o.train.lr = 2e-3f;
  o.train.warmup_steps = 30;
  o.train.eval_every = 50;
  o.train.eval_batches = 16;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(a + " needs a value");
      return argv[++i];
    };
    auto num = [&]() -> double {
      const std::string v = value();
      char* end = nullptr;
      const double d = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0') usage_error(a + " expects a number, got '" + v + "'");
      return d;
    };
    auto integer = [&]() -> int64_t {
      const double d = num();
      if (d != std::floor(d)) usage_error(a + " expects a whole number");
      return int64_t(d);
    };
    if (a == "--help" || a == "-h") {
      std::printf("%s", kUsage);
      std::exit(0);
    } else if (a == "--data") o.data = value();
    else if (a == "--val") o.val = value();
    else if (a == "--model") o.model = value();
    else if (a == "--backend") o.backend = value();
    else if (a == "--d-model" || a == "--n-layer" || a == "--n-head" || a == "--n-kv-head" ||
             a == "--d-ff" || a == "--max-seq-len") o.overrides[a] = integer();
    else if (a == "--steps") o.train.steps = integer();
    else if (a == "--batch") o.train.micro_batch = integer();
    else if (a == "--seq") o.train.seq_len = integer();
    else if (a == "--accum") o.train.grad_accum = integer();
    else if (a == "--lr") o.train.lr = float(num());
    else if (a == "--warmup") o.train.warmup_steps = integer();
    else if (a == "--min-lr-ratio") o.train.min_lr_ratio = float(num());
    else if (a == "--weight-decay") o.train.weight_decay = float(num());
    else if (a == "--clip") o.train.grad_clip = float(num());
    else if (a == "--eval-every") o.train.eval_every = integer();
    else if (a == "--eval-batches") o.train.eval_batches = integer();
    else if (a == "--seed") o.train.seed = uint64_t(integer());
    else if (a == "--zero") o.parallel.zero_stage = int(integer());
    else if (a == "--bucket-mb") o.parallel.bucket_bytes = int64_t(num() * 1048576.0);
    else if (a == "--no-overlap") o.parallel.overlap = false;
    else if (a == "--ckpt-dir") o.ckpt_dir = value();
    else if (a == "--save-every") o.save_every = integer();
    else if (a == "--keep") o.keep = integer();
    else if (a == "--no-resume") o.resume = false;
    else if (a == "--async-save") o.async_save = true;
    else if (a == "--signals") o.signals = value();
    else if (a == "--time-limit") o.time_limit = num();
    else if (a == "--on-nonfinite") {
      const std::string v = value();
      if (v != "skip" && v != "stop") usage_error("--on-nonfinite takes skip or stop, not " + v);
      o.train.on_nonfinite = v == "skip" ? NonFinitePolicy::skip : NonFinitePolicy::stop;
    } else if (a == "--log-every") o.log_every = std::max<int64_t>(1, integer());
    else if (a == "--quiet") o.quiet = true;
    else if (a == "--sample") o.sample = integer();
    else if (a == "--prompt") o.prompt = value();
    else if (a == "--temperature") o.temperature = float(num());
    else if (a == "--top-k") o.top_k = integer();
    else if (a == "--expect-val-below") o.expect_val_below = float(num());
    else usage_error("unknown option " + a);
  }
  return o;
}

ModelConfig model_config(const Options& o, int64_t vocab) {
  ModelConfig c;
  if (o.model == "demo") {  // GPT-2 style, byte vocabulary, 3.3M parameters
    c.vocab_size = vocab;
    c.d_model = 256;
    c.n_layer = 4;
    c.n_head = c.n_kv_head = 8;
    c.d_ff = 1024;
    c.max_seq_len = 256;
  } else {
    c = model_preset(o.model);
  }
  for (const auto& [k, v] : o.overrides) {
    if (k == "--d-model") c.d_model = v;
    if (k == "--n-layer") c.n_layer = v;
    if (k == "--n-head") c.n_head = c.n_kv_head = v;
    if (k == "--n-kv-head") c.n_kv_head = v;
    if (k == "--d-ff") c.d_ff = v;
    if (k == "--max-seq-len") c.max_seq_len = v;
  }
  c.validate();
  return c;
}

// The default corpus: every regular file of Debian's license directory, in name order.
std::string default_corpus(std::string* name) {
  const fs::path dir = "/usr/share/common-licenses";
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_regular_file() && !e.is_symlink()) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::string text;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    text += ss.str() + "\n";
  }
  if (text.size() > 100000) {
    *name = dir.string() + " (" + std::to_string(files.size()) + " files)";
    return text;
  }
  // Elsewhere: sentences drawn from a small grammar with a fixed seed.
  static const char* subj[] = {"the student", "a small model", "the cluster", "our lab", "the GPU"};
  static const char* verb[] = {"trains", "waits for", "checkpoints", "measures", "resumes"};
  static const char* obj[] = {"the loss curve", "a preempted job", "every token", "the gradient",
                              "its allocation"};
  static const char* tail[] = {" at night.", " again.", " without a download.", " on two cores.", "."};
  Philox rng(42, stream_id("demo/corpus"));
  text.clear();
  for (uint64_t i = 0; text.size() < 300000; ++i) {
    const u32x4 r = rng.block(i);
    text += std::string(subj[r[0] % 5]) + " " + verb[r[1] % 5] + " " + obj[r[2] % 5] + tail[r[3] % 5] +
            (r[3] % 7 == 0 ? "\n" : " ");
  }
  *name = "generated corpus (no /usr/share/common-licenses here)";
  return text;
}

bool is_token_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char head[6] = {};
  in.read(head, 6);
  int32_t magic = 0;
  std::memcpy(&magic, head, 4);
  return std::memcmp(head, "\x93NUMPY", 6) == 0 || magic == kTokenFileMagic;
}

std::shared_ptr<TokenFile> load(const std::string& path, int64_t* vocab, std::string* what) {
  if (is_token_file(path)) {
    auto f = TokenFile::open(path);
    *vocab = std::max<int64_t>(*vocab, int64_t(f->max_token()) + 1);
    *what = path + " (" + std::to_string(f->size()) + " tokens)";
    return f;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in.good()) throw Error("cannot open data file " + path + ": " + std::strerror(errno), __FILE__, __LINE__);
  std::stringstream ss;
  ss << in.rdbuf();
  *what = path + " (" + std::to_string(ss.str().size()) + " bytes of text, byte tokens)";
  *vocab = std::max<int64_t>(*vocab, ByteTokenizer::kVocabSize);
  return TokenFile::from_tokens(ByteTokenizer().encode(ss.str()), path);
}

// Cross-entropy of `val` under the unigram distribution of `train` (add-one smoothed), in nats.
double unigram_baseline(const TokenFile& train, const TokenFile& val, int64_t vocab) {
  std::vector<double> count(size_t(vocab), 1.0);
  for (int64_t i = 0; i < train.size(); ++i) count[train.at(i)] += 1.0;
  const double total = double(train.size() + vocab);
  double h = 0;
  for (int64_t i = 0; i < val.size(); ++i) h -= std::log(count[val.at(i)] / total);
  return h / double(val.size());
}

std::string duration(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%dm%02ds", int(s) / 60, int(s) % 60);
  return buf;
}

int run(const Options& o) {
  int64_t vocab = 0;
  std::string what;
  std::shared_ptr<TokenFile> data;
  if (o.data.empty()) {
    const std::string text = default_corpus(&what);
    data = TokenFile::from_tokens(ByteTokenizer().encode(text), "default corpus");
    vocab = ByteTokenizer::kVocabSize;
  } else {
    data = load(o.data, &vocab, &what);
  }
  std::shared_ptr<TokenFile> train = data, val;
  if (!o.val.empty()) {
    std::string vwhat;
    val = load(o.val, &vocab, &vwhat);
    what += ", validation " + vwhat;
  } else {
    const int64_t n_val = data->size() / 10;
    train = TokenFile::slice(data, 0, data->size() - n_val);
    val = TokenFile::slice(data, data->size() - n_val, n_val);
    what += ", last 10% held out for validation";
  }
  const ModelConfig cfg = model_config(o, vocab);
  NURI_CHECK(vocab <= cfg.vocab_size, "the data has token ids up to ", vocab - 1, " but model '",
             o.model, "' has vocab_size ", cfg.vocab_size, "; pick a model with a larger vocabulary");
  // Data-parallel ranks when a launcher started several processes; rank 0 alone prints.
  const LaunchInfo launch = detect_launch();
  std::shared_ptr<Communicator> comm;
  if (launch.world_size > 1) {
    comm = make_communicator(launch);
    if (comm->rank() != 0 && !std::freopen("/dev/null", "w", stdout)) {
      std::fprintf(stderr, "nuri-train: rank %d cannot silence its stdout\n", comm->rank());
    }
  }
  // A GPU rank takes its node's device of its local rank; gradients then move over NCCL.
  const std::string backend = backend_for_rank(o.backend, launch);
  Transformer model(cfg, make_backend(backend), o.train.seed);
  Trainer trainer(model, o.train, train, val, comm, o.parallel);
  const double baseline = unigram_baseline(*train, *val, cfg.vocab_size);
  const char* threads = std::getenv("OMP_NUM_THREADS");
  std::printf("data: %s\nmodel: %s (%.2fM parameters) | %s | backend %s\n", what.c_str(),
              o.model.c_str(), double(cfg.num_params()) / 1e6, cfg.summary().c_str(),
              backend.c_str());
  std::printf("training: %lld steps of %lld x %lld tokens (accum %lld), lr %.1e, threads %s\n",
              (long long)o.train.steps, (long long)o.train.micro_batch, (long long)o.train.seq_len,
              (long long)o.train.grad_accum, o.train.lr, threads ? threads : "all");
  if (comm) {
    std::printf("data parallel: %d ranks (%s, gradients over %s), ZeRO stage %d, global batch "
                "%lld sequences, %zu gradient buckets%s\n",
                comm->size(), launcher_name(launch.launcher),
                trainer.data_parallel()->comm().backend_name().c_str(), o.parallel.zero_stage,
                (long long)(o.train.micro_batch * o.train.grad_accum * comm->size()),
                trainer.data_parallel()->buckets().size(),
                o.parallel.overlap ? " overlapped with the backward" : " reduced after the backward");
  }
  std::printf("validation: unigram baseline %.3f nats/token\n", baseline);
  std::fflush(stdout);

  // Checkpoints: resume from the newest one under --ckpt-dir, save every --save-every steps,
  // at the end, and when a preemption signal or the time limit stops the run (exit 75).
  NURI_CHECK(o.keep >= 1 && o.save_every >= 0, "--keep must be >= 1 and --save-every >= 0");
  if (!o.ckpt_dir.empty() && o.resume && !CheckpointReader::find(o.ckpt_dir).empty()) {
    const std::string dir = trainer.load_checkpoint(o.ckpt_dir);
    const DataPosition pos = trainer.data_position();
    std::printf("resumed from %s: step %lld, data epoch %lld, batch %lld\n", dir.c_str(),
                (long long)trainer.steps_done(), (long long)pos.epoch, (long long)pos.batch);
  }
  int64_t saved_at = o.ckpt_dir.empty() ? -1 : trainer.steps_done();
  auto save = [&] {
    const std::string dir = trainer.save_checkpoint(o.ckpt_dir, int(o.keep));
    saved_at = trainer.steps_done();
    std::printf("checkpoint %s committed\n", dir.c_str());
  };
  PreemptionWatch watch(o.ckpt_dir.empty() ? std::vector<int>{} : parse_signals(o.signals),
                        o.ckpt_dir.empty() ? 0.0 : o.time_limit);

  const auto start = std::chrono::steady_clock::now();
  double tok_per_s = 0;
  float val_loss = trainer.evaluate();
  std::printf("step %5lld | val loss %.4f\n", (long long)trainer.steps_done(), val_loss);
  const auto steps_start = std::chrono::steady_clock::now();  // the ETA counts steps only
  const int64_t first = trainer.steps_done();
  for (int64_t s = first; s < o.train.steps; ++s) {
    const StepStats st = trainer.step();
    tok_per_s = tok_per_s == 0 ? st.tokens_per_second : 0.9 * tok_per_s + 0.1 * st.tokens_per_second;
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - steps_start).count();
    if (!o.quiet && (st.step % o.log_every == 0 || st.step == 1 || st.step == o.train.steps)) {
      const double eta = elapsed / double(st.step - first) * double(o.train.steps - st.step);
      std::printf("step %5lld/%lld | loss %.4f | lr %.2e | norm %6.3f | %7.0f tok/s | eta %s%s\n",
                  (long long)st.step, (long long)o.train.steps, st.loss, st.lr, st.grad_norm,
                  tok_per_s, duration(eta).c_str(), st.skipped ? " | SKIPPED (non-finite)" : "");
    }
    if ((o.train.eval_every > 0 && st.step % o.train.eval_every == 0) || st.step == o.train.steps) {
      val_loss = trainer.evaluate();
      std::printf("step %5lld | val loss %.4f (unigram baseline %.3f)\n", (long long)st.step,
                  val_loss, baseline);
    }
    std::fflush(stdout);
    if (o.ckpt_dir.empty()) continue;
    if (!st.checkpoint.empty()) std::printf("checkpoint %s committed\n", st.checkpoint.c_str());
    if (o.save_every > 0 && st.step % o.save_every == 0 && st.step < o.train.steps) {
      if (o.async_save) {
        if (const std::string dir = trainer.finish_checkpoint(); !dir.empty()) {
          std::printf("checkpoint %s committed\n", dir.c_str());  // the previous one, if late
        }
        trainer.save_checkpoint_async(o.ckpt_dir, int(o.keep));
        saved_at = st.step;
      } else {
        save();
      }
    }
    if (st.step < o.train.steps && watch.should_stop(st.step_seconds, comm.get())) {
      if (const std::string dir = trainer.finish_checkpoint(); !dir.empty()) {
        std::printf("checkpoint %s committed\n", dir.c_str());
      }
      if (saved_at != st.step) save();
      std::printf("stopped at step %lld (%s): checkpointed; exit status %d means \"requeue "
                  "me\"\n", (long long)st.step,
                  watch.signal() ? ("signal " + std::to_string(watch.signal())).c_str()
                  : watch.time_limit_reached() ? "time limit" : "another rank was signalled",
                  kPreemptedExitCode);
      std::fflush(stdout);
      return kPreemptedExitCode;
    }
  }
  if (const std::string dir = trainer.finish_checkpoint(); !dir.empty()) {
    std::printf("checkpoint %s committed\n", dir.c_str());
  }
  if (!o.ckpt_dir.empty() && saved_at != trainer.steps_done()) save();
  if (std::getenv("NURI_CKPT_CRASH_AT")) {  // for the fault-injection sweep (tests/ckpt/crash.sh)
    std::printf("checkpoint crash points passed: %lld\n", (long long)ckpt::crash_points_passed());
  }
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("done in %s: val loss %.4f vs unigram baseline %.3f (%.2f nats below); "
              "%lld skipped steps; peak memory %.1f MiB (nuri allocator)\n",
              duration(total).c_str(), val_loss, baseline, baseline - val_loss,
              (long long)trainer.skipped_steps(), double(model.memory().peak_bytes) / (1 << 20));
  if (o.sample > 0 && cfg.vocab_size == ByteTokenizer::kVocabSize) {
    SampleOptions so;
    so.max_new_tokens = o.sample;
    so.temperature = o.temperature;
    so.top_k = o.top_k;
    so.seed = o.train.seed;
    const auto enc = ByteTokenizer().encode(o.prompt);
    const auto out = trainer.generate(std::vector<int32_t>(enc.begin(), enc.end()), so);
    std::printf("---- sample (temperature %.2f, top-k %lld) ----\n%s%s\n----\n", o.temperature,
                (long long)o.top_k, o.prompt.c_str(), ByteTokenizer().decode(out).c_str());
  }
  if (o.expect_val_below > 0 && !(val_loss < o.expect_val_below)) {
    std::fprintf(stderr, "nuri-train: final validation loss %.4f is not below %.4f\n", val_loss,
                 o.expect_val_below);
    return 3;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc >= 2 && std::string(argv[1]) == "tokenize") {
      if (argc != 4) usage_error("tokenize takes IN.txt OUT.bin");
      const int64_t n = text_file_to_tokens(argv[2], argv[3]);
      std::printf("wrote %lld tokens to %s\n", (long long)n, argv[3]);
      return 0;
    }
    return run(parse(argc, argv));
  } catch (const Error& e) {
    std::fprintf(stderr, "nuri-train: %s\n", e.what());
    return 1;
  }
}
