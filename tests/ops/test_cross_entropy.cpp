// Fused softmax cross-entropy over a padded vocabulary with ignore_index, forward and backward,
// on every backend.
#include <cmath>

#include "ops/harness.h"

namespace nuri::test {
namespace {

struct CeCase {
  int64_t n, vocab, padded;
  int ignored_every;  // every k-th row is ignore_index (0: none)
};
void PrintTo(const CeCase& c, std::ostream* os) {
  *os << "N=" << c.n << " V=" << c.vocab << " padded=" << c.padded << " ignore-every=" << c.ignored_every;
}

constexpr int32_t kIgnore = -100;

class CrossEntropyTest : public ::testing::TestWithParam<std::tuple<std::string, CeCase>> {};

// One case with logits (and dlogits) of dtype dt.
void check_case(Backend& be, const CeCase& c, DType dt) {
  SCOPED_TRACE(std::string("logits ") + dtype_name(dt));
  Vec logits = random_vec(c.n * c.padded, 61, 3.0);
  // Padding columns hold large garbage: it must never enter the softmax.
  for (int64_t i = 0; i < c.n; ++i)
    for (int64_t j = c.vocab; j < c.padded; ++j) logits[size_t(i * c.padded + j)] = 50.0 + double(j);
  logits = rounded(logits, dt);  // the reference sees the logits the backend stores
  std::vector<int32_t> tg(size_t(c.n));
  Philox rng(62, 0);
  int64_t count = 0;
  for (int64_t i = 0; i < c.n; ++i) {
    const bool ignore = c.ignored_every > 0 && i % c.ignored_every == 0;
    tg[size_t(i)] = ignore ? kIgnore : int32_t(rng.bits(uint64_t(i)) % uint32_t(c.vocab));
    count += !ignore;
  }
  auto forward = [&](const std::vector<Vec>& in) {
    Vec losses(size_t(c.n), 0.0), lse(size_t(c.n));
    double total = 0;
    for (int64_t i = 0; i < c.n; ++i) {
      double mx = -1e300, z = 0;
      for (int64_t j = 0; j < c.vocab; ++j) mx = std::max(mx, in[0][size_t(i * c.padded + j)]);
      for (int64_t j = 0; j < c.vocab; ++j) z += std::exp(in[0][size_t(i * c.padded + j)] - mx);
      lse[size_t(i)] = mx + std::log(z);
      if (tg[size_t(i)] != kIgnore) {
        losses[size_t(i)] = lse[size_t(i)] - in[0][size_t(i * c.padded + tg[size_t(i)])];
        total += losses[size_t(i)];
      }
    }
    return std::vector<Vec>{Vec{count ? total / double(count) : 0.0}, losses, lse};
  };
  Tensor tl = on_dtype(be, {c.n, c.padded}, logits, dt), tt = on_i32(be, {c.n}, tg);
  Tensor losses = zeros_f32(be, {c.n}), lse = zeros_f32(be, {c.n}), loss = zeros_f32(be, {1});
  be.cross_entropy(tl, tt, c.vocab, kIgnore, losses, lse, loss);
  const auto ref = forward({logits});
  // Losses and lse are f32, computed in f32 from the stored logits: no bf16 rounding.
  const double tol = 2e-6;
  NURI_EXPECT_CLOSE(values(be, loss), ref[0], tol, "mean loss");
  NURI_EXPECT_CLOSE(values(be, losses), ref[1], tol, "per-row losses");
  NURI_EXPECT_CLOSE(values(be, lse), ref[2], tol, "lse");

  const float dloss = 0.75f;
  Tensor dl = be.empty({c.n, c.padded}, dt);
  be.zero(dl);
  be.cross_entropy_backward(tl, tt, lse, c.vocab, kIgnore, dloss, dl);
  const Vec grad = values(be, dl);
  for (int64_t i = 0; i < c.n; ++i) {
    for (int64_t j = 0; j < c.padded; ++j) {
      if (j >= c.vocab || tg[size_t(i)] == kIgnore) {
        ASSERT_EQ(grad[size_t(i * c.padded + j)], 0.0) << "row " << i << " col " << j;
      }
    }
  }
  GradCheck g;
  g.inputs = {logits};
  g.input_names = {"logits"};
  g.forward = [&](const std::vector<Vec>& in) { return std::vector<Vec>{forward(in)[0]}; };
  g.douts = {Vec{dloss}};
  g.grads = {grad};
  // dlogits is stored in the logits' dtype: one rounding when that is bf16.
  const double grad_tol = tolerance_for(dt, 1e-4, 1);
  check_gradients(g, c.n * c.padded <= 2000, grad_tol, "cross_entropy");

  // In place: dlogits aliasing logits gives the same result.
  be.cross_entropy_backward(tl, tt, lse, c.vocab, kIgnore, dloss, tl);
  NURI_EXPECT_CLOSE(values(be, tl), grad, 0.0, "in-place backward");
}

TEST_P(CrossEntropyTest, ForwardAndBackwardMatchFloat64) {
  const auto& [name, c] = GetParam();
  auto be = make_backend(name);
  check_case(*be, c, act_dtype(*be));
  // The CUDA backends also take f32 logits (the other kernel instantiation); the small cases
  // cover its vector and scalar paths.
  if (act_dtype(*be) != DType::f32 && c.n <= 5) check_case(*be, c, DType::f32);
}

// Padded widths whose rows are not 16-byte aligned (1, 33) take the scalar path on CUDA; vocab
// sizes are not multiples of the 256-thread block or of the 8-wide bf16 vector.
const CeCase kCases[] = {
    {1, 1, 1, 0},      {3, 5, 64, 0},       {7, 65, 128, 3},      {16, 100, 128, 5},
    {5, 30, 33, 2},    {33, 257, 320, 4},   {64, 1000, 1024, 0},  {4, 5003, 5016, 2},
    {8, 50257, 50304, 3},
};

// The emulator runs every CUDA thread (256 per row) as a fiber under ThreadSanitizer: the cases
// with many rows stay on the CPU; the ones up to 8 rows cover every code path of the kernels
// (scalar and vector rows, vocab tails, vocab larger than the block, ignored rows).
std::vector<std::tuple<std::string, CeCase>> ce_params() {
  std::vector<std::tuple<std::string, CeCase>> out;
  for (const auto& name : backends()) {
    for (const CeCase& c : kCases) {
      if (name == "cuda-emu" && (c.n > 8 || c.n * c.padded > 100000)) continue;
      out.emplace_back(name, c);
    }
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(
    Ops, CrossEntropyTest, ::testing::ValuesIn(ce_params()),
    [](const auto& info) {
      const auto& c = std::get<1>(info.param);
      return sanitize_name(std::get<0>(info.param) + "_N" + std::to_string(c.n) + "_V" +
                           std::to_string(c.vocab) + "_P" + std::to_string(c.padded) +
                           (c.ignored_every ? "_ignore" : ""));
    });

TEST(CrossEntropyEdge, AllRowsIgnoredGiveZeroLossAndGradient) {
  for (const auto& name : backends()) {
    auto be = make_backend(name);
    Tensor tl = on(*be, {4, 8}, random_vec(32, 63));
    Tensor tt = on_i32(*be, {4}, {kIgnore, kIgnore, kIgnore, kIgnore});
    Tensor losses = zeros_f32(*be, {4}), lse = zeros_f32(*be, {4});
    Tensor loss = on_f32(*be, {1}, Vec{123.0});
    be->cross_entropy(tl, tt, 8, kIgnore, losses, lse, loss);
    EXPECT_EQ(values(*be, loss)[0], 0.0) << name;
    Tensor dl = on(*be, {4, 8}, random_vec(32, 64));
    be->cross_entropy_backward(tl, tt, lse, 8, kIgnore, 1.f, dl);
    EXPECT_EQ(values(*be, dl), Vec(32, 0.0)) << name;
  }
}

TEST(CrossEntropyEdge, TargetOutsideTheVocabularyIsAnErrorNamingItsRow) {
  for (const auto& name : backends()) {
    auto be = make_backend(name);
    Tensor tl = on(*be, {3, 8}, random_vec(24, 65));
    Tensor tt = on_i32(*be, {3}, {0, kIgnore, 6});  // 6 is padding: outside vocab_size 5
    Tensor losses = zeros_f32(*be, {3}), lse = zeros_f32(*be, {3}), loss = zeros_f32(*be, {1});
    for (const bool backward : {false, true}) {
      try {
        if (backward) {
          be->cross_entropy_backward(tl, tt, lse, 5, kIgnore, 1.f, tl);
        } else {
          be->cross_entropy(tl, tt, 5, kIgnore, losses, lse, loss);
        }
        ADD_FAILURE() << name << ": no error for target 6 with vocab_size 5";
      } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("target 6 at row 2"), std::string::npos) << msg;
        EXPECT_NE(msg.find("[0, 5)"), std::string::npos) << msg;
      }
    }
  }
}

}  // namespace
}  // namespace nuri::test
