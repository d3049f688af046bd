// matmul (y = act(x·Wᵀ + b)) and its input, weight and bias gradients, with and without the
// fused GELU epilogues, on every backend, against float64.
#include <algorithm>
#include <cmath>

#include "ops/harness.h"

namespace nuri::test {
namespace {

struct MatmulCase {
  int64_t m, n, k;
  bool bias;
  bool gelu;
};
void PrintTo(const MatmulCase& c, std::ostream* os) {
  *os << "M=" << c.m << " N=" << c.n << " K=" << c.k << (c.bias ? " bias" : "") << (c.gelu ? " gelu" : "");
}

double gelu_ref(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

// y [M, N] = act(x [M, K] · w [N, K]ᵀ + b [N]); also returns the pre-activation.
std::vector<Vec> matmul_ref(const MatmulCase& c, const Vec& x, const Vec& w, const Vec* b) {
  Vec pre(size_t(c.m * c.n)), y(pre.size());
  for (int64_t i = 0; i < c.m; ++i) {
    for (int64_t j = 0; j < c.n; ++j) {
      double s = b ? (*b)[size_t(j)] : 0.0;
      for (int64_t l = 0; l < c.k; ++l) s += x[size_t(i * c.k + l)] * w[size_t(j * c.k + l)];
      pre[size_t(i * c.n + j)] = s;
      y[size_t(i * c.n + j)] = c.gelu ? gelu_ref(s) : s;
    }
  }
  return {y, pre};
}

class MatmulTest : public ::testing::TestWithParam<std::tuple<DtypeRun, MatmulCase>> {};

// float64 products of the backward: dx [M, K] = dpre [M, N] · w [N, K], dw [N, K] = dpreᵀ · x,
// dbias [N] = Σ_m dpre.
std::vector<Vec> matmul_backward_ref(const MatmulCase& c, const Vec& dpre, const Vec& x,
                                     const Vec& w) {
  Vec dx(size_t(c.m * c.k), 0.0), dw(size_t(c.n * c.k), 0.0), db(size_t(c.n), 0.0);
  for (int64_t i = 0; i < c.m; ++i) {
    for (int64_t j = 0; j < c.n; ++j) {
      const double d = dpre[size_t(i * c.n + j)];
      db[size_t(j)] += d;
      for (int64_t l = 0; l < c.k; ++l) {
        dx[size_t(i * c.k + l)] += d * w[size_t(j * c.k + l)];
        dw[size_t(j * c.k + l)] += d * x[size_t(i * c.k + l)];
      }
    }
  }
  return {dx, dw, db};
}

double gelu_grad_ref(double x) {
  const double a = std::sqrt(2.0 / M_PI), u = a * (x + 0.044715 * x * x * x), th = std::tanh(u);
  return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * a * (1.0 + 3.0 * 0.044715 * x * x);
}

// dx = dy ⊙ gelu'(pre) through the backend's gelu_backward op, or, for f16 (which only the
// products take), on the host in float64 with one rounding to f16.
void gelu_backward_of(Backend& be, DType dt, const Tensor& pre, const Tensor& dy,
                      const Tensor& dx) {
  if (dt != DType::f16) {
    be.gelu_backward(pre, dy, dx);
    return;
  }
  const Vec p = values(be, pre), d = values(be, dy);
  Vec r(d.size());
  for (size_t i = 0; i < r.size(); ++i) r[i] = d[i] * gelu_grad_ref(p[i]);
  be.copy(on_dtype(be, dx.shape(), rounded(r, dt), dt), dx);
}

// The emulated tensor-core cost grows with the tile-padded product (one collective per warp
// mma, whole 64 × 64 × 32 tiles even at the edges), largest over the three layouts: the
// biggest shapes run on the CPU and real GPUs only.
bool too_slow_emulated(const std::string& backend, const MatmulCase& c) {
  auto pad = [](int64_t v, int64_t to) { return (v + to - 1) / to * to; };
  const int64_t fwd = pad(c.m, 64) * pad(c.n, 64) * pad(c.k, 32),
                dgrad = pad(c.m, 64) * pad(c.k, 64) * pad(c.n, 32),
                wgrad = pad(c.n, 64) * pad(c.k, 64) * pad(c.m, 32);
  return backend == "cuda-emu" && std::max({fwd, dgrad, wgrad}) > 8'000'000;
}

TEST_P(MatmulTest, ForwardAndGradientsMatchFloat64) {
  const auto& [run, c] = GetParam();
  const DType dt = run.dtype;
  auto be = make_backend(run.backend);
  const bool cpu = be->device().is_cpu();
  // f32 sums over a length-L contraction.
  auto sum_tol = [](int64_t len) { return 2e-6 * std::sqrt(double(len)) + 1e-6; };
  const double tol = sum_tol(c.k);
  Vec x = rounded(random_vec(c.m * c.k, 1), dt), w = rounded(random_vec(c.n * c.k, 2, 0.5), dt),
      b = rounded(random_vec(c.n, 3), dt);
  Tensor tx = on_dtype(*be, {c.m, c.k}, x, dt), tw = on_dtype(*be, {c.n, c.k}, w, dt);
  Tensor tb = c.bias ? on_dtype(*be, {c.n}, b, dt) : Tensor();
  auto zeros_dt = [&](const Shape& s) {
    Tensor t = be->empty(s, dt);
    be->zero(t);
    return t;
  };
  Tensor ty = zeros_dt({c.m, c.n});
  Tensor tpre = c.gelu ? zeros_dt({c.m, c.n}) : Tensor();
  be->matmul(tx, tw, tb, ty, c.gelu ? Activation::gelu : Activation::none, tpre, Tensor());
  const auto ref = matmul_ref(c, x, w, c.bias ? &b : nullptr);
  // bf16: y and pre are each rounded once from their f32 values.
  NURI_EXPECT_CLOSE(values(*be, ty), ref[0], tolerance_for(dt, tol, 1), "y");
  if (c.gelu) NURI_EXPECT_CLOSE(values(*be, tpre), ref[1], tolerance_for(dt, tol, 1), "pre-activation");

  // The residual epilogue: y = act(x·wᵀ + b) + r, with r in place (y holds r before the call:
  // the residual stream) on half the cases and a separate tensor on the others.
  {
    const Vec r = rounded(random_vec(c.m * c.n, 8), dt);
    Vec yr = ref[0];
    for (size_t i = 0; i < yr.size(); ++i) yr[i] += r[i];
    const bool in_place = (c.m + c.n) % 2 == 0;
    Tensor tr = on_dtype(*be, {c.m, c.n}, r, dt);
    Tensor out = in_place ? tr : zeros_dt({c.m, c.n});
    be->matmul(tx, tw, tb, out, c.gelu ? Activation::gelu : Activation::none, tpre, tr);
    // bf16: the sum is rounded once (the activation is not rounded before the add).
    const char* what = in_place ? "y += act(x·wᵀ + b) (residual in place)" : "act(x·wᵀ + b) + r";
    NURI_EXPECT_CLOSE(values(*be, out), yr, tolerance_for(dt, tol, 1), what);
  }

  // Backward of L = <dy, y>: dpre = dy ⊙ gelu'(pre) through the gelu_backward op, then the
  // three products.
  Vec dy = rounded(random_vec(c.m * c.n, 4), dt);
  Tensor tdy = on_dtype(*be, {c.m, c.n}, dy, dt);
  Tensor tdpre = tdy;
  if (c.gelu) {
    tdpre = zeros_dt({c.m, c.n});
    gelu_backward_of(*be, dt, tpre, tdy, tdpre);
  }
  Tensor tdx = zeros_dt({c.m, c.k}), tdw = zeros_f32(*be, {c.n, c.k});
  be->matmul_backward_input(tdpre, tw, tdx, false, Tensor());
  be->matmul_backward_weight(tdpre, tx, tdw, false);
  const Vec dx1 = values(*be, tdx), dw1 = values(*be, tdw);
  Vec db1;
  if (c.bias) {
    Tensor tdb = zeros_f32(*be, {c.n});
    be->matmul_backward_bias(tdpre, tdb, false);
    db1 = values(*be, tdb);
    be->matmul_backward_bias(tdpre, tdb, true);
    Vec twice = db1;
    for (double& v : twice) v *= 2;
    NURI_EXPECT_CLOSE(values(*be, tdb), twice, 1e-6, "dbias accumulated twice");
  }
  if (cpu) {
    GradCheck g;
    g.inputs = {x, w};
    g.input_names = {"x", "w"};
    g.grads = {dx1, dw1};
    if (c.bias) {
      g.inputs.push_back(b);
      g.input_names.push_back("bias");
      g.grads.push_back(db1);
    }
    g.forward = [&, &c = c](const std::vector<Vec>& in) {  // (clang: an init-capture)
      return std::vector<Vec>{matmul_ref(c, in[0], in[1], c.bias ? &in[2] : nullptr)[0]};
    };
    g.douts = {dy};
    const bool tiny = c.m * c.k + c.n * c.k <= 400;
    check_gradients(g, tiny, 1e-4, "matmul");
  } else {
    // Finite differences are too coarse for bf16: the analytic float64 gradients from the
    // reference pre-activation. dpre passes through the bf16 pre (gelu' moves by at most
    // |x·gelu''(x)| < 0.3 of a rounding: counted as one) and its own rounding; dx is rounded
    // once more; dw and dbias are f32 sums.
    Vec dpre = dy;
    if (c.gelu) {
      for (size_t i = 0; i < dpre.size(); ++i) dpre[i] *= gelu_grad_ref(ref[1][i]);
    }
    const auto gref = matmul_backward_ref(c, dpre, x, w);
    const double via_dpre = c.gelu ? 2 : 0;  // bf16 roundings dpre carries
    NURI_EXPECT_CLOSE(dx1, gref[0], tolerance_for(dt, sum_tol(c.n), via_dpre + 1), "dx");
    NURI_EXPECT_CLOSE(dw1, gref[1], tolerance_for(dt, sum_tol(c.m), via_dpre), "dw");
    if (c.bias) NURI_EXPECT_CLOSE(db1, gref[2], tolerance_for(dt, sum_tol(c.m), via_dpre), "dbias");
  }

  // accumulate = true adds to what is there: run again on top of the first result.
  be->matmul_backward_input(tdpre, tw, tdx, true, Tensor());
  be->matmul_backward_weight(tdpre, tx, tdw, true);
  Vec twice_dx = dx1, twice_dw = dw1;
  for (double& v : twice_dx) v *= 2;
  for (double& v : twice_dw) v *= 2;
  // bf16: dx + (the same product) is rounded once more.
  NURI_EXPECT_CLOSE(values(*be, tdx), twice_dx, tolerance_for(dt, 1e-6, 1), "dx accumulated twice");
  NURI_EXPECT_CLOSE(values(*be, tdw), twice_dw, 1e-6, "dw accumulated twice");
}

// The fused epilogue of matmul_backward_input (GELU backward of the layer below) equals the
// unfused pair: dx = (dy·w) ⊙ gelu'(pre).
TEST_P(MatmulTest, FusedGeluBackwardEqualsUnfused) {
  const auto& [run, c] = GetParam();
  const DType dt = run.dtype;
  auto be = make_backend(run.backend);
  Vec dy = rounded(random_vec(c.m * c.n, 5), dt), w = rounded(random_vec(c.n * c.k, 6), dt),
      pre = rounded(random_vec(c.m * c.k, 7), dt);
  Tensor tdy = on_dtype(*be, {c.m, c.n}, dy, dt), tw = on_dtype(*be, {c.n, c.k}, w, dt),
         tpre = on_dtype(*be, {c.m, c.k}, pre, dt);
  Tensor fused = be->empty({c.m, c.k}, dt), plain = be->empty({c.m, c.k}, dt);
  be->zero(fused);
  be->zero(plain);
  be->matmul_backward_input(tdy, tw, fused, false, tpre);
  be->matmul_backward_input(tdy, tw, plain, false, Tensor());
  gelu_backward_of(*be, dt, tpre, plain, plain);
  // bf16: fused rounds once, the unfused pair twice: 3 roundings between them. f32: the two
  // products need not come from one implementation (on a GPU cuBLASLt declines the f32 GELU
  // epilogue, so the fused call runs on nuri's kernel and the plain one on cuBLASLt), so their
  // sums over N may be ordered differently: the f32 sum tolerance used against float64 above
  // (seen on an H100: 4.1e-6 at N = 50304, where this allows 4.5e-4).
  NURI_EXPECT_CLOSE(values(*be, fused), values(*be, plain),
                    tolerance_for(dt, 2e-6 * std::sqrt(double(c.n)) + 1e-6, 3),
                    "fused vs unfused");
  // And against float64: dx = (dy·w) ⊙ gelu'(pre).
  Vec ref(size_t(c.m * c.k));
  for (int64_t i = 0; i < c.m; ++i) {
    for (int64_t l = 0; l < c.k; ++l) {
      double s = 0;
      for (int64_t j = 0; j < c.n; ++j) s += dy[size_t(i * c.n + j)] * w[size_t(j * c.k + l)];
      const double p = pre[size_t(i * c.k + l)], h = 1e-6;
      ref[size_t(i * c.k + l)] = s * (gelu_ref(p + h) - gelu_ref(p - h)) / (2 * h);
    }
  }
  // bf16: the output is rounded once.
  NURI_EXPECT_CLOSE(values(*be, fused), ref, tolerance_for(dt, 1e-5 * std::sqrt(double(c.n)), 1),
                    "fused vs float64");
}

// NURI_GEMM names the path of the CUDA backends' products; a value it does not know is refused
// with the ones it does.
TEST(MatmulPath, AnUnknownGemmPathIsAnErrorNamingTheChoices) {
  int runs = 0;
  for (const auto& name : backends()) {
    if (name == "cpu") continue;
    const auto [be, why] = make_backend_with(name, "NURI_GEMM", "fastest");
    EXPECT_FALSE(be);
    EXPECT_NE(why.find("NURI_GEMM: unknown GEMM path 'fastest'; use auto, nuri, sm90 or cublaslt"),
              std::string::npos)
        << why;
    ++runs;
  }
  if (runs == 0) GTEST_SKIP() << "no CUDA backend in this build";
}

// Row lengths that are multiples of 8 (bf16 rows 16-byte aligned) take the CUDA backend's
// cp.async tile loads, the others its element loads; M, N, K straddle the tiles (64², 128²,
// 128 × 256, 32 deep).
const MatmulCase kCases[] = {
    {1, 1, 1, true, false},    {7, 5, 3, true, true},     {3, 9, 13, false, true},
    {13, 65, 17, true, false}, {17, 33, 65, false, false}, {64, 96, 80, true, true},
    {130, 200, 77, true, true}, {256, 384, 257, false, true}, {65, 1, 7, true, true},
    {1, 130, 65, true, false},  {65, 7, 129, false, true},  {37, 136, 200, true, true},
    // Skinny products with the widths of GPT-2's layers (qkv 2304, fc 3072, d_model 768) and
    // its padded vocabulary (50304, too slow to emulate: CPU and real GPUs).
    {3, 2304, 16, true, false}, {2, 768, 24, false, true},  {5, 3072, 8, true, true},
    {4, 50304, 8, true, false},
    // For the sm_90a kernel (NURI_GEMM=sm90), aligned rows: rows for its second consumer (64
    // rows each) in the forward, and more 64-deep K steps than it has stages (4) in the weight
    // gradient (M = 264). Small, as each costs seconds under TSan.
    {72, 8, 16, true, true}, {264, 8, 16, true, false},
};

// Every dtype run × every case, but the shapes too big to emulate only where they are not.
// CUDA backends also run f16 (the other tensor-core input type; the products are the same
// template), on the cases up to 1M multiply-adds, with the same emulation limit as bf16 (the
// skinny GPT-2 widths then run in f16 on real GPUs only, as they do in bf16).
std::vector<std::tuple<DtypeRun, MatmulCase>> matmul_params() {
  std::vector<std::tuple<DtypeRun, MatmulCase>> r;
  for (const auto& run : dtype_runs())
    for (const auto& c : kCases)
      if (!too_slow_emulated(run.backend, c)) r.emplace_back(run, c);
  for (const auto& name : backends()) {
    if (name == "cpu") continue;
    for (const auto& c : kCases)
      if (c.m * c.n * c.k <= 1'000'000 && !too_slow_emulated(name, c)) {
        r.emplace_back(DtypeRun{name, DType::f16}, c);
      }
  }
  return r;
}

INSTANTIATE_TEST_SUITE_P(
    Ops, MatmulTest, ::testing::ValuesIn(matmul_params()),
    [](const auto& info) {
      const DtypeRun& run = std::get<0>(info.param);
      const MatmulCase& c = std::get<1>(info.param);
      // The f32 or f16 run of a bf16 backend.
      const bool other = run.dtype != act_dtype(run.backend);
      return sanitize_name(run.backend + (other ? std::string("_") + dtype_name(run.dtype) : "") +
                           "_" + std::to_string(c.m) + "x" +
                           std::to_string(c.n) + "x" + std::to_string(c.k) +
                           (c.bias ? "_bias" : "") + (c.gelu ? "_gelu" : ""));
    });

}  // namespace
}  // namespace nuri::test
