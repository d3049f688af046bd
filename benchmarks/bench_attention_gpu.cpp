// The CUDA backend's fused attention (issue #6) through nuri::make_backend("cuda") and the Backend
// API, at a fixed 16k tokens per call (B·T = 16384) and H·D = 2048: T ∈ {1024, 2048, 4096, 8192},
// head dim ∈ {64, 128}, causal and not, bf16 (or f16). q, k, v, out [B, T, H, D] contiguous.
//
// The design choice to know: every configuration has the same element count (B·T·H·D = 16384 ·
// 2048), so one set of device buffers, filled once with random values, is viewed with each
// configuration's shape. A process sets up once and then switches configurations instantly,
// which is what lets attention_gpu.py alternate nuri and PyTorch sample by sample.
//
// Passes: "fwd" (attention: out and lse), "fwd_bwd" (attention + attention_backward with
// opt.deterministic = false: f32 atomics for dq, the fast mode), "fwd_bwd_det" (the same with
// opt.deterministic = true). FLOPs: fwd = 4·B·H·T²·D, halved when causal; the backward counts
// 2.5× that, fwd+bwd 3.5× (the deterministic mode's extra dq pass is not counted as work).
// Time: back-to-back calls, then Backend::synchronize, over samples of >= --min-sample-s.
//
// Every configuration is checked once before it is timed: sampled rows of out, lse, dq, dk, dv
// (rows at tile edges, in the first and last (b, h)) against a float64 reference on the host.
// The tolerances only catch wrong results (mask, scale, layout, garbage); the op tests measure
// accuracy. A failed check or an op that throws makes the exit code 1.
//
//   bench_attention_gpu [--quick] [--reps N] [--min-sample-s S] [--json FILE] [--dtype bf16|f16]
//                       [--T 1024,2048] [--D 64,128] [--causal 0,1] [--pass fwd,fwd_bwd,...]
//   bench_attention_gpu --serve [--dtype bf16|f16]       (the nuri side of attention_gpu.py)
//     prints {"hello": ...}, then answers stdin lines:
//       "config T D causal pass" -> {"ready": true, "config", "flops", "check", "t_one_s"}
//                                   (after the check and a warm-up) or {"error": "..."};
//       "run I"                  -> {"t_s": seconds per call over I back-to-back calls}
//                                   or {"error": "..."};
//       "quit" or EOF ends.
// Without a CUDA device it prints why and exits 77 (ctest: Skipped).
// Testing aids (no GPU needed): --backend cpu --dtype f32 --tokens 1024 --hd 256 runs the same
// code on the CPU backend's attention.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "bench_common.h"
#include "bench_gpu.h"
#include "nuri/backend/backend.h"
#include "nuri/core/dtype.h"
#include "nuri/core/error.h"
#include "nuri/core/rng.h"
#include "nuri/core/tensor.h"

namespace {

using nuri::Backend;
using nuri::DType;
using nuri::Tensor;

using bench::kExitSkip;

enum class Pass { fwd, fwd_bwd, fwd_bwd_det };

const char* pass_name(Pass p) {
  return p == Pass::fwd ? "fwd" : p == Pass::fwd_bwd ? "fwd_bwd" : "fwd_bwd_det";
}

Pass parse_pass(const std::string& s) {
  if (s == "fwd") return Pass::fwd;
  if (s == "fwd_bwd") return Pass::fwd_bwd;
  if (s == "fwd_bwd_det") return Pass::fwd_bwd_det;
  throw std::runtime_error("unknown pass '" + s + "' (fwd, fwd_bwd, fwd_bwd_det)");
}

DType parse_dtype(const std::string& s) {
  if (s == "bf16") return DType::bf16;
  if (s == "f16") return DType::f16;
  if (s == "f32") return DType::f32;  // the CPU backend's attention (testing aid)
  throw std::runtime_error("unknown dtype '" + s + "' (bf16, f16; f32 with --backend cpu)");
}

struct Config {
  int64_t B = 0, T = 0, H = 0, D = 0;
  bool causal = true;
  Pass pass = Pass::fwd;
};

/// The configuration with B·T = tokens and H·D = hd; throws if T or D does not divide them.
Config make_config(int64_t tokens, int64_t hd, int64_t T, int64_t D, bool causal, Pass pass) {
  NURI_CHECK(T > 0 && tokens % T == 0, "T (", T, ") must divide the tokens per call (", tokens,
             ")");
  NURI_CHECK(D > 0 && hd % D == 0, "D (", D, ") must divide H·D (", hd, ")");
  return {tokens / T, T, hd / D, D, causal, pass};
}

/// Seconds per call over `iters` back-to-back calls, from a synchronized start to a synchronized
/// end (the queue is drained first so earlier work is not counted).
template <typename F>
double seconds_per_call(Backend& be, F&& call, int iters) {
  be.synchronize();
  const double t0 = bench::now_s();
  for (int i = 0; i < iters; ++i) call();
  be.synchronize();
  return (bench::now_s() - t0) / iters;
}

// ---- host data: random normal values (never zero), converted to the benchmark's dtype ----------

using bench::fill_normal;
using bench::load;
using bench::store;

// ---- the benchmark: buffers, one configuration at a time, the check -----------------------------

class AttentionBench {
 public:
  /// Host inputs and device buffers of [tokens, hd] elements each, filled once.
  AttentionBench(Backend& be, DType dt, int64_t tokens, int64_t hd)
      : be_(be), dt_(dt), tokens_(tokens), hd_(hd) {
    const nuri::Shape flat = {tokens, hd};
    uint64_t seed = 20240601;
    for (Tensor* h : {&hq_, &hk_, &hv_, &hdout_}) {
      *h = Tensor::empty(flat, dt);
      fill_normal(*h, seed++, 0xa77e);
    }
    for (Tensor* d : {&q_, &k_, &v_, &dout_, &out_, &dq_, &dk_, &dv_}) *d = be.empty(flat, dt);
    be.copy(hq_, q_);
    be.copy(hk_, k_);
    be.copy(hv_, v_);
    be.copy(hdout_, dout_);
    be.zero(out_);
    be.synchronize();
  }

  int64_t tokens() const { return tokens_; }
  int64_t hd() const { return hd_; }

  void set(const Config& c) {
    cfg_ = c;
    const nuri::Shape s = {c.B, c.T, c.H, c.D};
    vq_ = q_.view(s), vk_ = k_.view(s), vv_ = v_.view(s), vdout_ = dout_.view(s);
    vout_ = out_.view(s), vdq_ = dq_.view(s), vdk_ = dk_.view(s), vdv_ = dv_.view(s);
    lse_ = Tensor();  // free the previous one first
    lse_ = be_.empty({c.B, c.H, c.T}, DType::f32);
    opt_ = nuri::AttentionOptions();
    opt_.causal = c.causal;
    opt_.deterministic = c.pass == Pass::fwd_bwd_det;
  }

  /// One forward, or forward + backward, queued on the backend's stream.
  void call() {
    be_.attention(vq_, vk_, vv_, vout_, lse_, opt_);
    if (cfg_.pass != Pass::fwd)
      be_.attention_backward(vq_, vk_, vv_, vout_, lse_, vdout_, vdq_, vdk_, vdv_, opt_);
  }

  double seconds_per_call(int iters) {
    return ::seconds_per_call(
        be_, [this] { call(); }, iters);
  }

  double flops() const {
    const Config& c = cfg_;
    const double fwd =
        4.0 * double(c.B * c.H) * double(c.T) * double(c.T) * double(c.D) / (c.causal ? 2.0 : 1.0);
    return c.pass == Pass::fwd ? fwd : 3.5 * fwd;
  }

  static const char* flops_formula(Pass p) {
    return p == Pass::fwd ? "fwd = 4*B*H*T^2*D, halved when causal"
                          : "3.5 * fwd (fwd = 4*B*H*T^2*D, halved when causal; bwd = 2.5 * fwd)";
  }

  bench::Json config_json(const bench::Json& device) const {
    const Config& c = cfg_;
    bench::Json j;
    j.kv("pass", pass_name(c.pass))
        .kv("B", c.B)
        .kv("T", c.T)
        .kv("H", c.H)
        .kv("D", c.D)
        .kv("causal", c.causal)
        .kv("dtype", nuri::dtype_name(dt_));
    if (c.pass != Pass::fwd) j.kv("deterministic", opt_.deterministic);
    j.kv("tokens", c.B * c.T)
        .kv("layout", "q,k,v,out [B,T,H,D] contiguous; lse [B,H,T] f32")
        .kv("backend", be_.name())
        .kv("device", device);
    return j;
  }

  struct Check {
    bench::Json json;
    bool ok = false;
  };

  /// Runs the pass once on cleared outputs and compares sampled rows with a float64 reference.
  Check check() {
    for (const Tensor* t : {&out_, &dq_, &dk_, &dv_}) be_.zero(*t);
    call();
    be_.synchronize();
    Tensor out = host_copy(out_), lse = Tensor::empty(lse_.shape(), DType::f32);
    be_.copy(lse_, lse);
    Errors e;
    const Config& c = cfg_;
    const bool bwd = c.pass != Pass::fwd;
    Tensor dq, dk, dv;
    if (bwd) dq = host_copy(dq_), dk = host_copy(dk_), dv = host_copy(dv_);
    const int64_t heads[2][2] = {{0, 0}, {c.B - 1, c.H - 1}};
    for (const auto& bh : heads) {
      for (int64_t i : sample_rows({0, 63, 64, c.T / 2 + 5, c.T - 1})) {
        check_query_row(bh[0], bh[1], i, out, lse, bwd ? &dq : nullptr, e);
      }
      if (!bwd) continue;
      for (int64_t j : sample_rows({0, 1, 64, c.T / 2 + 5, c.T - 1})) {
        check_key_row(bh[0], bh[1], j, out, lse, dk, dv, e);
      }
    }
    const bool lowp = dt_ != DType::f32;
    const double tol_out = lowp ? 2e-2 : 1e-4, tol_grad = lowp ? 5e-2 : 1e-3;
    const double tol_lse = lowp ? 1e-2 : 1e-4;
    bench::Json j;
    j.kv("rows",
         "out, lse, dq at q rows {0,63,64,T/2+5,T-1}; dk, dv at k rows {0,1,64,T/2+5,T-1}; "
         "(b,h) = (0,0), (B-1,H-1)");
    j.kv("out_rel_l2", e.out.rel()).kv("lse_max_abs", e.lse_max_abs);
    bool ok = e.out.rel() <= tol_out && e.lse_max_abs <= tol_lse;
    if (bwd) {
      j.kv("dq_rel_l2", e.dq.rel()).kv("dk_rel_l2", e.dk.rel()).kv("dv_rel_l2", e.dv.rel());
      ok = ok && e.dq.rel() <= tol_grad && e.dk.rel() <= tol_grad && e.dv.rel() <= tol_grad;
    }
    j.kv("tol_out", tol_out).kv("tol_lse", tol_lse);
    if (bwd) j.kv("tol_grad", tol_grad);
    j.kv("ok", ok);
    return {j, ok};
  }

 private:
  /// Σ(x - ref)² and Σ ref² over the sampled rows of one output.
  struct Err {
    double diff2 = 0, ref2 = 0;
    void add(double x, double ref) {
      diff2 += (x - ref) * (x - ref);
      ref2 += ref * ref;
    }
    double rel() const {
      return std::isfinite(diff2) ? std::sqrt(diff2 / std::max(ref2, 1e-300)) : INFINITY;
    }
  };
  struct Errors {
    Err out, dq, dk, dv;
    double lse_max_abs = 0;
  };

  Tensor host_copy(const Tensor& dev) {
    Tensor h = Tensor::empty(dev.shape(), dev.dtype());
    be_.copy(dev, h);
    return h;
  }

  std::vector<int64_t> sample_rows(std::vector<int64_t> rows) const {
    std::vector<int64_t> r;
    for (int64_t x : rows) {
      if (x >= 0 && x < cfg_.T && std::find(r.begin(), r.end(), x) == r.end()) r.push_back(x);
    }
    return r;
  }

  /// Flat index of element d of row t, head h, batch b in a [B, T, H, D] tensor.
  int64_t at(int64_t b, int64_t t, int64_t h, int64_t d) const {
    return ((b * cfg_.T + t) * cfg_.H + h) * cfg_.D + d;
  }
  double dot(const Tensor& x, int64_t ix, const Tensor& y, int64_t iy) const {
    double s = 0;
    for (int64_t d = 0; d < cfg_.D; ++d) s += load(x, ix + d) * load(y, iy + d);
    return s;
  }
  double scale() const { return 1.0 / std::sqrt(double(cfg_.D)); }

  /// out, lse of query row i (and dq when given), from the exact softmax of that row.
  void check_query_row(int64_t b, int64_t h, int64_t i, const Tensor& out, const Tensor& lse,
                       const Tensor* dq, Errors& e) const {
    const int64_t D = cfg_.D, n = cfg_.causal ? i + 1 : cfg_.T, qi = at(b, i, h, 0);
    std::vector<double> s(size_t(n), 0.0), o(size_t(D), 0.0);
    double m = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      s[size_t(j)] = scale() * dot(hq_, qi, hk_, at(b, j, h, 0));
      m = std::max(m, s[size_t(j)]);
    }
    double l = 0;
    for (int64_t j = 0; j < n; ++j) l += std::exp(s[size_t(j)] - m);
    const double lse_ref = m + std::log(l);
    for (int64_t j = 0; j < n; ++j) {
      const double p = std::exp(s[size_t(j)] - lse_ref);
      for (int64_t d = 0; d < D; ++d) o[size_t(d)] += p * load(hv_, at(b, j, h, d));
    }
    for (int64_t d = 0; d < D; ++d) e.out.add(load(out, qi + d), o[size_t(d)]);
    const double lse_got = static_cast<const float*>(lse.raw())[(b * cfg_.H + h) * cfg_.T + i];
    const double lse_err = std::abs(lse_got - lse_ref);
    e.lse_max_abs = std::isfinite(lse_err) ? std::max(e.lse_max_abs, lse_err) : INFINITY;
    if (!dq) return;
    // dq_i = scale · Σ_j P_ij (dout_i·v_j - Di) k_j with Di = dout_i·out_i (exact out here).
    double di = 0;
    for (int64_t d = 0; d < D; ++d) di += load(hdout_, qi + d) * o[size_t(d)];
    std::vector<double> g(size_t(D), 0.0);
    for (int64_t j = 0; j < n; ++j) {
      const double p = std::exp(s[size_t(j)] - lse_ref);
      const double ds = p * (dot(hdout_, qi, hv_, at(b, j, h, 0)) - di);
      for (int64_t d = 0; d < D; ++d) g[size_t(d)] += ds * load(hk_, at(b, j, h, d));
    }
    for (int64_t d = 0; d < D; ++d) e.dq.add(load(*dq, qi + d), scale() * g[size_t(d)]);
  }

  /// dk, dv of key row j: sums over the query rows that see it, with the kernel's own lse and
  /// out for P and Di (the query rows' reference would cost T²·D per head).
  void check_key_row(int64_t b, int64_t h, int64_t j, const Tensor& out, const Tensor& lse,
                     const Tensor& dk, const Tensor& dv, Errors& e) const {
    const int64_t D = cfg_.D, kj = at(b, j, h, 0);
    std::vector<double> gk(size_t(D), 0.0), gv(size_t(D), 0.0);
    for (int64_t i = cfg_.causal ? j : 0; i < cfg_.T; ++i) {
      const int64_t qi = at(b, i, h, 0);
      const double lse_i = static_cast<const float*>(lse.raw())[(b * cfg_.H + h) * cfg_.T + i];
      const double p = std::exp(scale() * dot(hq_, qi, hk_, kj) - lse_i);
      const double ds = p * (dot(hdout_, qi, hv_, kj) - dot(hdout_, qi, out, qi));
      for (int64_t d = 0; d < D; ++d) {
        gv[size_t(d)] += p * load(hdout_, qi + d);
        gk[size_t(d)] += ds * load(hq_, qi + d);
      }
    }
    for (int64_t d = 0; d < D; ++d) {
      e.dv.add(load(dv, kj + d), gv[size_t(d)]);
      e.dk.add(load(dk, kj + d), scale() * gk[size_t(d)]);
    }
  }

  Backend& be_;
  DType dt_;
  int64_t tokens_, hd_;
  Tensor hq_, hk_, hv_, hdout_;                         // host inputs [tokens, hd]
  Tensor q_, k_, v_, dout_, out_, dq_, dk_, dv_, lse_;  // device buffers [tokens, hd]; lse [B,H,T]
  Tensor vq_, vk_, vv_, vdout_, vout_, vdq_, vdk_, vdv_;  // their [B, T, H, D] views
  Config cfg_;
  nuri::AttentionOptions opt_;
};

// ---- the two modes
// ---------------------------------------------------------------------------------

struct Options {
  bool quick = false, serve = false;
  int reps = -1;
  double min_sample_s = -1;
  std::string json_path, backend = "cuda", dtype = "bf16";
  int64_t tokens = 16384, hd = 2048;
  std::vector<int64_t> Ts, Ds, causals;
  std::vector<Pass> passes;
};

/// Two calls (first-call costs such as the backward's workspace), then one timed call: t_one_s.
double warm_up(AttentionBench& ab) {
  ab.seconds_per_call(2);
  return ab.seconds_per_call(1);
}

int serve(AttentionBench& ab, const bench::Json& device) {
  std::string line;
  bool configured = false;
  auto reply = [](const bench::Json& j) {
    std::printf("%s\n", j.str().c_str());
    std::fflush(stdout);
  };
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string cmd;
    in >> cmd;
    try {
      if (cmd == "config") {
        configured = false;
        int64_t T = 0, D = 0, causal = 1;
        std::string pass;
        NURI_CHECK(bool(in >> T >> D >> causal >> pass), "expected 'config T D causal pass', got '",
                   line, "'");
        ab.set(make_config(ab.tokens(), ab.hd(), T, D, causal != 0, parse_pass(pass)));
        const AttentionBench::Check check = ab.check();
        const double t1 = warm_up(ab);
        configured = true;
        reply(bench::Json()
                  .kv("ready", true)
                  .kv("bench", "attention_gpu")
                  .kv("config", ab.config_json(device))
                  .kv("flops", ab.flops())
                  .kv("flops_formula", AttentionBench::flops_formula(parse_pass(pass)))
                  .kv("check", check.json)
                  .kv("t_one_s", t1));
      } else if (cmd == "run") {
        int iters = 1;
        in >> iters;
        NURI_CHECK(configured, "'run' before a successful 'config'");
        iters = std::max(1, iters);
        reply(bench::Json().kv("t_s", ab.seconds_per_call(iters)).kv("iters", iters));
      } else if (cmd == "quit") {
        break;
      } else if (!cmd.empty()) {
        NURI_CHECK(false, "unknown command '", line, "' (config, run, quit)");
      }
    } catch (const std::exception& e) {
      reply(bench::Json().kv("error", std::string(e.what())));
    }
  }
  return 0;
}

int run_all(AttentionBench& ab, const Options& o, const bench::Json& device) {
  bench::Output out(o.json_path);
  int failed = 0, rows = 0;
  for (int64_t T : o.Ts) {
    for (int64_t D : o.Ds) {
      for (int64_t causal : o.causals) {
        for (Pass pass : o.passes) {
          bench::Json row;
          row.kv("bench", "attention_gpu");
          ++rows;
          bool has_config = false;
          try {
            ab.set(make_config(ab.tokens(), ab.hd(), T, D, causal != 0, pass));
            row.kv("config", ab.config_json(device));
            has_config = true;
            const AttentionBench::Check check = ab.check();
            const double t1 = warm_up(ab);
            const int iters = bench::iters_for(t1, o.min_sample_s);
            std::vector<double> s;
            for (int r = 0; r < o.reps; ++r) s.push_back(ab.seconds_per_call(iters));
            const bench::Stats st = bench::summarize(s);
            row.kv("nuri", bench::Json()
                               .stats(st)
                               .kv("tflops", ab.flops() / st.median_s * 1e-12)
                               .kv("calls_per_sample", iters));
            row.kv("flops", ab.flops()).kv("flops_formula", AttentionBench::flops_formula(pass));
            row.kv("check", check.json);
            if (!check.ok) {
              ++failed;
              row.kv("error", "check failed: an output differs from the float64 reference");
            }
          } catch (const std::exception& e) {
            ++failed;
            if (!has_config) {
              row.kv("config", bench::Json()
                                   .kv("pass", pass_name(pass))
                                   .kv("T", T)
                                   .kv("D", D)
                                   .kv("causal", causal != 0)
                                   .kv("dtype", o.dtype));
            }
            row.kv("error", std::string(e.what()));
          }
          out.emit(row);
        }
      }
    }
  }
  out.emit(bench::Json()
               .kv("bench", "attention_gpu_summary")
               .kv("config", bench::Json()
                                 .kv("dtype", o.dtype)
                                 .kv("tokens", ab.tokens())
                                 .kv("hd", ab.hd())
                                 .kv("reps", o.reps)
                                 .kv("device", device))
               .kv("rows", rows)
               .kv("failed", failed));
  if (failed) std::fprintf(stderr, "bench_attention_gpu: %d of %d rows failed\n", failed, rows);
  return failed ? 1 : 0;
}

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');) v.push_back(std::stoll(x));
  return v;
}

void usage() {
  std::fprintf(stderr,
               "usage: bench_attention_gpu [--quick] [--reps N] [--min-sample-s S] [--json FILE]\n"
               "         [--dtype bf16|f16] [--T 1024,2048,4096,8192] [--D 64,128] [--causal 0,1]\n"
               "         [--pass fwd,fwd_bwd,fwd_bwd_det]\n"
               "       bench_attention_gpu --serve [--dtype bf16|f16]   (see attention_gpu.py)\n"
               "testing aids: --backend cpu --dtype f32 --tokens N --hd N (defaults cuda, 16384, "
               "2048)\n"
               "exit: 0 ok, 1 an op threw or a check failed, 2 usage, 77 no CUDA device\n");
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  std::string Ts, Ds, causals = "1,0", passes = "fwd,fwd_bwd,fwd_bwd_det";
  try {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      auto next = [&]() -> std::string {
        if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
        return argv[++i];
      };
      if (a == "--quick")
        o.quick = true;
      else if (a == "--serve")
        o.serve = true;
      else if (a == "--reps")
        o.reps = std::stoi(next());
      else if (a == "--min-sample-s")
        o.min_sample_s = std::stod(next());
      else if (a == "--json")
        o.json_path = next();
      else if (a == "--dtype")
        o.dtype = next();
      else if (a == "--backend")
        o.backend = next();
      else if (a == "--tokens")
        o.tokens = std::stoll(next());
      else if (a == "--hd")
        o.hd = std::stoll(next());
      else if (a == "--T")
        Ts = next();
      else if (a == "--D")
        Ds = next();
      else if (a == "--causal")
        causals = next();
      else if (a == "--pass")
        passes = next();
      else if (a == "--help" || a == "-h")
        return usage(), 0;
      else
        throw std::runtime_error("unknown argument '" + a + "'");
    }
    o.Ts = parse_list(Ts.empty() ? (o.quick ? "1024" : "1024,2048,4096,8192") : Ts);
    o.Ds = parse_list(Ds.empty() ? "64,128" : Ds);
    o.causals = parse_list(causals);
    std::stringstream ss(passes);
    for (std::string p; std::getline(ss, p, ',');) o.passes.push_back(parse_pass(p));
    parse_dtype(o.dtype);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_attention_gpu: %s\n", e.what());
    usage();
    return 2;
  }
  if (o.reps <= 0) o.reps = o.quick ? 3 : 7;
  if (o.min_sample_s < 0) o.min_sample_s = o.quick ? 0.02 : 0.1;

  // Exits 77 without a CUDA device.
  const bench::Json device = bench::device_json("bench_attention_gpu", o.backend);
  try {
    auto be = nuri::make_backend(o.backend);
    AttentionBench ab(*be, parse_dtype(o.dtype), o.tokens, o.hd);
    if (o.serve) {
      std::printf("%s\n", bench::Json()
                              .kv("hello", true)
                              .kv("backend", be->name())
                              .kv("dtype", o.dtype)
                              .kv("tokens", o.tokens)
                              .kv("hd", o.hd)
                              .kv("device", device)
                              .str()
                              .c_str());
      std::fflush(stdout);
      return serve(ab, device);
    }
    return run_all(ab, o, device);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_attention_gpu: %s\n", e.what());
    return 1;
  }
}
