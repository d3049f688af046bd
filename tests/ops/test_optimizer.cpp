// AdamW over several tensors (bias correction, decoupled weight decay only where asked, the
// clipping scale) and the global gradient norm, on every backend, against float64.
#include <algorithm>
#include <cmath>

#include "ops/harness.h"

namespace nuri::test {
namespace {

class OptimizerTest : public ::testing::TestWithParam<std::string> {};

// An f32 tensor [n] with the values of v that starts `offset` elements into a larger buffer, as
// the model's parameters are views into one flat buffer (offset 1: not 16-byte aligned).
Tensor on_f32_at(Backend& be, int64_t n, const Vec& v, int64_t offset) {
  if (offset == 0) return on_f32(be, {n}, v);
  Tensor buffer = zeros_f32(be, {n + offset});
  Tensor t = buffer.slice(0, offset, offset + n);
  be.copy(host_tensor({n}, v), t);
  return t;
}

// bf16 bits of a backend tensor (values() returns the bf16 values exactly as doubles).
std::vector<uint16_t> bf16_bits(Backend& be, const Tensor& t) {
  const Vec v = values(be, t);
  std::vector<uint16_t> bits(v.size());
  for (size_t i = 0; i < v.size(); ++i) bits[i] = uint16_t(f32_bits(float(v[i])) >> 16);
  return bits;
}

// Sizes that are not multiples of the 4096-element chunk or the 4-element vector, one of them
// (the last) misaligned: the CUDA kernels' scalar path.
const std::vector<int64_t> kSizes = {1, 7, 1000, 70001, 4099};
const std::vector<int64_t> kOffsets = {0, 0, 0, 0, 1};

TEST_P(OptimizerTest, GlobalNormMatchesFloat64) {
  auto be = make_backend(GetParam());
  std::vector<Tensor> grads;
  double ss = 0;
  for (size_t i = 0; i < kSizes.size(); ++i) {
    // Emulated threads are slow: 3 chunks of 4096 show the same on cuda-emu as 18 do.
    const int64_t n = GetParam() == "cuda-emu" ? std::min<int64_t>(kSizes[i], 9001) : kSizes[i];
    Vec g = random_vec(n, 70 + i, 0.1 * double(i + 1));
    for (double x : g) ss += x * x;
    grads.push_back(on_f32_at(*be, n, g, kOffsets[i]));
  }
  Tensor out = zeros_f32(*be, {1});
  be->global_norm(grads, out);
  NURI_EXPECT_CLOSE(values(*be, out), Vec{std::sqrt(ss)}, 1e-6, "global norm");
  // Deterministic: the same inputs give the same bits.
  Tensor again = zeros_f32(*be, {1});
  be->global_norm(grads, again);
  EXPECT_EQ(values(*be, again), values(*be, out));
  // No tensors: 0.
  be->global_norm({}, again);
  EXPECT_EQ(values(*be, again)[0], 0.0);
  // Gradients whose squares are past float's range (3e19² = 9e38) and a norm that is not:
  // squares summed in double on every backend, so none calls it infinite.
  const Vec big = {3e19, -4e19, 0, 1e19};
  be->global_norm({on_f32_at(*be, 4, big, 0), on_f32_at(*be, 4, big, 1)}, again);
  NURI_EXPECT_CLOSE(values(*be, again), Vec{std::sqrt(2 * 26e38)}, 1e-6, "norm past f32 squares");
}

TEST_P(OptimizerTest, AdamWStepsMatchFloat64) {
  auto be = make_backend(GetParam());
  AdamWParams hp;
  hp.lr = 1e-2f;
  hp.beta1 = 0.9f;
  hp.beta2 = 0.95f;
  hp.eps = 1e-8f;
  hp.weight_decay = 0.1f;
  // The last tensor starts one element into its buffers: not 16-byte aligned.
  const std::vector<int64_t> sizes = {5, 130, 4097, 301};
  const std::vector<bool> decay = {false, true, true, true};
  std::vector<Vec> p, m, v;
  std::vector<AdamWTensor> ts;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const int64_t n = sizes[i], off = i == 3 ? 1 : 0;
    p.push_back(random_vec(n, 80 + i));
    m.push_back(Vec(size_t(n), 0.0));
    v.push_back(Vec(size_t(n), 0.0));
    const Vec zero(size_t(n), 0.0);
    ts.push_back({on_f32_at(*be, n, p[i], off), on_f32_at(*be, n, zero, off),
                  on_f32_at(*be, n, zero, off), on_f32_at(*be, n, zero, off), decay[i]});
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

// The bf16 copy of each updated parameter: round to nearest even equals f32_to_bf16 of the f32
// result; stochastic rounding equals, bit for bit, the CPU backend's copy of the same f32 values
// (the CPU rounds the backend's results through an AdamW step with lr = 0, which leaves the
// values as they are), and is one of the two bf16 neighbours.
TEST_P(OptimizerTest, AdamWBf16CopyMatchesCpuBitForBit) {
  auto be = make_backend(GetParam());
  auto cpu = make_backend("cpu");
  const std::vector<int64_t> sizes = {5, 130, 4097, 301};
  for (const bool stochastic : {false, true}) {
    AdamWParams hp;
    hp.lr = 1e-2f;
    hp.weight_decay = 0.1f;
    hp.stochastic_rounding = stochastic;
    hp.seed = 0x0123456789abcdefull;
    std::vector<AdamWTensor> ts;
    for (size_t i = 0; i < sizes.size(); ++i) {
      const int64_t n = sizes[i], off = i == 3 ? 1 : 0;
      const Vec zero(size_t(n), 0.0);
      ts.push_back({on_f32_at(*be, n, random_vec(n, 90 + i), off), on_f32_at(*be, n, zero, off),
                    on_f32_at(*be, n, zero, off), on_f32_at(*be, n, zero, off), true,
                    be->empty({n}, DType::bf16)});
    }
    int64_t differs_from_nearest = 0;
    for (int step = 1; step <= 3; ++step) {
      hp.step = step;
      for (size_t i = 0; i < sizes.size(); ++i) {
        be->copy(host_tensor({sizes[i]}, random_vec(sizes[i], 2000 * step + i)), ts[i].grad);
      }
      be->adamw(ts, hp);
      // The CPU rounds the same f32 values (lr = 0: p - 0 · (0 + wd·p) = p).
      AdamWParams same = hp;
      same.lr = 0.f;
      std::vector<AdamWTensor> ref;
      for (size_t i = 0; i < sizes.size(); ++i) {
        const int64_t n = sizes[i];
        const Vec zero(size_t(n), 0.0);
        ref.push_back({on_f32(*cpu, {n}, values(*be, ts[i].param)), on_f32(*cpu, {n}, zero),
                       on_f32(*cpu, {n}, zero), on_f32(*cpu, {n}, zero), true,
                       cpu->empty({n}, DType::bf16)});
      }
      cpu->adamw(ref, same);
      for (size_t i = 0; i < sizes.size(); ++i) {
        const Vec param = values(*be, ts[i].param);
        const std::vector<uint16_t> got = bf16_bits(*be, ts[i].param_bf16);
        const std::vector<uint16_t> want = bf16_bits(*cpu, ref[i].param_bf16);
        ASSERT_EQ(values(*cpu, ref[i].param), param) << "lr = 0 changed the parameter";
        for (size_t e = 0; e < param.size(); ++e) {
          const uint32_t u = f32_bits(float(param[e]));
          const uint16_t nearest = f32_to_bf16(float(param[e])).bits;
          ASSERT_EQ(got[e], want[e]) << (stochastic ? "stochastic" : "nearest") << " tensor " << i
                                     << " element " << e << " step " << step;
          if (stochastic) {
            ASSERT_TRUE(got[e] == uint16_t(u >> 16) || got[e] == uint16_t((u >> 16) + 1))
                << "not a bf16 neighbour of " << param[e];
            differs_from_nearest += got[e] != nearest;
          } else {
            ASSERT_EQ(got[e], nearest) << "tensor " << i << " element " << e;
          }
        }
      }
    }
    if (stochastic) {
      EXPECT_GT(differs_from_nearest, 100) << "stochastic rounding never rounded away";
    }
  }
}

// Stochastic rounding is unbiased: the mean of many rounded copies of one value approaches the
// value, while round to nearest is off by a fixed fraction of the bf16 spacing.
TEST_P(OptimizerTest, StochasticRoundingIsUnbiased) {
  auto be = make_backend(GetParam());
  const int64_t n = 8191;
  // 1 + 0.3 ulp and -(2 + 0.85 ulp) in bf16 (ulp 2^-7 in [1, 2), 2^-6 in [2, 4)).
  const std::vector<double> targets = {1.0 + 0.3 / 128, -(2.0 + 0.85 / 64)};
  AdamWParams hp;
  hp.lr = 0.f;  // the parameters stay exactly as they are; only the copies are rounded
  hp.stochastic_rounding = true;
  hp.seed = 42;
  std::vector<AdamWTensor> ts;
  for (double x : targets) {
    const Vec zero(size_t(n), 0.0);
    ts.push_back({on_f32(*be, {n}, Vec(size_t(n), x)), on_f32(*be, {n}, zero),
                  on_f32(*be, {n}, zero), on_f32(*be, {n}, zero), true,
                  be->empty({n}, DType::bf16)});
  }
  std::vector<double> sum(targets.size(), 0.0);
  const int steps = 4;
  for (int step = 1; step <= steps; ++step) {
    hp.step = step;
    be->adamw(ts, hp);
    for (size_t i = 0; i < targets.size(); ++i) {
      for (double c : values(*be, ts[i].param_bf16)) sum[i] += c;
    }
  }
  for (size_t i = 0; i < targets.size(); ++i) {
    const double x = double(float(targets[i]));
    const double mean = sum[i] / double(n * steps);
    const double nearest_error = std::abs(double(bf16_to_f32(f32_to_bf16(float(x)))) - x);
    // 32764 draws of a two-point variable: the mean's standard deviation is at most 0.003 ulp;
    // the bound is 0.1 x (0.3 or 0.15) ulp.
    EXPECT_LT(std::abs(mean - x), 0.1 * nearest_error)
        << "value " << x << ": mean of stochastic copies " << mean << ", nearest-even error "
        << nearest_error;
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
