// Rotary position embedding (rotate-half), forward and backward, including strided views of a
// fused QKV buffer and in-place use, unscaled and with the linear and llama3 scalings, on every
// backend.
#include <cmath>
#include <string>

#include "ops/harness.h"

namespace nuri::test {
namespace {

struct RopeCase {
  int64_t b, t, h, d, pos_offset;
  RopeScalingKind scaling = RopeScalingKind::none;
};
void PrintTo(const RopeCase& c, std::ostream* os) {
  *os << "B=" << c.b << " T=" << c.t << " H=" << c.h << " D=" << c.d << " offset=" << c.pos_offset
      << " scaling=" << rope_scaling_name(c.scaling);
}

// The cases' scalings: linear by 4; llama3 by 8 with low/high frequency factors 1 and 4 over an
// original context of 64, so the wavelengths of head dims 16 and up fall in all three bands
// (below 16, 16 to 64, above 64).
Rope rope_of(const RopeCase& c) {
  Rope r;
  r.theta = 10000.0;
  r.scaling = c.scaling;
  r.factor = c.scaling == RopeScalingKind::linear ? 4.0 : 8.0;
  r.low_freq_factor = 1.0;
  r.high_freq_factor = 4.0;
  r.original_context = 64.0;
  return r;
}

// Frequency of pair i, written after transformers' _compute_linear_scaling_rope_parameters and
// _compute_llama3_parameters (in float64).
double ref_frequency(const RopeCase& c, int64_t i, double theta) {
  const double f = 1.0 / std::pow(theta, 2.0 * double(i) / double(c.d));
  if (c.scaling == RopeScalingKind::linear) return f / 4.0;
  if (c.scaling == RopeScalingKind::none) return f;
  const double wavelen = 2.0 * M_PI / f, low_freq_wavelen = 64.0 / 1.0,
               high_freq_wavelen = 64.0 / 4.0;
  const double scaled = wavelen > low_freq_wavelen ? f / 8.0 : f;
  const double smooth = (64.0 / wavelen - 1.0) / (4.0 - 1.0);
  const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
  return medium ? (1.0 - smooth) * scaled / 8.0 + smooth * scaled : scaled;
}

Vec rope_ref(const RopeCase& c, const Vec& x, double theta) {
  Vec y(x.size());
  const int64_t half = c.d / 2;
  for (int64_t bi = 0; bi < c.b; ++bi)
    for (int64_t ti = 0; ti < c.t; ++ti)
      for (int64_t hi = 0; hi < c.h; ++hi) {
        const size_t base = size_t(((bi * c.t + ti) * c.h + hi) * c.d);
        for (int64_t i = 0; i < half; ++i) {
          const double a = double(c.pos_offset + ti) * ref_frequency(c, i, theta);
          const double x1 = x[base + size_t(i)], x2 = x[base + size_t(i + half)];
          y[base + size_t(i)] = x1 * std::cos(a) - x2 * std::sin(a);
          y[base + size_t(i + half)] = x2 * std::cos(a) + x1 * std::sin(a);
        }
      }
  return y;
}

class RopeTest : public ::testing::TestWithParam<std::tuple<DtypeRun, RopeCase>> {};

TEST_P(RopeTest, ForwardAndBackwardMatchFloat64) {
  const auto& [run, c] = GetParam();
  const DType dt = run.dtype;
  auto be = make_backend(run.backend);
  const double theta = 10000.0;
  const Rope rope = rope_of(c);
  const Shape shape{c.b, c.t, c.h, c.d};
  const int64_t n = c.b * c.t * c.h * c.d;
  Vec x = rounded(random_vec(n, 41), dt);
  Tensor tx = on_dtype(*be, shape, x, dt), ty = be->empty(shape, dt);
  be->zero(ty);
  be->rope(tx, ty, rope, c.pos_offset);
  // Angles up to ~pos·1 rad in float: the error grows with the position. bf16: the output is
  // rounded once.
  const double f32_tol = 2e-6 * (1.0 + double(c.pos_offset + c.t) / 64.0);
  const double tol = tolerance_for(dt, f32_tol, 1);
  NURI_EXPECT_CLOSE(values(*be, ty), rope_ref(c, x, theta), tol, "rope");

  Vec dy = rounded(random_vec(n, 42), dt);
  Tensor tdx = be->empty(shape, dt);
  be->zero(tdx);
  be->rope_backward(on_dtype(*be, shape, dy, dt), tdx, rope, c.pos_offset);
  GradCheck g;
  g.inputs = {x};
  g.input_names = {"x"};
  g.forward = [&, &c = c](const std::vector<Vec>& in) {
    return std::vector<Vec>{rope_ref(c, in[0], theta)};
  };
  g.douts = {dy};
  g.grads = {values(*be, tdx)};
  // bf16: dx is rounded once.
  check_gradients(g, n <= 512, tolerance_for(dt, 1e-4, 1), "rope");

  // In place, on q and k that are views of a fused [B, T, H + 2H, D] buffer.
  Vec fused = rounded(random_vec(c.b * c.t * 3 * c.h * c.d, 43), dt);
  Tensor tf = on_dtype(*be, {c.b, c.t, 3 * c.h, c.d}, fused, dt);
  Tensor q = tf.slice(2, 0, c.h);
  // The heads [h0, h0 + H) of the fused buffer (read whole: device copies are contiguous).
  auto heads = [&, &c = c](int64_t h0) {
    const Vec all = values(*be, tf);
    Vec out;
    for (int64_t bt = 0; bt < c.b * c.t; ++bt) {
      const auto first = all.begin() + (bt * 3 * c.h + h0) * c.d;
      out.insert(out.end(), first, first + c.h * c.d);
    }
    return out;
  };
  const Vec q0 = heads(0), k0 = heads(c.h), v0 = heads(2 * c.h);
  be->rope(q, q, rope, c.pos_offset);
  NURI_EXPECT_CLOSE(heads(0), rope_ref(c, q0, theta), tol, "rope in place on a strided view");
  NURI_EXPECT_CLOSE(heads(c.h), k0, 0.0, "k untouched");
  NURI_EXPECT_CLOSE(heads(2 * c.h), v0, 0.0, "v untouched");
  be->rope_backward(q, q, rope, c.pos_offset);
  // bf16: rounded after the forward and after the backward. A rotation keeps the norm of each
  // pair, so the forward's rounding (<= 2^-9 of the pair's norm, <= √2·2^-9 of max |q|) comes
  // back at most that large: √2·2^-9 + 2^-9 < 2 roundings' 2·2^-8.
  NURI_EXPECT_CLOSE(heads(0), q0, tolerance_for(dt, f32_tol, 2), "backward inverts forward");
}

// Shapes with D/2 a multiple of 8 take the 16-byte vector kernels (bf16 and f32), the others the
// scalar ones; B·T·H is rarely a multiple of the block.
const RopeCase kCases[] = {
    {1, 1, 1, 2, 0},        {2, 7, 3, 8, 0},  {1, 17, 2, 16, 5},     {2, 65, 4, 64, 0},
    {1, 130, 2, 128, 1000}, {3, 5, 5, 12, 7}, {2, 9, 3, 48, 100000},
    {2, 65, 4, 64, 0, RopeScalingKind::llama3},   {1, 17, 2, 16, 5, RopeScalingKind::llama3},
    {2, 9, 3, 48, 1000, RopeScalingKind::llama3}, {2, 7, 3, 8, 0, RopeScalingKind::linear},
    {1, 130, 2, 128, 3, RopeScalingKind::linear},
};

INSTANTIATE_TEST_SUITE_P(
    Ops, RopeTest, ::testing::Combine(::testing::ValuesIn(dtype_runs()), ::testing::ValuesIn(kCases)),
    [](const auto& info) {
      const auto& run = std::get<0>(info.param);
      const auto& c = std::get<1>(info.param);
      const bool extra = run.dtype != act_dtype(run.backend);
      return sanitize_name(run.backend + (extra ? "_" + std::string(dtype_name(run.dtype)) : "") +
                           "_B" + std::to_string(c.b) + "_T" + std::to_string(c.t) + "_H" +
                           std::to_string(c.h) + "_D" + std::to_string(c.d) + "_off" +
                           std::to_string(c.pos_offset) +
                           (c.scaling == RopeScalingKind::none
                                ? ""
                                : "_" + std::string(rope_scaling_name(c.scaling))));
    });

// f32 angles are as good as the CPU backend's double-precision ones at any position: the error
// does not grow with the position (the tolerance of the suite above allows it to).
TEST(RopePrecision, F32AnglesStayExactAtLargePositions) {
  const RopeCase c{1, 3, 2, 64, 0};
  const Shape shape{c.b, c.t, c.h, c.d};
  const Vec x = random_vec(c.b * c.t * c.h * c.d, 44);
  for (const auto& name : backends()) {
    auto be = make_backend(name);
    for (int64_t offset :
         {int64_t(0), int64_t(1000), int64_t(100000), int64_t(1) << 20, (int64_t(1) << 24) - c.t}) {
      RopeCase at = c;
      at.pos_offset = offset;
      Tensor ty = be->empty(shape, DType::f32);
      be->rope(on_f32(*be, shape, x), ty, Rope{}, offset);
      NURI_EXPECT_CLOSE(values(*be, ty), rope_ref(at, x, 10000.0), 1e-6,
                        name << " at position offset " << offset);
    }
  }
}

}  // namespace
}  // namespace nuri::test
