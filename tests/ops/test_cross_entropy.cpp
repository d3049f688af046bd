// Fused softmax cross-entropy over a padded vocabulary with ignore_index, forward and backward,
// on every backend; and its vocabulary-parallel form (shards of columns, then a merge), checked
// against the whole-vocabulary op.
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

// ---- vocabulary-parallel shards ---------------------------------------------------------------

// Columns [lo, hi) of a row-major [rows, cols] matrix.
Vec columns(const Vec& m, int64_t rows, int64_t cols, int64_t lo, int64_t hi) {
  Vec out;
  out.reserve(size_t(rows * (hi - lo)));
  for (int64_t i = 0; i < rows; ++i) {
    out.insert(out.end(), m.begin() + i * cols + lo, m.begin() + i * cols + hi);
  }
  return out;
}

class CrossEntropyShardTest : public ::testing::TestWithParam<std::tuple<std::string, CeCase>> {};

// Logits [N, Vp] split into S = 1, 2, 4 column blocks of Vp / S (the last ones holding the
// padding): each shard's lse and losses match float64 over its own columns, the merge of the
// S shards gives cross_entropy()'s losses, lse and loss, and the shards' backward, side by side,
// is cross_entropy_backward's bit for bit (the same float operations with the same lse).
void check_shards(Backend& be, const CeCase& c, DType dt) {
  SCOPED_TRACE(std::string("logits ") + dtype_name(dt));
  Vec logits = random_vec(c.n * c.padded, 71, 3.0);
  for (int64_t i = 0; i < c.n; ++i)  // padding holds large garbage: it must never enter
    for (int64_t j = c.vocab; j < c.padded; ++j)
      logits[size_t(i * c.padded + j)] = 50.0 + double(j);
  logits = rounded(logits, dt);
  std::vector<int32_t> tg(size_t(c.n));
  Philox rng(72, 0);
  int64_t count = 0;
  for (int64_t i = 0; i < c.n; ++i) {
    const bool ignore = c.ignored_every > 0 && i % c.ignored_every == 0;
    tg[size_t(i)] = ignore ? kIgnore : int32_t(rng.bits(uint64_t(i)) % uint32_t(c.vocab));
    count += !ignore;
  }
  tg[size_t(c.n - 1)] = int32_t(c.vocab - 1);  // a target in the last shard's real columns
  count += c.ignored_every > 0 && (c.n - 1) % c.ignored_every == 0;
  const auto at = [&](int64_t i, int64_t j) { return logits[size_t(i * c.padded + j)]; };
  Tensor tt = on_i32(be, {c.n}, tg);

  // The whole-vocabulary op, and float64.
  Tensor tl = on_dtype(be, {c.n, c.padded}, logits, dt);
  Tensor losses = zeros_f32(be, {c.n}), lse = zeros_f32(be, {c.n}), loss = zeros_f32(be, {1});
  be.cross_entropy(tl, tt, c.vocab, kIgnore, losses, lse, loss);
  Vec ref_lse(size_t(c.n)), ref_losses(size_t(c.n), 0.0);
  double total = 0;
  for (int64_t i = 0; i < c.n; ++i) {
    double z = 0;
    for (int64_t j = 0; j < c.vocab; ++j) z += std::exp(at(i, j));
    ref_lse[size_t(i)] = std::log(z);
    if (tg[size_t(i)] == kIgnore) continue;
    ref_losses[size_t(i)] = ref_lse[size_t(i)] - at(i, tg[size_t(i)]);
    total += ref_losses[size_t(i)];
  }
  const Vec ref_loss{count ? total / double(count) : 0.0};

  for (const int64_t shards : {1, 2, 4}) {
    SCOPED_TRACE(std::to_string(shards) + " shards");
    const int64_t w = c.padded / shards;
    ASSERT_LT((shards - 1) * w, c.vocab) << "every shard must start at a real column";
    Vec part_lse, part_losses;  // [S, N]
    std::vector<Tensor> shard_logits;
    for (int64_t s = 0; s < shards; ++s) {
      const int64_t lo = s * w, real = std::min(w, c.vocab - lo);
      shard_logits.push_back(
          on_dtype(be, {c.n, w}, columns(logits, c.n, c.padded, lo, lo + w), dt));
      Tensor sl = on_f32(be, {c.n}, random_vec(c.n, 73)),
             sls = on_f32(be, {c.n}, random_vec(c.n, 74));
      be.cross_entropy_shard(shard_logits.back(), tt, c.vocab, kIgnore, lo, sl, sls);
      Vec want_lse(size_t(c.n)), want_losses(size_t(c.n), 0.0);
      for (int64_t i = 0; i < c.n; ++i) {
        double z = 0;
        for (int64_t j = lo; j < lo + real; ++j) z += std::exp(at(i, j));
        want_lse[size_t(i)] = std::log(z);
        const int32_t t = tg[size_t(i)];
        if (t == kIgnore) continue;
        want_losses[size_t(i)] = want_lse[size_t(i)] - (t >= lo && t < lo + real ? at(i, t) : 0.0);
      }
      const Vec got_lse = values(be, sls), got_losses = values(be, sl);
      NURI_EXPECT_CLOSE(got_lse, want_lse, 2e-6, "lse of shard " << s);
      NURI_EXPECT_CLOSE(got_losses, want_losses, 2e-6, "losses of shard " << s);
      part_lse.insert(part_lse.end(), got_lse.begin(), got_lse.end());
      part_losses.insert(part_losses.end(), got_losses.begin(), got_losses.end());
    }
    Tensor m_losses = on_f32(be, {c.n}, random_vec(c.n, 75));
    Tensor m_lse = on_f32(be, {c.n}, random_vec(c.n, 76));
    Tensor m_loss = on_f32(be, {1}, Vec{123.0});
    be.cross_entropy_merge(on_f32(be, {shards, c.n}, part_lse),
                           on_f32(be, {shards, c.n}, part_losses), tt, kIgnore, m_losses, m_lse,
                           m_loss);
    // Against float64, the whole op's bound (check_case): the merge adds one f32 rounding per
    // shard lse and loss, combined in double. Against the whole op, 1e-6 of the largest value
    // (at most 1.3e-7 measured on the CPU and the emulator: about one f32 rounding).
    NURI_EXPECT_CLOSE(values(be, m_loss), ref_loss, 2e-6, "merged mean loss vs float64");
    NURI_EXPECT_CLOSE(values(be, m_losses), ref_losses, 2e-6, "merged losses vs float64");
    NURI_EXPECT_CLOSE(values(be, m_lse), ref_lse, 2e-6, "merged lse vs float64");
    NURI_EXPECT_CLOSE(values(be, m_loss), values(be, loss), 1e-6, "merged mean loss vs whole");
    NURI_EXPECT_CLOSE(values(be, m_losses), values(be, losses), 1e-6, "merged losses vs whole");
    NURI_EXPECT_CLOSE(values(be, m_lse), values(be, lse), 1e-6, "merged lse vs whole");
    const Vec ignored_losses = values(be, m_losses);
    for (int64_t i = 0; i < c.n; ++i) {
      if (tg[size_t(i)] == kIgnore) {
        EXPECT_EQ(ignored_losses[size_t(i)], 0.0) << "row " << i;
      }
    }

    // A shard without real columns (width 0, which 0 <= col_lo < vocab_size allows) has lse =
    // -inf and adds nothing: merging it in changes no bit.
    {
      Tensor empty_logits = on_dtype(be, {c.n, 0}, Vec(), dt);
      Tensor el = zeros_f32(be, {c.n}), els = zeros_f32(be, {c.n});
      be.cross_entropy_shard(empty_logits, tt, c.vocab, kIgnore, 0, el, els);
      const Vec e_lse = values(be, els), e_losses = values(be, el);
      for (int64_t i = 0; i < c.n; ++i) {
        EXPECT_EQ(e_lse[size_t(i)], -INFINITY) << "row " << i;
        EXPECT_EQ(e_losses[size_t(i)], tg[size_t(i)] == kIgnore ? 0.0 : -INFINITY) << "row " << i;
      }
      Vec plse = part_lse, plosses = part_losses;  // the empty shard first: order must not matter
      plse.insert(plse.begin(), e_lse.begin(), e_lse.end());
      plosses.insert(plosses.begin(), e_losses.begin(), e_losses.end());
      Tensor x_losses = zeros_f32(be, {c.n}), x_lse = zeros_f32(be, {c.n}),
             x_loss = zeros_f32(be, {1});
      be.cross_entropy_merge(on_f32(be, {shards + 1, c.n}, plse),
                             on_f32(be, {shards + 1, c.n}, plosses), tt, kIgnore, x_losses, x_lse,
                             x_loss);
      EXPECT_EQ(values(be, x_lse), values(be, m_lse)) << "merge with an empty shard: lse";
      EXPECT_EQ(values(be, x_losses), values(be, m_losses)) << "merge with an empty shard: losses";
      EXPECT_EQ(values(be, x_loss), values(be, m_loss)) << "merge with an empty shard: loss";
    }

    // Backward: the merged lse into both, so they must agree bit for bit.
    const float dloss = 0.75f;
    Tensor dl = be.empty({c.n, c.padded}, dt);
    be.cross_entropy_backward(tl, tt, m_lse, c.vocab, kIgnore, dloss, dl);
    const Vec whole_grad = values(be, dl);
    Vec side_by_side(whole_grad.size());
    for (int64_t s = 0; s < shards; ++s) {
      Tensor sdl = on_dtype(be, {c.n, w}, random_vec(c.n * w, 77), dt);
      be.cross_entropy_shard_backward(shard_logits[size_t(s)], tt, m_lse, c.vocab, kIgnore, s * w,
                                      dloss, sdl);
      const Vec g = values(be, sdl);
      for (int64_t i = 0; i < c.n; ++i)
        for (int64_t j = 0; j < w; ++j)
          side_by_side[size_t(i * c.padded + s * w + j)] = g[size_t(i * w + j)];
      // In place: dlogits aliasing the shard's logits.
      be.cross_entropy_shard_backward(shard_logits[size_t(s)], tt, m_lse, c.vocab, kIgnore, s * w,
                                      dloss, shard_logits[size_t(s)]);
      EXPECT_EQ(values(be, shard_logits[size_t(s)]), g) << "in-place backward of shard " << s;
    }
    // Bit for bit on the CPU and the emulator. On a GPU a shard's rows may take the other
    // (vector or scalar) loop than the whole row, where nvcc may contract scale·e - scale into
    // an fma differently: one f32 rounding, or one of the stored dtype.
    NURI_EXPECT_CLOSE(side_by_side, whole_grad,
                      be.name() == "cuda" ? tolerance_for(dt, 1e-6, 1) : 0.0,
                      "shards' dlogits side by side vs cross_entropy_backward");
  }
}

TEST_P(CrossEntropyShardTest, ShardsMergeToTheWholeVocabulary) {
  const auto& [name, c] = GetParam();
  auto be = make_backend(name);
  check_shards(*be, c, act_dtype(*be));
  if (act_dtype(*be) != DType::f32) check_shards(*be, c, DType::f32);
}

// Padded widths divisible by 4 whose 4-shard split leaves the last shard some real columns and
// some padding (V=30 of 36: [27, 36) holds 3 real ones). Shard widths 9 (scalar CUDA rows), 16,
// 32, 256 (vector rows), 1254 (scalar, vocab tail longer than the block).
const CeCase kShardCases[] = {
    {5, 30, 36, 2},
    {7, 50, 64, 3},
    {4, 1000, 1024, 2},
    {3, 5003, 5016, 0},
};

std::vector<std::tuple<std::string, CeCase>> ce_shard_params() {
  std::vector<std::tuple<std::string, CeCase>> out;
  for (const auto& name : backends()) {
    for (const CeCase& c : kShardCases) out.emplace_back(name, c);
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Ops, CrossEntropyShardTest, ::testing::ValuesIn(ce_shard_params()),
                         [](const auto& info) {
                           const auto& c = std::get<1>(info.param);
                           return sanitize_name(
                               std::get<0>(info.param) + "_N" + std::to_string(c.n) + "_V" +
                               std::to_string(c.vocab) + "_P" + std::to_string(c.padded) +
                               (c.ignored_every ? "_ignore" : ""));
                         });

}  // namespace
}  // namespace nuri::test
