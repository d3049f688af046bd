// Activation recomputation (issue #21): the training step with recompute = selective and full
// against none on the same model and batch, alternated (none, selective, full, none, ...) after
// a warm-up, median of --reps with min and max; the ratio of each step time over none's, the
// activation bytes each keeps (the allocator's peak over the weights), and the FLOP rates:
//   MFU-style (model FLOPs)     6·N·tokens + 12·L·T·d·tokens (N without the position table;
//                               causal attention not halved), over the step time
//   HFU-style (hardware FLOPs)  the same plus what is computed again: full runs every block's
//                               forward twice (+ (2·N_blocks + 4·L·T·d)·tokens); selective's
//                               recomputed norms and SwiGLU are elementwise (counted as 0)
// both as GFLOP/s and as fractions of a 2048³ sgemm measured in the same run (the CPU's
// ceiling; on a GPU the utilization would be against the device's peak).
//   bench_recompute [--model NAME] [--B 4] [--T 256] [--reps 5] [--backend cpu] [--json FILE]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "backend/cpu/gemm.h"
#include "nuri/train/trainer.h"

using namespace nuri;
using Clock = std::chrono::steady_clock;

namespace {

double seconds(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double sgemm_gflops() {
  const int n = 2048;
  std::vector<float> a(size_t(n) * n, 0.5f), b(size_t(n) * n, 0.25f), c(size_t(n) * n);
  cpu::sgemm(false, false, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);  // warm-up
  std::vector<double> t;
  for (int r = 0; r < 5; ++r) {
    const auto t0 = Clock::now();
    cpu::sgemm(false, false, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
    t.push_back(seconds(t0));
  }
  std::sort(t.begin(), t.end());
  return 2.0 * n * n * double(n) / t[2] / 1e9;  // the median of 5
}

struct Contender {
  Recompute mode;
  std::unique_ptr<Transformer> model;
  std::unique_ptr<Trainer> trainer;
  std::vector<double> times;
  int64_t activation_bytes = 0;
  float first_loss = 0;
};

}  // namespace

int main(int argc, char** argv) {
  std::string model = "gpt2-tiny", backend = "cpu", json;
  int64_t b = 4, t = 64, reps = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--model") model = next();
    else if (a == "--B") b = std::stoll(next());
    else if (a == "--T") t = std::stoll(next());
    else if (a == "--reps") reps = std::stoll(next());
    else if (a == "--backend") backend = next();
    else if (a == "--json") json = next();
    else {
      std::fprintf(stderr, "usage: bench_recompute [--model NAME] [--B N] [--T N] [--reps N] "
                           "[--backend NAME] [--json FILE]\n");
      return 2;
    }
  }
  try {
    const ModelConfig cfg = model_preset(model);
    std::vector<uint32_t> tokens(size_t(b * (t + 1) * 64));
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = uint32_t((i * 2654435761u) % 257);
    auto data = TokenFile::from_tokens(tokens, "pattern");
    std::vector<Contender> cs;
    for (Recompute mode : {Recompute::none, Recompute::selective, Recompute::full}) {
      Contender c;
      c.mode = mode;
      c.model = std::make_unique<Transformer>(cfg, make_backend(backend), 1);
      TrainConfig tc;
      tc.steps = 1000000;
      tc.micro_batch = b;
      tc.seq_len = t;
      tc.recompute = mode;
      c.trainer = std::make_unique<Trainer>(*c.model, tc, data, nullptr);
      const int64_t held = c.model->memory().current_bytes;  // weights, gradients, AdamW
      c.first_loss = c.trainer->step().loss;  // warm-up; plans the activations
      c.activation_bytes = c.model->memory().peak_bytes - held;
      cs.push_back(std::move(c));
    }
    for (int64_t r = 0; r < reps; ++r) {
      for (auto& c : cs) c.times.push_back(c.trainer->step().step_seconds);
    }
    const double ceiling = sgemm_gflops();
    // FLOPs per token: matmuls 6·N (N without the learned position table, which is a lookup),
    // attention 12·L·T·d; a block's forward again is a third of the block's part.
    const double n = double(cfg.num_params()) -
                     (cfg.position == PositionKind::learned ? double(cfg.max_seq_len * cfg.d_model) : 0);
    const double n_blocks = n - double(cfg.vocab_size * cfg.d_model) -
                            (cfg.tied_embeddings ? 0 : double(cfg.vocab_size * cfg.d_model));
    const double attn = 12.0 * double(cfg.n_layer) * double(t) * double(cfg.d_model);
    const double model_flops = (6 * n + attn) * double(b * t);
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    const double base = median(cs[0].times);
    std::string lines;
    for (const auto& c : cs) {
      const double med = median(c.times);
      const double hw = model_flops + (c.mode == Recompute::full
                                           ? (2 * n_blocks + attn / 3) * double(b * t)
                                           : 0.0);
      char buf[1024];
      std::snprintf(
          buf, sizeof buf,
          "{\"bench\": \"recompute_step\", \"config\": {\"model\": \"%s\", \"B\": %lld, \"T\": "
          "%lld, \"backend\": \"%s\", \"recompute\": \"%s\"}, \"median_s\": %.4f, \"min_s\": "
          "%.4f, \"max_s\": %.4f, \"ratio_to_none\": %.3f, \"activation_bytes\": %lld, "
          "\"model_gflops\": %.2f, \"hardware_gflops\": %.2f, \"ceiling_gflops\": %.2f, "
          "\"mfu_of_ceiling\": %.3f, \"hfu_of_ceiling\": %.3f, \"first_loss\": %.6f}\n",
          model.c_str(), (long long)b, (long long)t, backend.c_str(), recompute_name(c.mode), med,
          *std::min_element(c.times.begin(), c.times.end()),
          *std::max_element(c.times.begin(), c.times.end()), med / base,
          (long long)c.activation_bytes, model_flops / med / 1e9, hw / med / 1e9, ceiling,
          model_flops / med / 1e9 / ceiling, hw / med / 1e9 / ceiling, c.first_loss);
      lines += buf;
    }
    std::fputs(lines.c_str(), stdout);
    if (!json.empty()) std::ofstream(json) << lines;
    for (const auto& c : cs) {
      if (c.first_loss != cs[0].first_loss) {
        std::fprintf(stderr, "bench_recompute: %s's first loss differs from none's\n",
                     recompute_name(c.mode));
        return 1;
      }
    }
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_recompute: %s\n", e.what());
    return 1;
  }
}
