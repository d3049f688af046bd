// Causal and non-causal self-attention with grouped-query heads, forward (out, lse) and backward
// (dq, dk, dv), on every backend, against a float64 reference that materializes the scores.
#include <cmath>
#include <limits>

#include "ops/harness.h"

namespace nuri::test {
namespace {

struct AttnCase {
  int64_t b, t, h, hkv, d;
  bool causal;
  bool fused_qkv;  // q, k, v as strided views of one [B, T, (H + 2·Hkv)·D] buffer
};
void PrintTo(const AttnCase& c, std::ostream* os) {
  *os << "B=" << c.b << " T=" << c.t << " H=" << c.h << " Hkv=" << c.hkv << " D=" << c.d
      << (c.causal ? " causal" : " full") << (c.fused_qkv ? " fused-qkv" : "");
}

// q [B,T,H,D], k/v [B,T,Hkv,D] contiguous. Returns {out [B,T,H,D], lse [B,H,T]}.
std::vector<Vec> attention_ref(const AttnCase& c, const Vec& q, const Vec& k, const Vec& v) {
  Vec out(size_t(c.b * c.t * c.h * c.d), 0.0), lse(size_t(c.b * c.h * c.t));
  const double scale = 1.0 / std::sqrt(double(c.d));
  const int64_t group = c.h / c.hkv;
  Vec s(size_t(c.t));
  for (int64_t bi = 0; bi < c.b; ++bi)
    for (int64_t hi = 0; hi < c.h; ++hi) {
      const int64_t kh = hi / group;
      for (int64_t i = 0; i < c.t; ++i) {
        const int64_t nk = c.causal ? i + 1 : c.t;
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < nk; ++j) {
          double dot = 0;
          for (int64_t e = 0; e < c.d; ++e)
            dot += q[size_t(((bi * c.t + i) * c.h + hi) * c.d + e)] *
                   k[size_t(((bi * c.t + j) * c.hkv + kh) * c.d + e)];
          s[size_t(j)] = dot * scale;
          mx = std::max(mx, s[size_t(j)]);
        }
        double z = 0;
        for (int64_t j = 0; j < nk; ++j) z += std::exp(s[size_t(j)] - mx);
        for (int64_t j = 0; j < nk; ++j) {
          const double p = std::exp(s[size_t(j)] - mx) / z;
          for (int64_t e = 0; e < c.d; ++e)
            out[size_t(((bi * c.t + i) * c.h + hi) * c.d + e)] +=
                p * v[size_t(((bi * c.t + j) * c.hkv + kh) * c.d + e)];
        }
        lse[size_t((bi * c.h + hi) * c.t + i)] = mx + std::log(z);
      }
    }
  return {out, lse};
}

class AttentionTest : public ::testing::TestWithParam<std::tuple<std::string, AttnCase>> {};

TEST_P(AttentionTest, ForwardAndBackwardMatchFloat64) {
  const auto& [name, c] = GetParam();
  NURI_SKIP_UNSUPPORTED(name, "attention");  // bf16 tolerances come with the CUDA kernels
  auto be = make_backend(name);
  const Shape qs{c.b, c.t, c.h, c.d}, ks{c.b, c.t, c.hkv, c.d};
  Vec q = random_vec(c.b * c.t * c.h * c.d, 51), k = random_vec(c.b * c.t * c.hkv * c.d, 52),
      v = random_vec(c.b * c.t * c.hkv * c.d, 53);
  Tensor tq, tk, tv;
  if (c.fused_qkv) {
    // Pack [q | k | v] per token and take strided views.
    const int64_t width = (c.h + 2 * c.hkv) * c.d;
    Vec packed(size_t(c.b * c.t * width));
    for (int64_t r = 0; r < c.b * c.t; ++r) {
      for (int64_t e = 0; e < c.h * c.d; ++e)
        packed[size_t(r * width + e)] = q[size_t(r * c.h * c.d + e)];
      for (int64_t e = 0; e < c.hkv * c.d; ++e) {
        packed[size_t(r * width + c.h * c.d + e)] = k[size_t(r * c.hkv * c.d + e)];
        packed[size_t(r * width + (c.h + c.hkv) * c.d + e)] = v[size_t(r * c.hkv * c.d + e)];
      }
    }
    Tensor qkv = on(*be, {c.b, c.t, c.h + 2 * c.hkv, c.d}, packed);
    tq = qkv.slice(2, 0, c.h);
    tk = qkv.slice(2, c.h, c.h + c.hkv);
    tv = qkv.slice(2, c.h + c.hkv, c.h + 2 * c.hkv);
  } else {
    tq = on(*be, qs, q);
    tk = on(*be, ks, k);
    tv = on(*be, ks, v);
  }
  Tensor out = zeros(*be, qs), lse = zeros(*be, {c.b, c.h, c.t});
  AttentionOptions opt;
  opt.causal = c.causal;
  be->attention(tq, tk, tv, out, lse, opt);
  const auto ref = attention_ref(c, q, k, v);
  const double tol = 1e-5;
  NURI_EXPECT_CLOSE(values(*be, out), ref[0], tol, "out");
  NURI_EXPECT_CLOSE(values(*be, lse), ref[1], tol, "lse");

  Vec dout = random_vec(c.b * c.t * c.h * c.d, 54);
  Tensor dq = zeros(*be, qs), dk = zeros(*be, ks), dv = zeros(*be, ks);
  if (c.fused_qkv) {  // gradients into views of one fused buffer, as the model does
    Tensor dqkv = zeros(*be, {c.b, c.t, c.h + 2 * c.hkv, c.d});
    dq = dqkv.slice(2, 0, c.h);
    dk = dqkv.slice(2, c.h, c.h + c.hkv);
    dv = dqkv.slice(2, c.h + c.hkv, c.h + 2 * c.hkv);
  }
  be->attention_backward(tq, tk, tv, out, lse, on(*be, qs, dout), dq, dk, dv, opt);
  GradCheck g;
  g.inputs = {q, k, v};
  g.input_names = {"q", "k", "v"};
  g.forward = [&](const std::vector<Vec>& in) {
    return std::vector<Vec>{attention_ref(c, in[0], in[1], in[2])[0]};
  };
  g.douts = {dout};
  g.grads = {values(*be, dq), values(*be, dk), values(*be, dv)};
  const bool tiny = c.b * c.t * (c.h + 2 * c.hkv) * c.d <= 1200;
  check_gradients(g, tiny, 1e-4, "attention");
}

// Causal, GQA and MQA, non-causal, T = 1 and lengths that are not multiples of any tile,
// head dims 4..64, and the fused-QKV strided layout.
const AttnCase kCases[] = {
    {1, 1, 1, 1, 8, true, false},    {2, 7, 2, 1, 4, true, false},
    {1, 9, 4, 2, 8, false, true},    {1, 17, 2, 2, 8, true, true},
    {2, 65, 4, 2, 16, true, false},  {1, 130, 6, 1, 32, true, true},
    {2, 100, 4, 4, 64, false, false}, {1, 200, 2, 1, 64, true, false},
};

INSTANTIATE_TEST_SUITE_P(
    Ops, AttentionTest,
    ::testing::Combine(::testing::ValuesIn(backends()), ::testing::ValuesIn(kCases)),
    [](const auto& info) {
      const auto& c = std::get<1>(info.param);
      return sanitize_name(std::get<0>(info.param) + "_B" + std::to_string(c.b) + "_T" +
                           std::to_string(c.t) + "_H" + std::to_string(c.h) + "_KV" +
                           std::to_string(c.hkv) + "_D" + std::to_string(c.d) +
                           (c.causal ? "_causal" : "_full") + (c.fused_qkv ? "_fusedqkv" : ""));
    });

// The backward gives the same bits on 1 thread and on all threads (no order-dependent sums).
TEST(AttentionDeterminism, BackwardBitsDoNotDependOnThreadCount) {
  for (const auto& name : backends()) {
    if (!supports(name, "attention")) continue;
    auto be = make_backend(name);
    const int64_t b = 2, t = 200, h = 4, kv = 2, d = 32;  // big enough to run in parallel
    const Shape qs{b, t, h, d}, ks{b, t, kv, d};
    Tensor q = on(*be, qs, random_vec(b * t * h * d, 55)), k = on(*be, ks, random_vec(b * t * kv * d, 56)),
           v = on(*be, ks, random_vec(b * t * kv * d, 57)), dout = on(*be, qs, random_vec(b * t * h * d, 58));
    Tensor out = zeros(*be, qs), lse = zeros(*be, {b, h, t});
    be->attention(q, k, v, out, lse, AttentionOptions{});
    std::vector<Vec> results;
    for (int threads : {1, max_threads()}) {
      ThreadCount scope(threads);
      Tensor dq = zeros(*be, qs), dk = zeros(*be, ks), dv = zeros(*be, ks);
      be->attention_backward(q, k, v, out, lse, dout, dq, dk, dv, AttentionOptions{});
      Vec all = values(*be, dq);
      for (const auto& x : {values(*be, dk), values(*be, dv)}) all.insert(all.end(), x.begin(), x.end());
      results.push_back(all);
    }
    EXPECT_EQ(results[0], results[1]) << name;
  }
}

}  // namespace
}  // namespace nuri::test
