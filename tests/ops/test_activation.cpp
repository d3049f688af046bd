// GELU (tanh approximation) and SwiGLU, forward and backward, on every backend.
#include <cmath>

#include "ops/harness.h"

namespace nuri::test {
namespace {

double gelu_ref(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}
double silu_ref(double x) { return x / (1.0 + std::exp(-x)); }

class ActivationTest : public ::testing::TestWithParam<std::tuple<std::string, int64_t, int64_t>> {
};

TEST_P(ActivationTest, GeluMatchesFloat64) {
  const auto& [name, m, f] = GetParam();
  auto be = make_backend(name);
  Vec x = random_vec(m * f, 11, 2.0);
  Tensor tx = on(*be, {m, f}, x), ty = zeros(*be, {m, f});
  be->gelu(tx, ty);
  Vec ref(x.size());
  for (size_t i = 0; i < x.size(); ++i) ref[i] = gelu_ref(x[i]);
  NURI_EXPECT_CLOSE(values(*be, ty), ref, 1e-6 * backend_tol(name), "gelu");

  Vec dy = random_vec(m * f, 12);
  Tensor tdx = zeros(*be, {m, f});
  be->gelu_backward(tx, on(*be, {m, f}, dy), tdx);
  GradCheck g;
  g.inputs = {x};
  g.input_names = {"x"};
  g.forward = [](const std::vector<Vec>& in) {
    Vec y(in[0].size());
    for (size_t i = 0; i < y.size(); ++i) y[i] = gelu_ref(in[0][i]);
    return std::vector<Vec>{y};
  };
  g.douts = {dy};
  g.grads = {values(*be, tdx)};
  // Elementwise ops are cheap to difference element by element at every size.
  check_gradients(g, true, 1e-5 * backend_tol(name), "gelu");
}

TEST_P(ActivationTest, SwigluMatchesFloat64) {
  const auto& [name, m, f] = GetParam();
  auto be = make_backend(name);
  Vec x = random_vec(m * 2 * f, 13, 2.0);
  Tensor tx = on(*be, {m, 2 * f}, x), ty = zeros(*be, {m, f});
  be->swiglu(tx, ty);
  auto forward = [m = m, f = f](const std::vector<Vec>& in) {
    Vec y(size_t(m * f));
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < f; ++j) {
        y[size_t(i * f + j)] = silu_ref(in[0][size_t(i * 2 * f + j)]) * in[0][size_t(i * 2 * f + f + j)];
      }
    }
    return std::vector<Vec>{y};
  };
  NURI_EXPECT_CLOSE(values(*be, ty), forward({x})[0], 1e-6 * backend_tol(name), "swiglu");

  Vec dy = random_vec(m * f, 14);
  Tensor tdx = zeros(*be, {m, 2 * f});
  be->swiglu_backward(tx, on(*be, {m, f}, dy), tdx);
  GradCheck g;
  g.inputs = {x};
  g.input_names = {"x"};
  g.forward = forward;
  g.douts = {dy};
  g.grads = {values(*be, tdx)};
  check_gradients(g, true, 1e-5 * backend_tol(name), "swiglu");
}

TEST_P(ActivationTest, GeluBackwardInPlace) {
  const auto& [name, m, f] = GetParam();
  auto be = make_backend(name);
  Vec x = random_vec(m * f, 15), dy = random_vec(m * f, 16);
  Tensor tx = on(*be, {m, f}, x), tdy = on(*be, {m, f}, dy), out = zeros(*be, {m, f});
  be->gelu_backward(tx, tdy, out);
  be->gelu_backward(tx, tdy, tdy);  // dx aliases dy
  NURI_EXPECT_CLOSE(values(*be, tdy), values(*be, out), 0.0, "in-place gelu_backward");
}

INSTANTIATE_TEST_SUITE_P(Ops, ActivationTest,
                         ::testing::Combine(::testing::ValuesIn(backends()),
                                            ::testing::Values(int64_t(1), int64_t(7), int64_t(33)),
                                            ::testing::Values(int64_t(1), int64_t(5), int64_t(96))),
                         [](const auto& info) {
                           return sanitize_name(std::get<0>(info.param) + "_" +
                                                std::to_string(std::get<1>(info.param)) + "x" +
                                                std::to_string(std::get<2>(info.param)));
                         });

}  // namespace
}  // namespace nuri::test
