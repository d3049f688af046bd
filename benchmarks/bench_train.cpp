// The nuri side of benchmarks/train_throughput.py: holds one model and a fixed batch, and runs
// training steps on request so the driver can alternate nuri and PyTorch steps in one run.
//   bench_train --model gpt2-124M --B 4 --T 64 --dump DIR [--backend cpu|cuda]
// writes DIR/params.bin (the initial f32 master weights, layout order), DIR/layout.json and
// DIR/tokens.bin ([B, T+1] i32), prints "ready", then answers lines on stdin:
//   step        -> one training step (forward, backward, clip to 1.0, AdamW) as Trainer runs it
//                  (batch uploaded without a wait; loss and norm read back together); prints
//                  {"seconds": s, "loss": l, "peak_bytes": b, "peak_rss_bytes": r}
//                  (cuda: the step ends with Backend::synchronize, peak_bytes is device memory
//                  from the model's allocator, and "reserved_bytes" follows it)
//   phases      -> one step with Backend::synchronize after each phase, and the seconds of each:
//                  {"zero_grad_s", "forward_s", "backward_s", "grad_norm_s", "optimizer_s"}
//   ceiling     -> {"gflops": g}: a 2048³ sgemm through the CPU backend's BLAS
//   peak        -> {"device": name, "sm": "sm_XY", "peak_bf16_tflops": p, "source": "..."}: the
//                  dense bf16 tensor-core peak of CUDA device 0 from a table (null when the
//                  device is not in it, or there is none), the denominator of MFU
//   quit
// A step is what nuri's Trainer does, on the same batch every time. --backend cuda exits 77
// when the build has no CUDA device to run on.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <string>
#include <vector>

#include "nuri/backend/backend.h"

#include "backend/cpu/gemm.h"
#include "nuri/core/rng.h"
#include "nuri/model/transformer.h"
#include "nuri/train/optimizer.h"
#include "nuri/train/plan.h"

using namespace nuri;
using Clock = std::chrono::steady_clock;

namespace {

// JSON string literal (device names are plain ASCII; quotes and backslashes escaped).
std::string json_str(const std::string& v) {
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// Dense bf16 tensor-core peaks (f32 accumulate, no sparsity, boost clock), in TFLOP/s, from
// vendor datasheets: a device matches an entry by compute capability and name (contains `name`,
// not `unless`). Unknown devices answer null, and the driver's MFU is null then: no guessed peak.
struct PeakEntry {
  int cc;
  const char* name;
  const char* unless;
  double tflops;
  const char* source;
};
constexpr PeakEntry kPeaks[] = {
    {90, "H200", "GH200", 989, "NVIDIA H200 datasheet: bf16 1979 TFLOP/s with sparsity, 989 dense"},
    {90, "H100 PCIe", nullptr, 756,
     "NVIDIA H100 datasheet, PCIe: bf16 1513 TFLOP/s with sparsity, 756 dense"},
    {90, "H100", "NVL", 989,
     "NVIDIA H100 datasheet, SXM: bf16 1979 TFLOP/s with sparsity, 989 dense"},
    {80, "A100", nullptr, 312, "NVIDIA A100 datasheet: bf16 312 TFLOP/s dense"},
    {89, "RTX 4090", nullptr, 165.2,
     "NVIDIA Ada (AD102) whitepaper's RTX 4090 figure as third-party spec tables quote it: bf16 "
     "with f32 accumulate 165.2 dense (330.4 sparse); not checked against the whitepaper itself"},
    {86, "RTX 3090", "Ti", 71,
     "NVIDIA Ampere GA102 whitepaper, RTX 3090: bf16 with f32 accumulate 71 dense (142 sparse)"},
};

// The `peak` command: CUDA device 0, its sm_XY and its entry of kPeaks.
void print_peak() {
  const auto devs = cuda_devices();
  if (devs.empty()) {
    std::cout << "{\"device\": null, \"sm\": null, \"peak_bf16_tflops\": null, "
                 "\"source\": \"no CUDA device in this build or machine\"}"
              << std::endl;
    return;
  }
  const CudaDeviceInfo& d = devs[0];
  const int cc = d.major * 10 + d.minor;
  auto has = [&](const char* s) { return s && d.name.find(s) != std::string::npos; };
  const PeakEntry* hit = nullptr;
  for (const auto& e : kPeaks) {
    if (e.cc == cc && has(e.name) && !has(e.unless)) {
      hit = &e;
      break;
    }
  }
  std::cout << "{\"device\": " << json_str(d.name) << ", \"sm\": \"sm_" << cc
            << "\", \"peak_bf16_tflops\": ";
  if (hit) {
    std::cout << hit->tflops << ", \"source\": " << json_str(hit->source) << "}" << std::endl;
  } else {
    std::cout << "null, \"source\": "
              << json_str("not in bench_train's table (sm_" + std::to_string(cc) + ", " + d.name +
                          ")")
              << "}" << std::endl;
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string preset = "gpt2-124M", dir, backend_name = "cpu";
  int64_t b = 4, t = 64;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--model") preset = argv[i + 1];
    else if (a == "--B") b = std::stoll(argv[i + 1]);
    else if (a == "--T") t = std::stoll(argv[i + 1]);
    else if (a == "--dump") dir = argv[i + 1];
    else if (a == "--backend") backend_name = argv[i + 1];
  }
  if (dir.empty() || (backend_name != "cpu" && backend_name != "cuda")) {
    std::cerr << "usage: bench_train --model PRESET --B B --T T --dump DIR [--backend cpu|cuda]\n";
    return 2;
  }
  const bool cuda = backend_name == "cuda";
  if (cuda) {
    const auto backends = available_backends();
    if (std::find(backends.begin(), backends.end(), "cuda") == backends.end() ||
        cuda_devices().empty()) {
      std::cerr << "bench_train: no CUDA device (or a build without the CUDA backend): skipped\n";
      return 77;
    }
  }
  try {
    const ModelConfig cfg = model_preset(preset);
    Transformer model(cfg, make_backend(backend_name), 1337);
    Tensor master = model.param_buffer();  // f32 master weights, copied to the host on cuda
    if (!master.device().is_cpu()) {
      master = Tensor::empty(model.param_buffer().shape(), DType::f32);
      model.backend().copy(model.param_buffer(), master);
      model.backend().synchronize();
    }
    std::ofstream(dir + "/params.bin", std::ios::binary)
        .write(static_cast<const char*>(master.raw()), std::streamsize(master.nbytes()));
    std::ofstream layout(dir + "/layout.json");
    layout << "{\"summary\": \"" << cfg.summary() << "\", \"num_params\": " << cfg.num_params()
           << ", \"norm_eps\": " << cfg.norm_eps << ", \"rope_theta\": " << cfg.rope_theta
           << ", \"params\": [";
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
    // The loss and the gradient norm, as Trainer keeps them: [loss, norm] in the model's
    // memory, read back with one copy before the update (on the CPU the host tensor itself).
    Tensor stats = Tensor::empty({2}, DType::f32);
    Tensor stats_dev = cuda ? model.backend().empty({2}) : stats;
    std::cout << "ready" << std::endl;
    std::string cmd;
    while (std::getline(std::cin, cmd)) {
      if (cmd == "phases") {
        // One step with the device drained after each phase: where the time of a step goes.
        Backend& be = model.backend();
        auto t = Clock::now();
        auto lap = [&] {
          be.synchronize();
          const auto now = Clock::now();
          const double s = std::chrono::duration<double>(now - t).count();
          t = now;
          return s;
        };
        model.zero_grad();
        const double zero_s = lap();
        be.copy(model.forward_loss(x, y), stats_dev.slice(0, 0, 1));
        const double fwd_s = lap();
        model.backward(1.f);
        const double bwd_s = lap();
        be.global_norm(grads, stats_dev.slice(0, 1, 2));
        if (cuda) be.copy(stats_dev, stats);
        const double norm_s = lap();
        opt.step(3e-4f, clip_coefficient(stats.data<float>()[1], 1.f));
        const double opt_s = lap();
        std::cout << "{\"zero_grad_s\": " << zero_s << ", \"forward_s\": " << fwd_s
                  << ", \"backward_s\": " << bwd_s << ", \"grad_norm_s\": " << norm_s
                  << ", \"optimizer_s\": " << opt_s << "}" << std::endl;
      } else if (cmd == "step") {
        const auto t0 = Clock::now();
        Backend& be = model.backend();
        model.zero_grad();
        be.copy(model.forward_loss(x, y), stats_dev.slice(0, 0, 1));
        model.backward(1.f);
        be.global_norm(grads, stats_dev.slice(0, 1, 2));
        if (cuda) be.copy(stats_dev, stats);  // the step's one wait before the update
        opt.step(3e-4f, clip_coefficient(stats.data<float>()[1], 1.f));
        be.synchronize();
        const float loss = stats.data<float>()[0];
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        rusage ru{};
        getrusage(RUSAGE_SELF, &ru);
        const AllocatorStats mem = model.memory();
        std::cout << "{\"seconds\": " << s << ", \"loss\": " << loss
                  << ", \"peak_bytes\": " << mem.peak_bytes;
        if (cuda) std::cout << ", \"reserved_bytes\": " << mem.reserved_bytes;
        std::cout << ", \"peak_rss_bytes\": " << int64_t(ru.ru_maxrss) * 1024 << "}" << std::endl;
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
      } else if (cmd == "flops") {
        // MFU's FLOPs of a trained token, as the planner and the ledger count them.
        std::cout << "{\"model_flops_per_token\": " << std::setprecision(17)
                  << model_flops_per_token(cfg, t) << std::setprecision(6) << "}" << std::endl;
      } else if (cmd == "peak") {
        print_peak();
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
