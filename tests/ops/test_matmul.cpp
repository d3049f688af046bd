// matmul (y = act(x·Wᵀ + b)) and its input, weight and bias gradients, with and without the
// fused GELU epilogues, on every backend, against float64.
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

class MatmulTest : public ::testing::TestWithParam<std::tuple<std::string, MatmulCase>> {};

TEST_P(MatmulTest, ForwardAndGradientsMatchFloat64) {
  const auto& [name, c] = GetParam();
  NURI_SKIP_UNSUPPORTED(name, "matmul");  // bf16 tolerances come with the CUDA kernels
  auto be = make_backend(name);
  const double tol = 2e-6 * std::sqrt(double(c.k)) + 1e-6;
  Vec x = random_vec(c.m * c.k, 1), w = random_vec(c.n * c.k, 2, 0.5),
      b = random_vec(c.n, 3);
  Tensor tx = on(*be, {c.m, c.k}, x), tw = on(*be, {c.n, c.k}, w);
  Tensor tb = c.bias ? on(*be, {c.n}, b) : Tensor();
  Tensor ty = zeros(*be, {c.m, c.n});
  Tensor tpre = c.gelu ? zeros(*be, {c.m, c.n}) : Tensor();
  be->matmul(tx, tw, tb, ty, c.gelu ? Activation::gelu : Activation::none, tpre);
  const auto ref = matmul_ref(c, x, w, c.bias ? &b : nullptr);
  NURI_EXPECT_CLOSE(values(*be, ty), ref[0], tol, "y");
  if (c.gelu) NURI_EXPECT_CLOSE(values(*be, tpre), ref[1], tol, "pre-activation");

  // Backward of L = <dy, y>: dpre = dy ⊙ gelu'(pre) through the gelu_backward op, then the
  // three products.
  Vec dy = random_vec(c.m * c.n, 4);
  Tensor tdy = on(*be, {c.m, c.n}, dy);
  Tensor tdpre = tdy;
  if (c.gelu) {
    tdpre = zeros(*be, {c.m, c.n});
    be->gelu_backward(tpre, tdy, tdpre);
  }
  Tensor tdx = zeros(*be, {c.m, c.k}), tdw = zeros(*be, {c.n, c.k});
  be->matmul_backward_input(tdpre, tw, tdx, false, Tensor());
  be->matmul_backward_weight(tdpre, tx, tdw, false);
  GradCheck g;
  g.inputs = {x, w};
  g.input_names = {"x", "w"};
  g.grads = {values(*be, tdx), values(*be, tdw)};
  if (c.bias) {
    Tensor tdb = zeros(*be, {c.n});
    be->matmul_backward_bias(tdpre, tdb, false);
    g.inputs.push_back(b);
    g.input_names.push_back("bias");
    g.grads.push_back(values(*be, tdb));
  }
  g.forward = [&](const std::vector<Vec>& in) {
    return std::vector<Vec>{matmul_ref(c, in[0], in[1], c.bias ? &in[2] : nullptr)[0]};
  };
  g.douts = {dy};
  const bool tiny = c.m * c.k + c.n * c.k <= 400;
  check_gradients(g, tiny, 1e-4, "matmul");

  // accumulate = true adds to what is there: run again on top of the first result.
  be->matmul_backward_input(tdpre, tw, tdx, true, Tensor());
  be->matmul_backward_weight(tdpre, tx, tdw, true);
  Vec twice_dx = g.grads[0], twice_dw = g.grads[1];
  for (double& v : twice_dx) v *= 2;
  for (double& v : twice_dw) v *= 2;
  NURI_EXPECT_CLOSE(values(*be, tdx), twice_dx, 1e-6, "dx accumulated twice");
  NURI_EXPECT_CLOSE(values(*be, tdw), twice_dw, 1e-6, "dw accumulated twice");
}

// The fused epilogue of matmul_backward_input (GELU backward of the layer below) equals the
// unfused pair: dx = (dy·w) ⊙ gelu'(pre).
TEST_P(MatmulTest, FusedGeluBackwardEqualsUnfused) {
  const auto& [name, c] = GetParam();
  NURI_SKIP_UNSUPPORTED(name, "matmul");  // bf16 tolerances come with the CUDA kernels
  auto be = make_backend(name);
  Vec dy = random_vec(c.m * c.n, 5), w = random_vec(c.n * c.k, 6), pre = random_vec(c.m * c.k, 7);
  Tensor tdy = on(*be, {c.m, c.n}, dy), tw = on(*be, {c.n, c.k}, w),
         tpre = on(*be, {c.m, c.k}, pre);
  Tensor fused = zeros(*be, {c.m, c.k}), plain = zeros(*be, {c.m, c.k});
  be->matmul_backward_input(tdy, tw, fused, false, tpre);
  be->matmul_backward_input(tdy, tw, plain, false, Tensor());
  be->gelu_backward(tpre, plain, plain);
  NURI_EXPECT_CLOSE(values(*be, fused), values(*be, plain), 1e-6, "fused vs unfused");
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
  NURI_EXPECT_CLOSE(values(*be, fused), ref, 1e-5 * std::sqrt(double(c.n)), "fused vs float64");
}

const MatmulCase kCases[] = {
    {1, 1, 1, true, false},    {7, 5, 3, true, true},     {3, 9, 13, false, true},
    {13, 65, 17, true, false}, {17, 33, 65, false, false}, {64, 96, 80, true, true},
    {130, 200, 77, true, true}, {256, 384, 257, false, true},
};

INSTANTIATE_TEST_SUITE_P(
    Ops, MatmulTest, ::testing::Combine(::testing::ValuesIn(backends()), ::testing::ValuesIn(kCases)),
    [](const auto& info) {
      const auto& c = std::get<1>(info.param);
      return sanitize_name(std::get<0>(info.param) + "_" + std::to_string(c.m) + "x" +
                           std::to_string(c.n) + "x" + std::to_string(c.k) +
                           (c.bias ? "_bias" : "") + (c.gelu ? "_gelu" : ""));
    });

}  // namespace
}  // namespace nuri::test
