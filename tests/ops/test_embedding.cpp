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

class EmbeddingTest : public ::testing::TestWithParam<std::tuple<std::string, EmbCase>> {};

TEST_P(EmbeddingTest, ForwardAndBackwardMatchFloat64) {
  const auto& [name, c] = GetParam();
  auto be = make_backend(name);
  // Tokens repeat (v small relative to b·t in some cases) so the scatter-add really adds.
  std::vector<int32_t> tok(size_t(c.b * c.t));
  Philox rng(21, 1);
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = int32_t(rng.bits(i) % uint32_t(c.v));
  Vec wte = random_vec(c.v * c.c, 22), wpe = random_vec(c.tmax * c.c, 23);
  Tensor ttok = on_i32(*be, {c.b, c.t}, tok);
  Tensor twte = on(*be, {c.v, c.c}, wte);
  Tensor twpe = c.positions ? on(*be, {c.tmax, c.c}, wpe) : Tensor();
  Tensor out = zeros(*be, {c.b, c.t, c.c});
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
  NURI_EXPECT_CLOSE(values(*be, out), forward(inputs)[0], 1e-7, "embedding forward");

  Vec dout = random_vec(c.b * c.t * c.c, 24);
  Tensor tdwte = zeros(*be, {c.v, c.c});
  Tensor tdwpe = c.positions ? zeros(*be, {c.tmax, c.c}) : Tensor();
  be->embedding_backward(ttok, on(*be, {c.b, c.t, c.c}, dout), tdwte, tdwpe, false);
  GradCheck g;
  g.inputs = inputs;
  g.input_names = {"wte", "wpe"};
  g.forward = forward;
  g.douts = {dout};
  g.grads = {values(*be, tdwte)};
  if (c.positions) g.grads.push_back(values(*be, tdwpe));
  check_gradients(g, true, 1e-5, "embedding");  // linear: every size is cheap

  // accumulate = true doubles it.
  be->embedding_backward(ttok, on(*be, {c.b, c.t, c.c}, dout), tdwte, tdwpe, true);
  Vec twice = g.grads[0];
  for (double& v : twice) v *= 2;
  NURI_EXPECT_CLOSE(values(*be, tdwte), twice, 1e-6, "accumulated dwte");
}

const EmbCase kCases[] = {
    {1, 1, 1, 1, 1, true},    {2, 7, 5, 3, 9, true},       {3, 17, 11, 33, 17, false},
    {2, 65, 97, 70, 128, true}, {4, 64, 300, 64, 64, true},
};

INSTANTIATE_TEST_SUITE_P(
    Ops, EmbeddingTest,
    ::testing::Combine(::testing::ValuesIn(backends()), ::testing::ValuesIn(kCases)),
    [](const auto& info) {
      const auto& c = std::get<1>(info.param);
      return sanitize_name(std::get<0>(info.param) + "_B" + std::to_string(c.b) + "_T" +
                           std::to_string(c.t) + "_V" + std::to_string(c.v) + "_C" +
                           std::to_string(c.c) + (c.positions ? "_pos" : "_nopos"));
    });

// The backward gives the same bits on 1 thread and on all threads (no atomics, fixed order).
TEST(EmbeddingDeterminism, BackwardBitsDoNotDependOnThreadCount) {
  for (const auto& name : backends()) {
    auto be = make_backend(name);
    const int64_t b = 4, t = 64, v = 7, c = 256;  // few tokens: heavy collisions
    std::vector<int32_t> tok(size_t(b * t));
    for (size_t i = 0; i < tok.size(); ++i) tok[i] = int32_t((i * 5) % size_t(v));
    Tensor ttok = on_i32(*be, {b, t}, tok);
    Tensor dout = on(*be, {b, t, c}, random_vec(b * t * c, 25));
    std::vector<Vec> results;
    for (int threads : {1, max_threads()}) {
      ThreadCount scope(threads);
      Tensor d = zeros(*be, {v, c});
      be->embedding_backward(ttok, dout, d, Tensor(), false);
      results.push_back(values(*be, d));
    }
    EXPECT_EQ(results[0], results[1]) << name;
  }
}

}  // namespace
}  // namespace nuri::test
