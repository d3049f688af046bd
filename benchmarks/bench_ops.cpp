// The CPU backend's ops at GPT-2 small training shapes (d=768, 12 heads of 64, vocab 50257 padded
// to 50304; B=4, T=64 and T=256), through nuri::make_backend("cpu") and the Backend API.
//
// Default mode (no Python needed): prints one JSON object per measurement
//   - "gemm_op_cpu": GFLOP/s of every linear layer's forward (matmul), dgrad
//     (matmul_backward_input) and wgrad (matmul_backward_weight), next to the machine's ceiling:
//     a 2048³ sgemm through nuri::cpu::sgemm measured in the same run, alternated sample by
//     sample with each row (A B A B); each row's ceiling_gflops is the median of its own ceiling
//     samples, and "sgemm_ceiling_cpu" summarizes all of them;
//   - "op_cpu": attention, layernorm, cross-entropy forward+backward (nuri timings only; ops.py
//     adds the PyTorch peer).
// Single-op mode, used by ops.py:
//   bench_ops --op attention|layernorm|cross_entropy --T 64 [--B 4] [--reps R] [--iters I]
//     prints one JSON object with the config and the nuri median/min/max;
//   ... --serve   prints {"ready": ..., "config": ..., "t_one_s": ...} after set-up and warm-up, then
//     for every stdin line "run I" times I back-to-back calls and prints {"t_s": seconds per call};
//     "quit" or EOF ends. ops.py alternates these samples with the torch op (A B A B ...).
//
// Threads: OMP_NUM_THREADS (default: all cores), for the ops and the BLAS alike.
#include <cstring>
#include <functional>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/gemm.h"
#include "bench_common.h"
#include "nuri/backend/backend.h"
#include "nuri/core/error.h"
#include "nuri/core/tensor.h"

namespace {

using nuri::Backend;
using nuri::DType;
using nuri::Shape;
using nuri::Tensor;

constexpr int64_t kC = 768, kH = 12, kD = 64, kVocab = 50257, kVocabPadded = 50304;
constexpr int64_t kB = 4;

std::mt19937& rng() {
  static std::mt19937 g(20240601);
  return g;
}

Tensor randn(Backend& be, const Shape& s, float scale = 1.f) {
  Tensor t = be.empty(s);
  std::normal_distribution<float> d(0.f, scale);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    float x = d(rng());
    p[i] = x == 0.f ? scale * 1e-3f : x;  // non-zero data
  }
  return t;
}

/// One op configuration: a closure that runs it once (forward + backward, or one GEMM pass).
struct Case {
  std::string bench;  // "op_cpu" or "gemm_op_cpu"
  bench::Json config;
  double flops = 0;  // per call, 0 when not counted
  std::string flops_formula;
  double rows = 0;  // rows (tokens) per call, for rows_per_s
  std::function<void()> run;
};

Case attention_case(Backend& be, int64_t B, int64_t T, int threads) {
  Case c;
  c.bench = "op_cpu";
  c.config.kv("op", "attention_fwd_bwd").kv("B", B).kv("H", kH).kv("T", T).kv("D", kD)
      .kv("causal", true).kv("layout", "q,k,v,out [B,T,H,D] contiguous").kv("threads", threads);
  const double fwd = 4.0 * double(B * kH) * double(T) * double(T) * double(kD) / 2.0;
  c.flops = fwd * 3.5;
  c.flops_formula = "fwd = 4*B*H*T^2*D / 2 (causal), bwd = 2.5*fwd, total = 3.5*fwd";
  c.rows = double(B * T);
  Tensor q = randn(be, {B, T, kH, kD}), k = randn(be, {B, T, kH, kD}), v = randn(be, {B, T, kH, kD});
  Tensor dout = randn(be, {B, T, kH, kD});
  Tensor out = be.empty({B, T, kH, kD}), lse = be.empty({B, kH, T});
  Tensor dq = be.empty({B, T, kH, kD}), dk = be.empty({B, T, kH, kD}), dv = be.empty({B, T, kH, kD});
  Backend* b = &be;
  c.run = [=] {
    nuri::AttentionOptions opt;
    opt.causal = true;
    b->attention(q, k, v, out, lse, opt);
    b->attention_backward(q, k, v, out, lse, dout, dq, dk, dv, opt);
    b->synchronize();
  };
  return c;
}

Case layernorm_case(Backend& be, int64_t B, int64_t T, int threads) {
  Case c;
  c.bench = "op_cpu";
  const int64_t M = B * T;
  c.config.kv("op", "layernorm_fwd_bwd").kv("B", B).kv("T", T).kv("M", M).kv("C", kC)
      .kv("residual", false).kv("threads", threads);
  c.rows = double(M);
  Tensor x = randn(be, {M, kC}), w = randn(be, {kC}, 0.1f), bias = randn(be, {kC}, 0.1f);
  Tensor dy = randn(be, {M, kC});
  Tensor y = be.empty({M, kC}), mean = be.empty({M}), rstd = be.empty({M});
  Tensor dx = be.empty({M, kC}), dw = be.empty({kC}), db = be.empty({kC});
  Backend* b = &be;
  c.run = [=] {
    b->layernorm(x, Tensor(), w, bias, 1e-5f, Tensor(), y, mean, rstd);
    b->layernorm_backward(dy, x, w, mean, rstd, Tensor(), dx, dw, db, false);
    b->synchronize();
  };
  return c;
}

Case cross_entropy_case(Backend& be, int64_t B, int64_t T, int threads) {
  Case c;
  c.bench = "op_cpu";
  const int64_t N = B * T;
  c.config.kv("op", "cross_entropy_fwd_bwd").kv("B", B).kv("T", T).kv("N", N)
      .kv("V", kVocab).kv("V_padded", kVocabPadded).kv("threads", threads);
  c.rows = double(N);
  Tensor logits = randn(be, {N, kVocabPadded});
  Tensor targets = be.empty({N}, DType::i32);
  std::uniform_int_distribution<int32_t> d(0, int32_t(kVocab - 1));
  for (int64_t i = 0; i < N; ++i) targets.data<int32_t>()[i] = d(rng());
  Tensor losses = be.empty({N}), lse = be.empty({N}), loss = be.empty({1});
  Tensor dlogits = be.empty({N, kVocabPadded});
  Backend* b = &be;
  c.run = [=] {
    b->cross_entropy(logits, targets, kVocab, -100, losses, lse, loss);
    b->cross_entropy_backward(logits, targets, lse, kVocab, -100, 1.f, dlogits);
    b->synchronize();
  };
  return c;
}

/// forward y = x·Wᵀ + b, dgrad dx = dy·W, wgrad dW = dyᵀ·x of one linear layer [N_out, K_in].
std::vector<Case> linear_cases(Backend& be, const std::string& layer, int64_t B, int64_t T,
                               int64_t n_out, int64_t k_in, bool has_bias, int threads) {
  const int64_t M = B * T;
  Tensor x = randn(be, {M, k_in}), w = randn(be, {n_out, k_in}, 0.02f);
  Tensor bias = has_bias ? randn(be, {n_out}, 0.02f) : Tensor();
  Tensor y = be.empty({M, n_out}), dy = randn(be, {M, n_out});
  Tensor dx = be.empty({M, k_in}), dw = be.empty({n_out, k_in});
  Backend* b = &be;
  std::vector<Case> out;
  struct Pass {
    const char* name;
    int64_t m, n, k;
    const char* layout;
  };
  const Pass passes[] = {{"fwd", M, n_out, k_in, "NT"},
                         {"dgrad", M, k_in, n_out, "NN"},
                         {"wgrad", n_out, k_in, M, "TN"}};
  for (const Pass& p : passes) {
    Case c;
    c.bench = "gemm_op_cpu";
    c.config.kv("model", "gpt2-124M").kv("layer", layer).kv("pass", p.name).kv("B", B).kv("T", T)
        .kv("M", p.m).kv("N", p.n).kv("K", p.k).kv("layout", p.layout)
        .kv("bias", has_bias && std::string(p.name) == "fwd").kv("threads", threads)
        .kv("library", nuri::cpu::gemm_library());
    c.flops = 2.0 * double(p.m) * double(p.n) * double(p.k);
    c.flops_formula = "2*M*N*K";
    c.rows = double(M);
    const std::string pass = p.name;
    if (pass == "fwd")
      c.run = [=] { b->matmul(x, w, bias, y, nuri::Activation::none, Tensor(), nuri::Tensor()); };
    else if (pass == "dgrad")
      c.run = [=] { b->matmul_backward_input(dy, w, dx, false, Tensor()); };
    else
      c.run = [=] { b->matmul_backward_weight(dy, x, dw, false); };
    out.push_back(std::move(c));
  }
  return out;
}

struct Measured {
  bench::Stats stats;
  int iters = 1;
};

/// Warm-up (2 calls), then `reps` samples of `iters` calls each (iters sized to min_sample_s).
Measured measure(const std::function<void()>& f, int reps, double min_sample_s, int iters = 0) {
  f();
  double t1 = bench::time_per_call(f, 1);
  Measured m;
  m.iters = iters > 0 ? iters : bench::iters_for(t1, min_sample_s);
  std::vector<double> s;
  for (int r = 0; r < reps; ++r) s.push_back(bench::time_per_call(f, m.iters));
  m.stats = bench::summarize(s);
  return m;
}

bench::Json nuri_json(const Case& c, const Measured& m) {
  bench::Json j;
  j.stats(m.stats);
  if (c.flops > 0) j.kv("gflops", c.flops / m.stats.median_s * 1e-9);
  if (c.rows > 0) j.kv("rows_per_s", c.rows / m.stats.median_s);
  j.kv("calls_per_sample", m.iters);
  return j;
}

Case make_op_case(Backend& be, const std::string& op, int64_t B, int64_t T, int threads) {
  if (op == "attention") return attention_case(be, B, T, threads);
  if (op == "layernorm") return layernorm_case(be, B, T, threads);
  if (op == "cross_entropy") return cross_entropy_case(be, B, T, threads);
  throw std::runtime_error("unknown --op '" + op + "' (attention, layernorm, cross_entropy)");
}

void usage() {
  std::fprintf(stderr,
               "usage: bench_ops [--quick] [--reps N] [--json FILE]\n"
               "       bench_ops --op attention|layernorm|cross_entropy [--B 4] [--T 64]\n"
               "                 [--reps N] [--iters I] [--serve]\n"
               "threads: OMP_NUM_THREADS (default: all cores)\n");
}

/// --serve: the nuri side of ops.py's alternation.
int serve(Case& c) {
  c.run();
  const double t1 = bench::time_per_call(c.run, 1);
  bench::Json ready;
  ready.kv("ready", true).kv("bench", c.bench).kv("config", c.config).kv("t_one_s", t1);
  if (c.flops > 0) ready.kv("flops", c.flops).kv("flops_formula", c.flops_formula);
  std::printf("%s\n", ready.str().c_str());
  std::fflush(stdout);
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.rfind("run", 0) == 0) {
      int iters = std::max(1, std::atoi(line.c_str() + 3));
      double t = bench::time_per_call(c.run, iters);
      std::printf("%s\n", bench::Json().kv("t_s", t).kv("iters", iters).str().c_str());
      std::fflush(stdout);
    } else if (line == "quit") {
      break;
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, serve_mode = false;
  int reps = -1, iters = 0;
  double min_sample_s = -1;
  int64_t B = kB, T = 64;
  std::string json_path, op;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        usage();
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--quick") quick = true;
    else if (a == "--serve") serve_mode = true;
    else if (a == "--reps") reps = std::atoi(next());
    else if (a == "--iters") iters = std::atoi(next());
    else if (a == "--min-sample-s") min_sample_s = std::atof(next());
    else if (a == "--json") json_path = next();
    else if (a == "--op") op = next();
    else if (a == "--B") B = std::atoll(next());
    else if (a == "--T") T = std::atoll(next());
    else {
      usage();
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  if (reps <= 0) reps = quick ? 3 : 7;
  if (min_sample_s < 0) min_sample_s = quick ? 0.02 : 0.1;
  const int threads = bench::bench_threads();

  try {
    auto be = nuri::make_backend("cpu");
    bench::Output out(json_path);

    if (!op.empty()) {  // single-op mode
      Case c = make_op_case(*be, op, B, T, threads);
      if (serve_mode) return serve(c);
      Measured m = measure(c.run, reps, min_sample_s, iters);
      bench::Json row;
      row.kv("bench", c.bench).kv("config", c.config).kv("nuri", nuri_json(c, m));
      if (c.flops > 0) row.kv("flops_formula", c.flops_formula);
      out.emit(row);
      return 0;
    }

    // ---- ceiling: 2048³ sgemm through nuri::cpu::sgemm, alternated with every GEMM row -------
    const int64_t n = 2048;
    std::vector<float> ca(size_t(n * n)), cb(size_t(n * n)), cc(size_t(n * n));
    {
      std::uniform_real_distribution<float> d(-1.f, 1.f);
      for (auto& x : ca) x = d(rng());
      for (auto& x : cb) x = d(rng());
    }
    const double ceil_flops = 2.0 * double(n) * double(n) * double(n);
    std::function<void()> ceiling_call = [&] {
      nuri::cpu::sgemm(false, false, n, n, n, 1.f, ca.data(), n, cb.data(), n, 0.f, cc.data(), n);
    };
    ceiling_call();  // warm-up
    const int ceil_iters = bench::iters_for(bench::time_per_call(ceiling_call, 1), min_sample_s);

    struct Layer {
      const char* name;
      int64_t n_out, k_in;
      bool bias;
    };
    const Layer layers[] = {{"attn.c_attn", 3 * kC, kC, true},
                            {"attn.c_proj", kC, kC, true},
                            {"mlp.c_fc", 4 * kC, kC, true},
                            {"mlp.c_proj", kC, 4 * kC, true},
                            {"lm_head", kVocabPadded, kC, false}};
    std::vector<int64_t> Ts = quick ? std::vector<int64_t>{64} : std::vector<int64_t>{64, 256};
    std::vector<double> all_ceil, fractions;
    for (int64_t t : Ts) {
      for (const Layer& l : layers) {
        if (quick && std::string(l.name) == "lm_head") continue;
        for (Case& c : linear_cases(*be, l.name, kB, t, l.n_out, l.k_in, l.bias, threads)) {
          // A B A B: one ceiling sample, one sample of this row, reps times (after a warm-up).
          c.run();
          Measured m;
          m.iters = bench::iters_for(bench::time_per_call(c.run, 1), min_sample_s);
          std::vector<double> sc, sr;
          for (int r = 0; r < reps; ++r) {
            sc.push_back(bench::time_per_call(ceiling_call, ceil_iters));
            sr.push_back(bench::time_per_call(c.run, m.iters));
          }
          c.run = nullptr;  // frees this layer's tensors
          all_ceil.insert(all_ceil.end(), sc.begin(), sc.end());
          m.stats = bench::summarize(sr);
          const double ceiling = ceil_flops / bench::summarize(sc).median_s * 1e-9;
          const double g = c.flops / m.stats.median_s * 1e-9;
          fractions.push_back(g / ceiling);
          bench::Json row;
          row.kv("bench", c.bench).kv("config", c.config).kv("nuri", nuri_json(c, m));
          row.kv("ceiling_gflops", ceiling).kv("ceiling_fraction", g / ceiling);
          out.emit(row);
        }
      }
    }
    const bench::Stats cs = bench::summarize(all_ceil);
    const double ceiling = ceil_flops / cs.median_s * 1e-9;
    out.emit(bench::Json()
                 .kv("bench", "sgemm_ceiling_cpu")
                 .kv("config", bench::Json().kv("M", n).kv("N", n).kv("K", n).kv("layout", "NN")
                                   .kv("threads", threads).kv("library", nuri::cpu::gemm_library())
                                   .kv("samples", int64_t(all_ceil.size())))
                 .kv("nuri", bench::Json().stats(cs).kv("gflops", ceiling)));
    out.emit(bench::Json().kv("bench", "gemm_op_cpu_summary")
                 .kv("config", bench::Json().kv("threads", threads).kv("rows", int64_t(fractions.size())))
                 .kv("ceiling_gflops", ceiling)
                 .kv("geomean_ceiling_fraction", bench::geomean(fractions)));

    // ---- attention, layernorm, cross-entropy (nuri only; ops.py adds the PyTorch peer) ---------
    for (const char* o : {"attention", "layernorm", "cross_entropy"}) {
      for (int64_t t : Ts) {
        Case c = make_op_case(*be, o, kB, t, threads);
        bench::Json row;
        row.kv("bench", c.bench).kv("config", c.config);
        try {
          Measured m = measure(c.run, reps, min_sample_s);
          row.kv("nuri", nuri_json(c, m));
          if (c.flops > 0) row.kv("flops_formula", c.flops_formula);
        } catch (const std::exception& e) {
          row.kv("error", std::string(e.what()));
        }
        out.emit(row);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_ops: %s\n", e.what());
    return 1;
  }
  return 0;
}
