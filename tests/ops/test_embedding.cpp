// Token + position embedding and its deterministic scatter-add backward, on every backend.
#include "ops/harness.h"

namespace nuri::test {
namespace {

struct EmbCase {
  int64_t b, t, v, c, tmax;
  bool positions;
};
void PrintTo(const EmbCase& c, std::ostream* os) {
  *os << "B=" << c.b << " T=" << c.t << " V=" << c.v << " C=" << c.c << " Tmax=" << c.tmax
      << (c.positions ? " positions" : "");
}

class EmbeddingTest : public ::testing::TestWithParam<std::tuple<DtypeRun, EmbCase>> {};

TEST_P(EmbeddingTest, ForwardAndBackwardMatchFloat64) {
  const auto& [run, c] = GetParam();
  const DType dt = run.dtype;
  auto be = make_backend(run.backend);
  // Tokens repeat (v small relative to b·t in some cases) so the scatter-add really adds.
  std::vector<int32_t> tok(size_t(c.b * c.t));
  Philox rng(21, 1);
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = int32_t(rng.bits(i) % uint32_t(c.v));
  Vec wte = rounded(random_vec(c.v * c.c, 22), dt), wpe = rounded(random_vec(c.tmax * c.c, 23), dt);
  Tensor ttok = on_i32(*be, {c.b, c.t}, tok);
  Tensor twte = on_dtype(*be, {c.v, c.c}, wte, dt);
  Tensor twpe = c.positions ? on_dtype(*be, {c.tmax, c.c}, wpe, dt) : Tensor();
  Tensor out = be->empty({c.b, c.t, c.c}, dt);
  be->zero(out);
  be->embedding(ttok, twte, twpe, out);
  auto forward = [&](const std::vector<Vec>& in) {
    Vec y(size_t(c.b * c.t * c.c));
    for (int64_t i = 0; i < c.b * c.t; ++i) {
      for (int64_t j = 0; j < c.c; ++j) {
        double v = in[0][size_t(tok[size_t(i)] * c.c + j)];
        if (c.positions) v += in[1][size_t((i % c.t) * c.c + j)];
        y[size_t(i * c.c + j)] = v;
      }
    }
    return std::vector<Vec>{y};
  };
  std::vector<Vec> inputs = {wte};
  if (c.positions) inputs.push_back(wpe);
  // bf16: wte + wpe is rounded once (a plain copy without wpe is exact).
  NURI_EXPECT_CLOSE(values(*be, out), forward(inputs)[0], tolerance_for(dt, 1e-7, 1),
                    "embedding forward");

  // The gradients are f32 sums of dout rows: no bf16 rounding after dout's own.
  Vec dout = rounded(random_vec(c.b * c.t * c.c, 24), dt);
  Tensor tdout = on_dtype(*be, {c.b, c.t, c.c}, dout, dt);
  Tensor tdwte = zeros_f32(*be, {c.v, c.c});
  Tensor tdwpe = c.positions ? zeros_f32(*be, {c.tmax, c.c}) : Tensor();
  be->embedding_backward(ttok, tdout, tdwte, tdwpe, false);
  GradCheck g;
  g.inputs = inputs;
  g.input_names = {"wte", "wpe"};
  g.forward = forward;
  g.douts = {dout};
  g.grads = {values(*be, tdwte)};
  if (c.positions) g.grads.push_back(values(*be, tdwpe));
  // The op is linear, so its float64 gradients are scatter-adds of dout, compared element by
  // element on every backend; finite differences check them element by element too where that
  // is cheap, and along random directions otherwise (element by element is one forward per
  // input element, inputs x outputs work: 3.8e8 for the B=4 case, 14 s of a Release run and
  // 35 s under ASan).
  Vec ref_dwte(size_t(c.v * c.c), 0.0), ref_dwpe(size_t(c.tmax * c.c), 0.0);
  for (int64_t i = 0; i < c.b * c.t; ++i) {
    for (int64_t j = 0; j < c.c; ++j) {
      ref_dwte[size_t(tok[size_t(i)] * c.c + j)] += dout[size_t(i * c.c + j)];
      ref_dwpe[size_t((i % c.t) * c.c + j)] += dout[size_t(i * c.c + j)];
    }
  }
  NURI_EXPECT_CLOSE(g.grads[0], ref_dwte, 1e-6, "dwte");
  if (c.positions) NURI_EXPECT_CLOSE(g.grads[1], ref_dwpe, 1e-6, "dwpe");
  const double fd_cost = double(wte.size() + (c.positions ? wpe.size() : 0)) * double(dout.size());
  check_gradients(g, fd_cost <= (run.backend == "cpu" ? 2e7 : 1e6), 1e-5, "embedding");

  // accumulate = true doubles it.
  be->embedding_backward(ttok, tdout, tdwte, tdwpe, true);
  Vec twice = g.grads[0];
  for (double& v : twice) v *= 2;
  NURI_EXPECT_CLOSE(values(*be, tdwte), twice, 1e-6, "accumulated dwte");
  if (c.positions) {
    Vec twice_pos = g.grads[1];
    for (double& v : twice_pos) v *= 2;
    NURI_EXPECT_CLOSE(values(*be, tdwpe), twice_pos, 1e-6, "accumulated dwpe");
  }
}

// C not a multiple of 4 or 8 takes the scalar CUDA kernels, the others the vector ones. The last
// case gives each token ~150 positions: the CUDA backward splits such runs into pieces and adds
// the pieces' partial sums in a second kernel.
const EmbCase kCases[] = {
    {1, 1, 1, 1, 1, true},      {2, 7, 5, 3, 9, true},      {3, 17, 11, 33, 17, false},
    {2, 65, 97, 70, 128, true}, {4, 64, 300, 64, 64, true}, {3, 150, 3, 40, 150, true},
};

INSTANTIATE_TEST_SUITE_P(
    Ops, EmbeddingTest,
    ::testing::Combine(::testing::ValuesIn(dtype_runs()), ::testing::ValuesIn(kCases)),
    [](const auto& info) {
      const auto& run = std::get<0>(info.param);
      const auto& c = std::get<1>(info.param);
      const bool extra = run.dtype != act_dtype(run.backend);
      return sanitize_name(run.backend + (extra ? "_" + std::string(dtype_name(run.dtype)) : "") +
                           "_B" + std::to_string(c.b) + "_T" + std::to_string(c.t) + "_V" +
                           std::to_string(c.v) + "_C" + std::to_string(c.c) +
                           (c.positions ? "_pos" : "_nopos"));
    });

// The backward gives the same bits on 1 thread and on all threads (no atomics, fixed order); on
// the emulated CUDA backend, each launch runs its blocks in a different random order. v = 2
// gives tokens long enough runs to be split into pieces.
TEST(EmbeddingDeterminism, BackwardBitsDoNotDependOnThreadCount) {
  for (const auto& name : backends()) {
    auto be = make_backend(name);
    for (const int64_t v : {int64_t(7), int64_t(2)}) {
      const int64_t b = 4, t = 64, c = 256;  // few tokens: heavy collisions
      std::vector<int32_t> tok(size_t(b * t));
      for (size_t i = 0; i < tok.size(); ++i) tok[i] = int32_t((i * 5) % size_t(v));
      Tensor ttok = on_i32(*be, {b, t}, tok);
      Tensor dout = on(*be, {b, t, c}, random_vec(b * t * c, 25));
      std::vector<Vec> results;
      for (int threads : {1, max_threads()}) {
        ThreadCount scope(threads);
        Tensor d = zeros_f32(*be, {v, c}), dp = zeros_f32(*be, {t, c});
        be->embedding_backward(ttok, dout, d, dp, false);
        results.push_back(values(*be, d));
        const Vec pos = values(*be, dp);
        results.back().insert(results.back().end(), pos.begin(), pos.end());
      }
      EXPECT_EQ(results[0], results[1]) << name << " with " << v << " distinct tokens";
    }
  }
}

}  // namespace
}  // namespace nuri::test
