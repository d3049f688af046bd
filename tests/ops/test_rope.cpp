// Rotary position embedding (rotate-half), forward and backward, including strided views of a
// fused QKV buffer and in-place use, on every backend.
#include <cmath>

#include "ops/harness.h"

namespace nuri::test {
namespace {

struct RopeCase {
  int64_t b, t, h, d, pos_offset;
};
void PrintTo(const RopeCase& c, std::ostream* os) {
  *os << "B=" << c.b << " T=" << c.t << " H=" << c.h << " D=" << c.d << " offset=" << c.pos_offset;
}

Vec rope_ref(const RopeCase& c, const Vec& x, double theta) {
  Vec y(x.size());
  const int64_t half = c.d / 2;
  for (int64_t bi = 0; bi < c.b; ++bi)
    for (int64_t ti = 0; ti < c.t; ++ti)
      for (int64_t hi = 0; hi < c.h; ++hi) {
        const size_t base = size_t(((bi * c.t + ti) * c.h + hi) * c.d);
        for (int64_t i = 0; i < half; ++i) {
          const double a = double(c.pos_offset + ti) * std::pow(theta, -2.0 * double(i) / double(c.d));
          const double x1 = x[base + size_t(i)], x2 = x[base + size_t(i + half)];
          y[base + size_t(i)] = x1 * std::cos(a) - x2 * std::sin(a);
          y[base + size_t(i + half)] = x2 * std::cos(a) + x1 * std::sin(a);
        }
      }
  return y;
}

class RopeTest : public ::testing::TestWithParam<std::tuple<std::string, RopeCase>> {};

TEST_P(RopeTest, ForwardAndBackwardMatchFloat64) {
  const auto& [name, c] = GetParam();
  auto be = make_backend(name);
  const float theta = 10000.f;
  const Shape shape{c.b, c.t, c.h, c.d};
  const int64_t n = c.b * c.t * c.h * c.d;
  Vec x = random_vec(n, 41);
  Tensor tx = on(*be, shape, x), ty = zeros(*be, shape);
  be->rope(tx, ty, theta, c.pos_offset);
  // Angles up to ~pos·1 rad in float: the error grows with the position.
  const double tol = 2e-6 * (1.0 + double(c.pos_offset + c.t) / 64.0) * backend_tol(name);
  NURI_EXPECT_CLOSE(values(*be, ty), rope_ref(c, x, theta), tol, "rope");

  Vec dy = random_vec(n, 42);
  Tensor tdx = zeros(*be, shape);
  be->rope_backward(on(*be, shape, dy), tdx, theta, c.pos_offset);
  GradCheck g;
  g.inputs = {x};
  g.input_names = {"x"};
  g.forward = [&](const std::vector<Vec>& in) { return std::vector<Vec>{rope_ref(c, in[0], theta)}; };
  g.douts = {dy};
  g.grads = {values(*be, tdx)};
  check_gradients(g, n <= 512, 1e-4 * backend_tol(name), "rope");

  // In place, on q and k that are views of a fused [B, T, H + 2H, D] buffer.
  Vec fused = random_vec(c.b * c.t * 3 * c.h * c.d, 43);
  Tensor tf = on(*be, {c.b, c.t, 3 * c.h, c.d}, fused);
  Tensor q = tf.slice(2, 0, c.h), k = tf.slice(2, c.h, 2 * c.h), v = tf.slice(2, 2 * c.h, 3 * c.h);
  const Vec q0 = values(*be, q), v0 = values(*be, v);
  be->rope(q, q, theta, c.pos_offset);
  NURI_EXPECT_CLOSE(values(*be, q), rope_ref(c, q0, theta), tol, "rope in place on a strided view");
  NURI_EXPECT_CLOSE(values(*be, v), v0, 0.0, "v untouched");
  be->rope_backward(q, q, theta, c.pos_offset);
  NURI_EXPECT_CLOSE(values(*be, q), q0, tol, "backward inverts forward");
}

const RopeCase kCases[] = {
    {1, 1, 1, 2, 0}, {2, 7, 3, 8, 0}, {1, 17, 2, 16, 5}, {2, 65, 4, 64, 0}, {1, 130, 2, 128, 1000},
};

INSTANTIATE_TEST_SUITE_P(
    Ops, RopeTest, ::testing::Combine(::testing::ValuesIn(backends()), ::testing::ValuesIn(kCases)),
    [](const auto& info) {
      const auto& c = std::get<1>(info.param);
      return sanitize_name(std::get<0>(info.param) + "_B" + std::to_string(c.b) + "_T" +
                           std::to_string(c.t) + "_H" + std::to_string(c.h) + "_D" +
                           std::to_string(c.d) + "_off" + std::to_string(c.pos_offset));
    });

}  // namespace
}  // namespace nuri::test
