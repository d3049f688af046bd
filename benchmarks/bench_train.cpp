// The nuri side of benchmarks/train_throughput.py: holds one model and a fixed batch, and runs
// training steps on request so the driver can alternate nuri and PyTorch steps in one run.
//   bench_train --model gpt2-124M --B 4 --T 64 --dump DIR
// writes DIR/params.bin (the initial weights, f32, layout order), DIR/layout.json and
// DIR/tokens.bin ([B, T+1] i32), prints "ready", then answers lines on stdin:
//   step        -> one training step (forward, backward, clip to 1.0, AdamW); prints
//                  {"seconds": s, "loss": l, "peak_bytes": b, "peak_rss_bytes": r}
//   ceiling     -> {"gflops": g}: a 2048³ sgemm through the CPU backend's BLAS
//   quit
// A step is what nuri's Trainer does, on the same batch every time.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "backend/cpu/gemm.h"
#include "nuri/core/rng.h"
#include "nuri/model/transformer.h"
#include "nuri/train/optimizer.h"

using namespace nuri;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  std::string preset = "gpt2-124M", dir;
  int64_t b = 4, t = 64;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--model") preset = argv[i + 1];
    else if (a == "--B") b = std::stoll(argv[i + 1]);
    else if (a == "--T") t = std::stoll(argv[i + 1]);
    else if (a == "--dump") dir = argv[i + 1];
  }
  if (dir.empty()) {
    std::cerr << "usage: bench_train --model PRESET --B B --T T --dump DIR\n";
    return 2;
  }
  try {
    const ModelConfig cfg = model_preset(preset);
    Transformer model(cfg, make_backend("cpu"), 1337);
    std::ofstream(dir + "/params.bin", std::ios::binary)
        .write(static_cast<const char*>(model.param_buffer().raw()),
               std::streamsize(model.param_buffer().nbytes()));
    std::ofstream layout(dir + "/layout.json");
    layout << "{\"summary\": \"" << cfg.summary() << "\", \"num_params\": " << cfg.num_params()
           << ", \"norm_eps\": " << cfg.norm_eps << ", \"params\": [";
    int64_t offset = 0;
    for (size_t i = 0; i < model.parameters().size(); ++i) {
      const auto& p = model.parameters()[i];
      layout << (i ? ", " : "") << "{\"name\": \"" << p.name << "\", \"offset\": " << offset
             << ", \"shape\": [";
      for (int64_t d = 0; d < p.tensor.dim(); ++d) layout << (d ? ", " : "") << p.tensor.size(d);
      layout << "]}";
      offset += p.tensor.numel();
    }
    layout << "]}\n";
    layout.close();
    std::vector<int32_t> window(size_t(b * (t + 1)));
    Philox rng(2024, stream_id("bench/batch"));
    for (size_t i = 0; i < window.size(); ++i) window[i] = int32_t(rng.bits(i) % uint32_t(cfg.vocab_size));
    std::ofstream(dir + "/tokens.bin", std::ios::binary)
        .write(reinterpret_cast<const char*>(window.data()), std::streamsize(window.size() * 4));
    Tensor x = Tensor::empty({b, t}, DType::i32), y = Tensor::empty({b, t}, DType::i32);
    for (int64_t r = 0; r < b; ++r) {
      for (int64_t j = 0; j < t; ++j) {
        x.data<int32_t>()[r * t + j] = window[size_t(r * (t + 1) + j)];
        y.data<int32_t>()[r * t + j] = window[size_t(r * (t + 1) + j + 1)];
      }
    }
    AdamWParams hp;
    hp.weight_decay = 0.1f;
    AdamW opt(model, hp);
    std::vector<Tensor> grads;
    for (const auto& g : model.gradients()) grads.push_back(g.tensor);
    Tensor norm = Tensor::empty({1}, DType::f32);
    std::cout << "ready" << std::endl;
    std::string cmd;
    while (std::getline(std::cin, cmd)) {
      if (cmd == "step") {
        const auto t0 = Clock::now();
        model.zero_grad();
        const float loss = model.forward(x, y);
        model.backward(1.f);
        model.backend().global_norm(grads, norm);
        opt.step(3e-4f, clip_coefficient(norm.data<float>()[0], 1.f));
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        rusage ru{};
        getrusage(RUSAGE_SELF, &ru);
        std::cout << "{\"seconds\": " << s << ", \"loss\": " << loss
                  << ", \"peak_bytes\": " << model.memory().peak_bytes
                  << ", \"peak_rss_bytes\": " << int64_t(ru.ru_maxrss) * 1024 << "}" << std::endl;
      } else if (cmd == "ceiling") {
        const int64_t n = 2048;
        std::vector<float> a(size_t(n * n), 0.5f), bm(size_t(n * n), 0.25f), c(size_t(n * n));
        cpu::sgemm(false, false, n, n, n, 1.f, a.data(), n, bm.data(), n, 0.f, c.data(), n);
        double best = 0;
        for (int rep = 0; rep < 5; ++rep) {
          const auto t0 = Clock::now();
          cpu::sgemm(false, false, n, n, n, 1.f, a.data(), n, bm.data(), n, 0.f, c.data(), n);
          best = std::max(best, 2.0 * n * n * n / std::chrono::duration<double>(Clock::now() - t0).count());
        }
        std::cout << "{\"gflops\": " << best / 1e9 << "}" << std::endl;
      } else if (cmd == "quit") {
        break;
      }
    }
  } catch (const Error& e) {
    std::cerr << "bench_train: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
