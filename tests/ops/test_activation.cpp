// GELU (tanh approximation) and SwiGLU, forward and backward, on every backend.
#include <algorithm>
#include <cmath>
#include <functional>

#include "ops/harness.h"

namespace nuri::test {
namespace {

double gelu_ref(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}
double silu_ref(double x) { return x / (1.0 + std::exp(-x)); }

// d/dx_k of L = Σ_o dy_o · y_o by central differences, for ops where x_k moves only the output
// out(k), whose value eval(x, o) is recomputed alone: the step and the numbers of
// check_gradients' element-by-element mode in O(n) instead of O(n²). The op tests also run
// ThreadSanitizer-instrumented (the emulated CUDA backend), where O(n²) would cost seconds.
Vec local_differences(Vec x, const Vec& dy, const std::function<size_t(size_t)>& out,
                      const std::function<double(const Vec&, size_t)>& eval) {
  Vec num(x.size());
  const double h = 1e-5;
  for (size_t k = 0; k < x.size(); ++k) {
    const double x0 = x[k], step = h * std::max(1.0, std::abs(x0));
    const size_t o = out(k);
    x[k] = x0 + step;
    const double yp = eval(x, o);
    x[k] = x0 - step;
    const double ym = eval(x, o);
    x[k] = x0;
    num[k] = dy[o] * (yp - ym) / (2 * step);
  }
  return num;
}

class ActivationTest : public ::testing::TestWithParam<std::tuple<std::string, int64_t, int64_t>> {
};

TEST_P(ActivationTest, GeluMatchesFloat64) {
  const auto& [name, m, f] = GetParam();
  auto be = make_backend(name);
  Vec x = act(*be, random_vec(m * f, 11, 2.0));
  Tensor tx = on(*be, {m, f}, x), ty = zeros(*be, {m, f});
  be->gelu(tx, ty);
  Vec ref(x.size());
  for (size_t i = 0; i < x.size(); ++i) ref[i] = gelu_ref(x[i]);
  NURI_EXPECT_CLOSE(values(*be, ty), ref, tolerance(*be, 1e-6, 1), "gelu");  // y rounded once

  Vec dy = act(*be, random_vec(m * f, 12));
  Tensor tdx = zeros(*be, {m, f});
  be->gelu_backward(tx, on(*be, {m, f}, dy), tdx);
  // Elementwise ops are cheap to difference element by element at every size.
  const Vec num = local_differences(
      x, dy, [](size_t k) { return k; }, [](const Vec& in, size_t o) { return gelu_ref(in[o]); });
  // dx rounded once
  NURI_EXPECT_CLOSE(values(*be, tdx), num, tolerance(*be, 1e-5, 1),
                    "gelu: d/dx vs finite differences");
}

TEST_P(ActivationTest, SwigluMatchesFloat64) {
  const auto& [name, m, f] = GetParam();
  auto be = make_backend(name);
  Vec x = act(*be, random_vec(m * 2 * f, 13, 2.0));
  Tensor tx = on(*be, {m, 2 * f}, x), ty = zeros(*be, {m, f});
  be->swiglu(tx, ty);
  // y[i, j] = silu(x[i, j]) · x[i, F + j]
  auto y_at = [f = size_t(f)](const Vec& in, size_t o) {
    const size_t gate = o / f * 2 * f + o % f;
    return silu_ref(in[gate]) * in[gate + f];
  };
  Vec ref(size_t(m * f));
  for (size_t o = 0; o < ref.size(); ++o) ref[o] = y_at(x, o);
  NURI_EXPECT_CLOSE(values(*be, ty), ref, tolerance(*be, 1e-6, 1), "swiglu");  // y rounded once

  Vec dy = act(*be, random_vec(m * f, 14));
  Tensor tdx = zeros(*be, {m, 2 * f});
  be->swiglu_backward(tx, on(*be, {m, f}, dy), tdx);
  // x[i, c] (gate for c < F, up otherwise) moves y[i, c mod F] only.
  auto out = [f = size_t(f)](size_t k) { return k / (2 * f) * f + k % f; };
  const Vec num = local_differences(x, dy, out, y_at);
  // dgate, dup rounded once
  NURI_EXPECT_CLOSE(values(*be, tdx), num, tolerance(*be, 1e-5, 1),
                    "swiglu: d/dx vs finite differences");
}

TEST_P(ActivationTest, GeluBackwardInPlace) {
  const auto& [name, m, f] = GetParam();
  auto be = make_backend(name);
  Vec x = act(*be, random_vec(m * f, 15)), dy = act(*be, random_vec(m * f, 16));
  Tensor tx = on(*be, {m, f}, x), tdy = on(*be, {m, f}, dy), out = zeros(*be, {m, f});
  be->gelu_backward(tx, tdy, out);
  be->gelu_backward(tx, tdy, tdy);  // dx aliases dy
  NURI_EXPECT_CLOSE(values(*be, tdy), values(*be, out), 0.0, "in-place gelu_backward");
}

// On the CUDA backends, F = 96 takes the 16-byte path (and M = 33 its grid-stride loop), F = 5 and
// F = 100 the scalar one; GELU's M·F not a multiple of 8 leaves a tail after the packs.
INSTANTIATE_TEST_SUITE_P(Ops, ActivationTest,
                         ::testing::Combine(::testing::ValuesIn(backends()),
                                            ::testing::Values(int64_t(1), int64_t(7), int64_t(33)),
                                            ::testing::Values(int64_t(1), int64_t(5), int64_t(96),
                                                              int64_t(100))),
                         [](const auto& info) {
                           return sanitize_name(std::get<0>(info.param) + "_" +
                                                std::to_string(std::get<1>(info.param)) + "x" +
                                                std::to_string(std::get<2>(info.param)));
                         });

}  // namespace
}  // namespace nuri::test
