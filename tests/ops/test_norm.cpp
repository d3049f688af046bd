// LayerNorm and RMSNorm fused with the residual add, forward and backward, on every backend.
// The gradient check covers the whole fused op: L = <dy, y> + <dsum, sum>, so the gradient
// reaching x and residual is ds = dsum + (norm backward of dy).
#include <cmath>

#include "ops/harness.h"

namespace nuri::test {
namespace {

struct NormCase {
  int64_t m, c;
  bool residual;
  bool bias;  // layernorm only
};
void PrintTo(const NormCase& c, std::ostream* os) {
  *os << "M=" << c.m << " C=" << c.c << (c.residual ? " residual" : "") << (c.bias ? " bias" : "");
}

// s = x (+ r); y = (s - mean) · rstd · w (+ b). Returns {y, sum, mean, rstd}.
std::vector<Vec> norm_ref(bool center, const NormCase& c, const Vec& x, const Vec* r, const Vec& w,
                          const Vec* b, double eps) {
  Vec y(x.size()), sum(x.size()), mean(size_t(c.m)), rstd(size_t(c.m));
  for (int64_t i = 0; i < c.m; ++i) {
    double mu = 0, var = 0;
    for (int64_t j = 0; j < c.c; ++j) {
      const size_t k = size_t(i * c.c + j);
      sum[k] = x[k] + (r ? (*r)[k] : 0.0);
      mu += sum[k];
    }
    mu = center ? mu / double(c.c) : 0.0;
    for (int64_t j = 0; j < c.c; ++j) {
      const double d = sum[size_t(i * c.c + j)] - mu;
      var += d * d;
    }
    const double rs = 1.0 / std::sqrt(var / double(c.c) + eps);
    for (int64_t j = 0; j < c.c; ++j) {
      const size_t k = size_t(i * c.c + j);
      y[k] = (sum[k] - mu) * rs * w[size_t(j)] + (b ? (*b)[size_t(j)] : 0.0);
    }
    mean[size_t(i)] = mu;
    rstd[size_t(i)] = rs;
  }
  return {y, sum, mean, rstd};
}

class NormTest : public ::testing::TestWithParam<std::tuple<std::string, bool, NormCase>> {};

TEST_P(NormTest, ForwardAndBackwardMatchFloat64) {
  const auto& [name, center, c] = GetParam();
  const bool bias = center && c.bias;
  auto be = make_backend(name);
  const bool bf16 = act_dtype(*be) == DType::bf16;
  const float eps = 1e-5f;
  Vec x = random_vec(c.m * c.c, 31, 1.5), r = act(*be, random_vec(c.m * c.c, 32)),
      w = act(*be, random_vec(c.c, 33)), b = act(*be, random_vec(c.c, 34));
  for (double& v : x) v += 0.7;  // a non-zero mean for layernorm to remove
  x = act(*be, x);
  Tensor tx = on(*be, {c.m, c.c}, x), tr = c.residual ? on(*be, {c.m, c.c}, r) : Tensor();
  Tensor tw = on(*be, {c.c}, w), tb = bias ? on(*be, {c.c}, b) : Tensor();
  Tensor tsum = c.residual ? zeros(*be, {c.m, c.c}) : Tensor();
  Tensor ty = zeros(*be, {c.m, c.c});
  Tensor tmean = zeros_f32(*be, {c.m}), trstd = zeros_f32(*be, {c.m});
  if (center) {
    be->layernorm(tx, tr, tw, tb, eps, tsum, ty, tmean, trstd);
  } else {
    be->rmsnorm(tx, tr, tw, eps, tsum, ty, trstd);
  }
  auto ref = norm_ref(center, c, x, c.residual ? &r : nullptr, w, bias ? &b : nullptr, eps);
  if (bf16 && c.residual) {
    // The saved s is bf16 by contract and the statistics describe that stored s (the backward
    // reads it back), so y, mean and rstd are referenced from s rounded once to bf16.
    const Vec s_bf16 = rounded(ref[1], DType::bf16);
    auto from_s = norm_ref(center, c, s_bf16, nullptr, w, bias ? &b : nullptr, eps);
    ref = {from_s[0], ref[1], from_s[2], from_s[3]};
  }
  const double tol = 4e-6;
  // y is rounded once to bf16; s rounds x + residual once; mean and rstd are f32 of s.
  NURI_EXPECT_CLOSE(values(*be, ty), ref[0], tolerance(*be, tol, 1), "y");
  if (c.residual) NURI_EXPECT_CLOSE(values(*be, tsum), ref[1], tolerance(*be, 1e-7, 1), "sum");
  if (center) NURI_EXPECT_CLOSE(values(*be, tmean), ref[2], tol, "mean");
  NURI_EXPECT_CLOSE(values(*be, trstd), ref[3], tol, "rstd");

  Vec dy = act(*be, random_vec(c.m * c.c, 35)), dsum = act(*be, random_vec(c.m * c.c, 36));
  Tensor ts = c.residual ? tsum : tx;
  Tensor tdsum = c.residual ? on(*be, {c.m, c.c}, dsum) : Tensor();
  Tensor tds = zeros(*be, {c.m, c.c}), tdw = zeros_f32(*be, {c.c});
  Tensor tdb = bias ? zeros_f32(*be, {c.c}) : Tensor();
  if (center) {
    be->layernorm_backward(on(*be, {c.m, c.c}, dy), ts, tw, tmean, trstd, tdsum, tds, tdw, tdb,
                           false);
  } else {
    be->rmsnorm_backward(on(*be, {c.m, c.c}, dy), ts, tw, trstd, tdsum, tds, tdw, false);
  }
  GradCheck g;
  g.input_names = {"x", "weight"};
  g.inputs = {x, w};
  const Vec ds = values(*be, tds);
  g.grads = {ds, values(*be, tdw)};
  if (c.residual) {
    g.inputs.push_back(r);
    g.input_names.push_back("residual");
    g.grads.push_back(ds);  // d/dx = d/dresidual = ds
  }
  if (bias) {
    g.inputs.push_back(b);
    g.input_names.push_back("bias");
    g.grads.push_back(values(*be, tdb));
  }
  g.forward = [&, center = center, &c = c](const std::vector<Vec>& in) {
    const Vec* rr = c.residual ? &in[2] : nullptr;
    const Vec* bb = bias ? &in[c.residual ? 3 : 2] : nullptr;
    auto o = norm_ref(center, c, in[0], rr, in[1], bb, eps);
    return c.residual ? std::vector<Vec>{o[0], o[1]} : std::vector<Vec>{o[0]};
  };
  g.douts = c.residual ? std::vector<Vec>{dy, dsum} : std::vector<Vec>{dy};
  // Against the float64 function of x (+ residual): the backward sees s rounded once (with
  // residual) and ds is rounded once more; dweight/dbias are f32 sums of bf16 products.
  check_gradients(g, c.m * c.c <= 200, tolerance(*be, 1e-4, c.residual ? 2 : 1),
                  center ? "layernorm" : "rmsnorm");

  // accumulate = true adds onto the previous parameter gradients.
  const Vec dw1 = values(*be, tdw);
  if (center) {
    be->layernorm_backward(on(*be, {c.m, c.c}, dy), ts, tw, tmean, trstd, tdsum, tds, tdw, tdb,
                           true);
  } else {
    be->rmsnorm_backward(on(*be, {c.m, c.c}, dy), ts, tw, trstd, tdsum, tds, tdw, true);
  }
  Vec twice = dw1;
  for (double& v : twice) v *= 2;
  NURI_EXPECT_CLOSE(values(*be, tdw), twice, 1e-6, "accumulated dweight");

  // ds may alias dsum (the residual stream's gradient buffer updated in place).
  if (c.residual) {
    Tensor inplace = on(*be, {c.m, c.c}, dsum);
    Tensor scratch_w = zeros_f32(*be, {c.c});
    if (center) {
      be->layernorm_backward(on(*be, {c.m, c.c}, dy), ts, tw, tmean, trstd, inplace, inplace,
                             scratch_w, bias ? zeros_f32(*be, {c.c}) : Tensor(), false);
    } else {
      be->rmsnorm_backward(on(*be, {c.m, c.c}, dy), ts, tw, trstd, inplace, inplace, scratch_w,
                           false);
    }
    NURI_EXPECT_CLOSE(values(*be, inplace), ds, 0.0, "ds aliasing dsum");
  }
}

// No C = 1: the normalized value is then constant (layernorm) or ±1 (rmsnorm) and the gradient
// with respect to x is pure cancellation, which fp32 cannot resolve relative to its size.
// On the CUDA backends C <= 1024 runs a warp per row and larger C a block per row; C = 12300
// with bias keeps the layernorm's parameter-gradient accumulators out of shared memory; C not
// a multiple of 8 takes the scalar (not 16-byte) path.
const NormCase kCases[] = {
    {2, 3, false, false},   {1, 2, true, true},   {3, 7, true, true},     {5, 16, false, true},
    {17, 65, true, false},  {64, 96, true, true}, {20, 768, true, true},  {130, 768, true, true},
    {3, 1031, true, true},  {4, 2048, false, true}, {2, 12300, true, true},
};

INSTANTIATE_TEST_SUITE_P(
    Ops, NormTest,
    ::testing::Combine(::testing::ValuesIn(backends()), ::testing::Bool(), ::testing::ValuesIn(kCases)),
    [](const auto& info) {
      const auto& c = std::get<2>(info.param);
      return sanitize_name(std::get<0>(info.param) +
                           (std::get<1>(info.param) ? "_layernorm_" : "_rmsnorm_") +
                           std::to_string(c.m) + "x" + std::to_string(c.c) +
                           (c.residual ? "_residual" : "") + (c.bias ? "_bias" : ""));
    });

}  // namespace
}  // namespace nuri::test
