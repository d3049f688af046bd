// AdamW over several tensors (bias correction, decoupled weight decay only where asked, the
// clipping scale) and the global gradient norm, on every backend, against float64.
#include <cmath>

#include "ops/harness.h"

namespace nuri::test {
namespace {

class OptimizerTest : public ::testing::TestWithParam<std::string> {};

TEST_P(OptimizerTest, GlobalNormMatchesFloat64) {
  auto be = make_backend(GetParam());
  const std::vector<int64_t> sizes = {1, 7, 1000, 70001};
  std::vector<Tensor> grads;
  double ss = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    Vec g = random_vec(sizes[i], 70 + i, 0.1 * double(i + 1));
    for (double x : g) ss += x * x;
    grads.push_back(on(*be, {sizes[i]}, g));
  }
  Tensor out = zeros(*be, {1});
  be->global_norm(grads, out);
  NURI_EXPECT_CLOSE(values(*be, out), Vec{std::sqrt(ss)}, 1e-6, "global norm");
}

TEST_P(OptimizerTest, AdamWStepsMatchFloat64) {
  auto be = make_backend(GetParam());
  AdamWParams hp;
  hp.lr = 1e-2f;
  hp.beta1 = 0.9f;
  hp.beta2 = 0.95f;
  hp.eps = 1e-8f;
  hp.weight_decay = 0.1f;
  const std::vector<int64_t> sizes = {5, 130, 4097};
  const std::vector<bool> decay = {false, true, true};
  std::vector<Vec> p, m, v;
  std::vector<AdamWTensor> ts;
  for (size_t i = 0; i < sizes.size(); ++i) {
    p.push_back(random_vec(sizes[i], 80 + i));
    m.push_back(Vec(size_t(sizes[i]), 0.0));
    v.push_back(Vec(size_t(sizes[i]), 0.0));
    ts.push_back({on(*be, {sizes[i]}, p[i]), zeros(*be, {sizes[i]}), zeros(*be, {sizes[i]}),
                  zeros(*be, {sizes[i]}), decay[i]});
  }
  for (int step = 1; step <= 5; ++step) {
    hp.step = step;
    hp.grad_scale = step == 3 ? 0.25f : 1.f;  // a clipped step
    for (size_t i = 0; i < sizes.size(); ++i) {
      Vec g = random_vec(sizes[i], 1000 * step + i);
      be->copy(host_tensor({sizes[i]}, g), ts[i].grad);
      const double b1 = hp.beta1, b2 = hp.beta2;
      for (size_t e = 0; e < g.size(); ++e) {
        const double gi = g[e] * hp.grad_scale;
        m[i][e] = b1 * m[i][e] + (1 - b1) * gi;
        v[i][e] = b2 * v[i][e] + (1 - b2) * gi * gi;
        const double mh = m[i][e] / (1 - std::pow(b1, step)), vh = v[i][e] / (1 - std::pow(b2, step));
        p[i][e] -= hp.lr * (mh / (std::sqrt(vh) + hp.eps) + (decay[i] ? hp.weight_decay * p[i][e] : 0.0));
      }
    }
    be->adamw(ts, hp);
    for (size_t i = 0; i < sizes.size(); ++i) {
      NURI_EXPECT_CLOSE(values(*be, ts[i].param), p[i], 2e-6, "param " << i << " after step " << step);
      NURI_EXPECT_CLOSE(values(*be, ts[i].m), m[i], 2e-6, "m " << i << " after step " << step);
      NURI_EXPECT_CLOSE(values(*be, ts[i].v), v[i], 2e-6, "v " << i << " after step " << step);
    }
  }
}

TEST(ClipCoefficient, ScalesOnlyAboveTheLimit) {
  EXPECT_FLOAT_EQ(clip_coefficient(0.5f, 1.f), 1.f);
  EXPECT_NEAR(clip_coefficient(4.f, 1.f), 0.25f, 1e-6f);
  EXPECT_FLOAT_EQ(clip_coefficient(4.f, 0.f), 1.f);  // clipping off
}

INSTANTIATE_TEST_SUITE_P(Ops, OptimizerTest, ::testing::ValuesIn(backends()),
                         [](const auto& info) { return sanitize_name(info.param); });

}  // namespace
}  // namespace nuri::test
