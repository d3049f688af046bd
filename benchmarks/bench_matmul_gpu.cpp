// The CUDA backend's linear layers (issue #7): nuri's GEMM kernels (kernels/matmul.cu) against
// cuBLASLt (csrc/backend/cuda/cublaslt.cpp), both through nuri::make_backend("cuda") and the
// Backend API, switched per sample with CudaBackend::set_gemm_path(GemmPath::nuri / cublaslt).
// --nuri sm90 makes nuri's side the sm_90a kernel (kernels/matmul_sm90.cuh; H100/H200 with 90a
// in the build): each row then records how many of its checked calls that kernel ran
// ("sm90_calls"), so a row it did not take is seen as such, and the kernel's grid
// ("sm90_grid": persistent, or tiles under NURI_GEMM_SM90_GRID=tiles).
//
// Shapes: M = tokens per call (B·T, default 8192), the linear layers of
//   gpt2-124M  (C 768):  qkv 2304×768, attn_proj 768×768, fc 3072×768 (GELU), proj 768×3072,
//                        lm_head 50304×768 (no bias)
//   gpt2-1.5B  (C 1600): 4800×1600, 1600×1600, 6400×1600 (GELU), 1600×6400, 50304×1600
//   llama-7B   (C 4096): qkv 12288×4096, o 4096×4096, gate_up 22016×4096, down 4096×11008
//                        (no biases; SwiGLU is a separate op)
// (W is [N, K]). Passes: fwd = matmul (bias and GELU where the layer has them), dgrad =
// matmul_backward_input (proj: with the fused GELU backward of fc, the layer below), wgrad =
// matmul_backward_weight, accumulate = true into f32, bgrad = matmul_backward_bias (layers with
// a bias only; accumulate into f32; cuBLASLt runs it as dy times a vector of ones). FLOPs =
// 2·M·N·K for the products, M·N for bgrad (its "TFLOP/s" are additions per second).
//
// Time: after a warm-up of both paths, samples alternate nuri and cuBLASLt (A B A B ...); a
// sample is back-to-back calls closed by Backend::synchronize, lasting >= --min-sample-s; median,
// min and max of --reps samples per path. ratio = nuri TFLOP/s / cuBLASLt TFLOP/s (> 1: nuri is
// faster). The summary line holds the geometric mean of the ratios per pass.
//
// Every (layer, pass) is checked once per path before it is timed: 16 sampled output elements
// (rows and columns at the edges and in the middle) against a float64 host reference, as a
// relative L2 error. The tolerances only catch wrong results (layout, epilogue, garbage); the op
// tests measure accuracy. A failed check or an op that throws makes the exit code 1.
//
//   bench_matmul_gpu [--quick] [--reps N] [--min-sample-s S] [--json FILE] [--dtype bf16|f16|f32]
//                    [--tokens M] [--model gpt2-124M,gpt2-1.5B,llama-7B] [--pass fwd,dgrad,wgrad,bgrad]
//                    [--nuri nuri|sm90]
// Without a CUDA device it prints why and exits 77 (ctest: Skipped).
// Testing aid (no GPU needed): --backend cpu --dtype f32 --tokens 64 --small runs the same code
// on the CPU backend (every N and K divided by 16), nuri alone: "peer": null.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
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
constexpr double kNull = NAN;  // bench::Json writes it as null

enum class Pass { fwd, dgrad, wgrad, bgrad };
const Pass kPasses[] = {Pass::fwd, Pass::dgrad, Pass::wgrad, Pass::bgrad};

const char* pass_name(Pass p) {
  return p == Pass::fwd ? "fwd" : p == Pass::dgrad ? "dgrad" : p == Pass::wgrad ? "wgrad" : "bgrad";
}

Pass parse_pass(const std::string& s) {
  for (Pass p : kPasses)
    if (s == pass_name(p)) return p;
  throw std::runtime_error("unknown pass '" + s + "' (fwd, dgrad, wgrad, bgrad)");
}

DType parse_dtype(const std::string& s) {
  if (s == "bf16") return DType::bf16;
  if (s == "f16") return DType::f16;
  if (s == "f32") return DType::f32;  // the SIMT path on CUDA; the CPU backend's self-test
  throw std::runtime_error("unknown dtype '" + s + "' (bf16, f16, f32)");
}

/// One linear layer: W [N, K]; bias, GELU after it (fc), the fused GELU backward in its dgrad
/// (the layer above fc).
struct Layer {
  const char* name;
  int64_t N, K;
  bool bias, gelu, dgelu;
};

struct Model {
  const char* name;
  std::vector<Layer> layers;
};

std::vector<Model> models() {
  return {
      {"gpt2-124M",
       {{"qkv", 2304, 768, true, false, false},
        {"attn_proj", 768, 768, true, false, false},
        {"fc", 3072, 768, true, true, false},
        {"proj", 768, 3072, true, false, true},
        {"lm_head", 50304, 768, false, false, false}}},
      {"gpt2-1.5B",
       {{"qkv", 4800, 1600, true, false, false},
        {"attn_proj", 1600, 1600, true, false, false},
        {"fc", 6400, 1600, true, true, false},
        {"proj", 1600, 6400, true, false, true},
        {"lm_head", 50304, 1600, false, false, false}}},
      {"llama-7B",
       {{"qkv", 12288, 4096, false, false, false},
        {"o", 4096, 4096, false, false, false},
        {"gate_up", 22016, 4096, false, false, false},
        {"down", 4096, 11008, false, false, false}}},
  };
}

// ---- host data: random normal values (never zero), converted to the benchmark's dtype ----------

using bench::fill_normal;
using bench::load;
using bench::store;

double gelu(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}
double gelu_grad(double x) {
  const double a = std::sqrt(2.0 / M_PI), th = std::tanh(a * (x + 0.044715 * x * x * x));
  return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * a * (1.0 + 3.0 * 0.044715 * x * x);
}

/// Σ(x - ref)² and Σ ref² over the sampled elements of one output.
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

// ---- one layer's buffers, its three passes, the check -----------------------------------------

class MatmulBench {
 public:
  MatmulBench(Backend& be, DType dt, int64_t M) : be_(be), dt_(dt), M_(M) {}

  /// Frees the previous layer's buffers, then allocates and fills this one's.
  void set_layer(const Model& model, const Layer& l) {
    model_ = &model, layer_ = l;
    for (Tensor* t : {&hx_, &hw_, &hbias_, &hdy_, &hgelu_pre_, &x_, &w_, &bias_, &y_, &pre_, &dy_,
                      &dx_, &gelu_pre_, &dw_, &db_})
      *t = Tensor();
    const int64_t M = M_, N = l.N, K = l.K;
    uint64_t seed = 20241101;
    auto host = [&](Tensor& h, Tensor& d, nuri::Shape s, float scale) {
      h = Tensor::empty(s, dt_);
      fill_normal(h, seed++, 0x3a7b, scale);
      d = be_.empty(s, dt_);
      be_.copy(h, d);
    };
    // W scaled by 1/sqrt(K): the pre-activations are about standard normal, where GELU bends.
    host(hx_, x_, {M, K}, 1.0f);
    host(hw_, w_, {N, K}, float(1.0 / std::sqrt(double(K))));
    if (l.bias) host(hbias_, bias_, {N}, 0.5f);
    host(hdy_, dy_, {M, N}, 1.0f);
    if (l.dgelu) host(hgelu_pre_, gelu_pre_, {M, K}, 1.0f);
    y_ = be_.empty({M, N}, dt_);
    if (l.gelu) pre_ = be_.empty({M, N}, dt_);
    dx_ = be_.empty({M, K}, dt_);
    dw_ = be_.empty({N, K}, DType::f32);
    be_.zero(dw_);
    if (l.bias) {
      db_ = be_.empty({N}, DType::f32);
      be_.zero(db_);
    }
    be_.synchronize();
  }

  void set_pass(Pass p) { pass_ = p; }

  /// One call of the pass, queued on the backend's stream.
  void call() {
    switch (pass_) {
      case Pass::fwd:
        be_.matmul(x_, w_, bias_, y_, layer_.gelu ? nuri::Activation::gelu : nuri::Activation::none,
                   pre_, nuri::Tensor());
        break;
      case Pass::dgrad:
        be_.matmul_backward_input(dy_, w_, dx_, false, gelu_pre_);
        break;
      case Pass::wgrad:
        be_.matmul_backward_weight(dy_, x_, dw_, true);
        break;
      case Pass::bgrad:
        be_.matmul_backward_bias(dy_, db_, true);
        break;
    }
  }

  double seconds_per_call(int iters) {
    be_.synchronize();
    const double t0 = bench::now_s();
    for (int i = 0; i < iters; ++i) call();
    be_.synchronize();
    return (bench::now_s() - t0) / iters;
  }

  double flops() const {
    return pass_ == Pass::bgrad ? double(M_) * double(layer_.N)
                                : 2.0 * double(M_) * double(layer_.N) * double(layer_.K);
  }
  const char* flops_formula() const { return pass_ == Pass::bgrad ? "M*N" : "2*M*N*K"; }
  /// bgrad is measured on layers with a bias only.
  bool applies() const { return pass_ != Pass::bgrad || layer_.bias; }

  bench::Json config_json(const bench::Json& device) const {
    bench::Json j;
    j.kv("model", model_->name)
        .kv("layer", layer_.name)
        .kv("pass", pass_name(pass_))
        .kv("M", M_)
        .kv("N", layer_.N)
        .kv("K", layer_.K)
        .kv("dtype", nuri::dtype_name(dt_));
    if (pass_ == Pass::fwd) j.kv("bias", layer_.bias).kv("gelu", layer_.gelu);
    if (pass_ == Pass::dgrad) j.kv("fused_gelu_backward", layer_.dgelu);
    if (pass_ == Pass::wgrad) j.kv("accumulate", true).kv("dw_dtype", "f32");
    if (pass_ == Pass::bgrad) j.kv("accumulate", true).kv("dbias_dtype", "f32");
    j.kv("layout", pass_ == Pass::fwd     ? "y [M,N] = x [M,K] . W [N,K]^T, row-major"
                   : pass_ == Pass::dgrad ? "dx [M,K] = dy [M,N] . W [N,K], row-major"
                   : pass_ == Pass::wgrad ? "dW [N,K] += dy [M,N]^T . x [M,K], row-major"
                                          : "dbias [N] += sum over rows of dy [M,N]")
        .kv("backend", be_.name())
        .kv("device", device);
    return j;
  }

  struct Check {
    bench::Json json;
    bool ok = false;
  };

  /// Runs the pass once on cleared outputs and compares 16 sampled elements with float64.
  Check check() {
    const int64_t M = M_, N = layer_.N, K = layer_.K;
    for (const Tensor* t : {&y_, &pre_, &dx_, &dw_, &db_})
      if (t->defined()) be_.zero(*t);
    call();
    be_.synchronize();
    Err out, pre;
    const auto picks = [](int64_t n) {
      std::vector<int64_t> r;
      for (int64_t v : {int64_t(0), int64_t(7), n / 2 + 5, n - 1})
        if (v >= 0 && v < n && std::find(r.begin(), r.end(), v) == r.end()) r.push_back(v);
      return r;
    };
    if (pass_ == Pass::fwd) {
      const Tensor y = host_copy(y_), p = layer_.gelu ? host_copy(pre_) : Tensor();
      for (int64_t i : picks(M)) {
        for (int64_t j : picks(N)) {
          double s = layer_.bias ? load(hbias_, j) : 0.0;
          for (int64_t l = 0; l < K; ++l) s += load(hx_, i * K + l) * load(hw_, j * K + l);
          out.add(load(y, i * N + j), layer_.gelu ? gelu(s) : s);
          if (layer_.gelu) pre.add(load(p, i * N + j), s);
        }
      }
    } else if (pass_ == Pass::dgrad) {
      const Tensor dx = host_copy(dx_);
      for (int64_t i : picks(M)) {
        for (int64_t l : picks(K)) {
          double s = 0;
          for (int64_t j = 0; j < N; ++j) s += load(hdy_, i * N + j) * load(hw_, j * K + l);
          if (layer_.dgelu) s *= gelu_grad(load(hgelu_pre_, i * K + l));
          out.add(load(dx, i * K + l), s);
        }
      }
    } else if (pass_ == Pass::bgrad) {
      const Tensor db = host_copy(db_);
      for (int64_t j : picks(N)) {
        double s = 0;
        for (int64_t i = 0; i < M; ++i) s += load(hdy_, i * N + j);
        out.add(load(db, j), s);
      }
    } else {
      const Tensor dw = host_copy(dw_);
      for (int64_t j : picks(N)) {
        for (int64_t l : picks(K)) {
          double s = 0;
          for (int64_t i = 0; i < M; ++i) s += load(hdy_, i * N + j) * load(hx_, i * K + l);
          out.add(load(dw, j * K + l), s);
        }
      }
    }
    const double tol = dt_ == DType::f32 ? 1e-4 : 2e-2;
    bench::Json j;
    j.kv("samples", pass_ == Pass::bgrad
                      ? "4 elements: {0, 7, n/2+5, n-1} of the output"
                      : "16 elements: rows and columns {0, 7, n/2+5, n-1} of the output");
    j.kv("out_rel_l2", out.rel());
    bool ok = out.rel() <= tol;
    if (pass_ == Pass::fwd && layer_.gelu) {
      j.kv("pre_rel_l2", pre.rel());
      ok = ok && pre.rel() <= tol;
    }
    j.kv("tol", tol).kv("ok", ok);
    return {j, ok};
  }

 private:
  Tensor host_copy(const Tensor& dev) {
    Tensor h = Tensor::empty(dev.shape(), dev.dtype());
    be_.copy(dev, h);
    return h;
  }

  Backend& be_;
  DType dt_;
  int64_t M_;
  const Model* model_ = nullptr;
  Layer layer_{};
  Pass pass_ = Pass::fwd;
  Tensor hx_, hw_, hbias_, hdy_, hgelu_pre_;                 // host inputs
  Tensor x_, w_, bias_, y_, pre_, dy_, dx_, gelu_pre_, dw_, db_;  // device buffers
};

// ---- the run
// --------------------------------------------------------------------------------------

struct Options {
  bool quick = false, small = false;
  int reps = -1;
  double min_sample_s = -1;
  std::string json_path, backend = "cuda", dtype = "bf16";
  std::string nuri_path = "nuri";  // which of nuri's GEMM paths is timed: nuri or sm90
  int64_t tokens = 8192;
  std::vector<std::string> models;
  std::vector<Pass> passes;
};

/// The two contenders on one backend: nuri's kernels and cuBLASLt (CUDA), or nuri alone (CPU).
class Paths {
 public:
  Paths(Backend& be, const std::string& nuri_path)
      : be_(be), cuda_(be.name() == "cuda"), nuri_(nuri::parse_gemm_path(nuri_path)) {
    NURI_CHECK(nuri_ == nuri::GemmPath::nuri || nuri_ == nuri::GemmPath::sm90,
               "--nuri takes nuri or sm90, not ", nuri_path);
    NURI_CHECK(cuda_ || nuri_ == nuri::GemmPath::nuri, "--nuri sm90 needs the cuda backend");
  }
  bool has_peer() const { return cuda_; }
  void use_nuri() {
    if (cuda_) static_cast<nuri::CudaBackend&>(be_).set_gemm_path(nuri_);
  }
  /// Products nuri's sm_90a kernel has run so far.
  int64_t sm90_calls() const {
    return cuda_ ? static_cast<const nuri::CudaBackend&>(be_).sm90_gemm_calls() : 0;
  }
  /// The sm_90a kernel's grid (NURI_GEMM_SM90_GRID): "persistent" or "tiles".
  const char* sm90_grid() const {
    return cuda_ && static_cast<const nuri::CudaBackend&>(be_).gemm_sm90_per_tile() ? "tiles"
                                                                                    : "persistent";
  }
  void use_peer() { static_cast<nuri::CudaBackend&>(be_).set_gemm_path(nuri::GemmPath::cublaslt); }
  /// Calls meant for cuBLASLt that it declined (nuri's kernel ran them instead).
  int64_t fallbacks() const {
    return cuda_ ? static_cast<const nuri::CudaBackend&>(be_).gemm_fallbacks() : 0;
  }

 private:
  Backend& be_;
  bool cuda_;
  nuri::GemmPath nuri_;
};

std::string cublaslt_name() {
  const size_t v = cublasLtGetVersion();  // major·10000 + minor·100 + patch
  return "cuBLASLt " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
         std::to_string(v % 100) + " (heuristic's first algorithm, 32 MiB workspace)";
}

/// One row: checks both paths, warms up, then alternates samples. Returns false on a failed check.
bool measure(MatmulBench& mb, Paths& paths, const Options& o, const std::string& backend_name,
             bench::Json& row, std::vector<double>& ratios) {
  paths.use_nuri();
  const int64_t sm90_before = paths.sm90_calls();
  const MatmulBench::Check check_nuri = mb.check();
  const int64_t sm90_calls = paths.sm90_calls() - sm90_before;
  MatmulBench::Check check_peer;
  bool declined = false;  // cuBLASLt has no algorithm for this call: the peer would be nuri
  if (paths.has_peer()) {
    paths.use_peer();
    const int64_t fb = paths.fallbacks();
    check_peer = mb.check();
    declined = paths.fallbacks() != fb;
  }
  // Warm-up: two calls per path, then one timed call each (t_one) to size the samples.
  paths.use_nuri();
  mb.seconds_per_call(2);
  double t1 = mb.seconds_per_call(1);
  if (paths.has_peer()) {
    paths.use_peer();
    mb.seconds_per_call(2);
    t1 = std::min(t1, mb.seconds_per_call(1));
  }
  const int iters = bench::iters_for(t1, o.min_sample_s);
  std::vector<double> s_nuri, s_peer;
  for (int r = 0; r < o.reps; ++r) {  // A B A B ...
    paths.use_nuri();
    s_nuri.push_back(mb.seconds_per_call(iters));
    if (paths.has_peer()) {
      paths.use_peer();
      s_peer.push_back(mb.seconds_per_call(iters));
    }
  }
  paths.use_nuri();
  const bench::Stats sn = bench::summarize(s_nuri);
  const double tf_nuri = mb.flops() / sn.median_s * 1e-12;
  row.kv("flops", mb.flops()).kv("flops_formula", mb.flops_formula());
  row.kv("nuri", bench::Json()
                     .stats(sn)
                     .kv("tflops", tf_nuri)
                     .kv("calls_per_sample", iters)
                     .kv("path", o.nuri_path)
                     .kv("sm90_calls", sm90_calls)
                     .kv("sm90_grid", paths.sm90_grid())
                     .kv("check", check_nuri.json));
  bool ok = check_nuri.ok;
  if (paths.has_peer()) {
    const bench::Stats sp = bench::summarize(s_peer);
    const double tf_peer = mb.flops() / sp.median_s * 1e-12;
    row.kv("peer", bench::Json()
                       .kv("name", cublaslt_name())
                       .stats(sp)
                       .kv("tflops", tf_peer)
                       .kv("calls_per_sample", iters)
                       .kv("check", check_peer.json));
    if (declined) {
      row.kv("ratio", kNull).kv("peer_missing", "cuBLASLt declined this call (nuri's kernel ran "
                                                "in its place): no ratio");
    } else {
      row.kv("ratio", tf_nuri / tf_peer);
      ratios.push_back(tf_nuri / tf_peer);
    }
    ok = ok && check_peer.ok;
    std::fprintf(stderr, "  nuri %8.2f TFLOP/s  cuBLASLt %8.2f TFLOP/s  ratio %.3f\n", tf_nuri,
                 tf_peer, tf_nuri / tf_peer);
  } else {
    row.kv("peer", kNull).kv("ratio", kNull);  // bench::Json writes a non-finite value as null
    row.kv("peer_missing", "the " + backend_name + " backend has no cuBLASLt: nuri alone");
  }
  if (!ok) row.kv("error", "check failed: an output differs from the float64 reference");
  return ok;
}

int run_all(Backend& be, const Options& o, const bench::Json& device) {
  bench::Output out(o.json_path);
  MatmulBench mb(be, parse_dtype(o.dtype), o.tokens);
  Paths paths(be, o.nuri_path);
  std::vector<double> ratios[4];
  int failed = 0, rows = 0;
  for (Model model : models()) {
    if (std::find(o.models.begin(), o.models.end(), model.name) == o.models.end()) continue;
    if (o.small) {
      for (Layer& l : model.layers)
        l.N = std::max<int64_t>(1, l.N / 16), l.K = std::max<int64_t>(1, l.K / 16);
    }
    for (const Layer& layer : model.layers) {
      bool layer_ok = true;
      std::string layer_error;
      try {
        mb.set_layer(model, layer);
      } catch (const std::exception& e) {
        layer_ok = false;
        layer_error = e.what();
      }
      for (Pass pass : o.passes) {
        mb.set_pass(pass);
        if (!mb.applies()) continue;
        bench::Json row;
        row.kv("bench", "matmul_gpu");
        ++rows;
        mb.set_pass(pass);
        row.kv("config", mb.config_json(device));
        std::fprintf(stderr, "%s %s %s M=%lld N=%lld K=%lld\n", model.name, layer.name,
                     pass_name(pass), (long long)o.tokens, (long long)layer.N, (long long)layer.K);
        try {
          NURI_CHECK(layer_ok, layer_error);
          if (!measure(mb, paths, o, be.name(), row, ratios[int(pass)])) ++failed;
        } catch (const std::exception& e) {
          ++failed;
          row.kv("error", std::string(e.what()));
        }
        out.emit(row);
      }
    }
  }
  bench::Json geo;
  for (Pass p : kPasses) {
    if (paths.has_peer() && !ratios[int(p)].empty())
      geo.kv(pass_name(p), bench::geomean(ratios[int(p)]));
    else
      geo.kv(pass_name(p), kNull);
  }
  out.emit(bench::Json()
               .kv("bench", "matmul_gpu_summary")
               .kv("config", bench::Json()
                                 .kv("dtype", o.dtype)
                                 .kv("tokens", o.tokens)
                                 .kv("small", o.small)
                                 .kv("reps", o.reps)
                                 .kv("backend", be.name())
                                 .kv("device", device))
               .kv("geomean_ratio", geo)
               .kv("ratio_is", "nuri TFLOP/s / cuBLASLt TFLOP/s (> 1: nuri faster)")
               .kv("rows", rows)
               .kv("failed", failed));
  if (failed) std::fprintf(stderr, "bench_matmul_gpu: %d of %d rows failed\n", failed, rows);
  return failed ? 1 : 0;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> v;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');) v.push_back(x);
  return v;
}

void usage() {
  std::fprintf(
      stderr,
      "usage: bench_matmul_gpu [--quick] [--reps N] [--min-sample-s S] [--json FILE]\n"
      "         [--dtype bf16|f16|f32] [--tokens M] [--model gpt2-124M,gpt2-1.5B,llama-7B]\n"
      "         [--pass fwd,dgrad,wgrad,bgrad] [--nuri nuri|sm90]\n"
      "testing aids: --backend cpu --dtype f32 --tokens 64 --small (every N, K / 16)\n"
      "exit: 0 ok, 1 an op threw or a check failed, 2 usage, 77 no CUDA device\n");
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  std::string model_list, passes = "fwd,dgrad,wgrad,bgrad";
  try {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      auto next = [&]() -> std::string {
        if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
        return argv[++i];
      };
      if (a == "--quick")
        o.quick = true;
      else if (a == "--small")
        o.small = true;
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
      else if (a == "--model")
        model_list = next();
      else if (a == "--pass")
        passes = next();
      else if (a == "--nuri")
        o.nuri_path = next();
      else if (a == "--help" || a == "-h")
        return usage(), 0;
      else
        throw std::runtime_error("unknown argument '" + a + "'");
    }
    if (model_list.empty()) model_list = o.quick ? "gpt2-124M" : "gpt2-124M,gpt2-1.5B,llama-7B";
    o.models = split(model_list);
    for (const std::string& m : o.models) {
      bool known = false;
      for (const Model& k : models()) known = known || m == k.name;
      if (!known)
        throw std::runtime_error("unknown model '" + m + "' (gpt2-124M, gpt2-1.5B, llama-7B)");
    }
    for (const std::string& p : split(passes)) o.passes.push_back(parse_pass(p));
    parse_dtype(o.dtype);
    if (o.tokens <= 0) throw std::runtime_error("--tokens must be positive");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_matmul_gpu: %s\n", e.what());
    usage();
    return 2;
  }
  if (o.reps <= 0) o.reps = o.quick ? 5 : 7;
  if (o.min_sample_s < 0) o.min_sample_s = o.quick ? 0.02 : 0.1;

  // Exits 77 without a CUDA device.
  const bench::Json device = bench::device_json("bench_matmul_gpu", o.backend);
  try {
    auto be = nuri::make_backend(o.backend);
    return run_all(*be, o, device);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_matmul_gpu: %s\n", e.what());
    return 1;
  }
}
