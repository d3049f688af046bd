// Token + position embedding and its deterministic scatter-add backward, on every backend; and
// the vocabulary-parallel shards (tensor parallelism), checked against the whole-table ops.
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
  auto forward = [&, &c = c](const std::vector<Vec>& in) {
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

// ---- vocabulary-parallel shards ---------------------------------------------------------------

struct ShardCase {
  int64_t b, t, v, vp, c;  // vp: the padded table's rows, split into S shards of vp / S
  bool positions;
};
void PrintTo(const ShardCase& c, std::ostream* os) {
  *os << "B=" << c.b << " T=" << c.t << " V=" << c.v << " Vp=" << c.vp << " C=" << c.c
      << (c.positions ? " positions" : "");
}

class EmbeddingShardTest : public ::testing::TestWithParam<std::tuple<DtypeRun, ShardCase>> {};

// S = 1, 2, 4 shards of the padded table [Vp, C], each a tensor [Vp / S, C] holding the rows
// [s·Vp/S, (s+1)·Vp/S): the shards' outputs (wpe given to shard 0 only) sum to embedding() of the
// whole table, and their dwte stacked is embedding_backward's, bit for bit (the same sums in the
// same order). The padding rows >= V are never a token, so the last shards of the cases hold some
// (the 4-shard split of V=5, Vp=8 has a shard of padding only).
TEST_P(EmbeddingShardTest, ShardsMatchTheWholeTable) {
  const auto& [run, c] = GetParam();
  const DType dt = run.dtype;
  auto be = make_backend(run.backend);
  std::vector<int32_t> tok(size_t(c.b * c.t));
  Philox rng(31, 1);
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = int32_t(rng.bits(i) % uint32_t(c.v));
  tok[0] = int32_t(c.v - 1);  // the last real row: in the last shard that has real rows
  const Vec wte = rounded(random_vec(c.vp * c.c, 32), dt);
  const Vec wpe = rounded(random_vec(c.t * c.c, 33), dt);
  const Vec dout = rounded(random_vec(c.b * c.t * c.c, 34), dt);
  Tensor ttok = on_i32(*be, {c.b, c.t}, tok);
  Tensor twpe = c.positions ? on_dtype(*be, {c.t, c.c}, wpe, dt) : Tensor();
  Tensor tdout = on_dtype(*be, {c.b, c.t, c.c}, dout, dt);

  Tensor out = be->empty({c.b, c.t, c.c}, dt);
  be->embedding(ttok, on_dtype(*be, {c.vp, c.c}, wte, dt), twpe, out);
  const Vec whole = values(*be, out);
  Tensor dwte = zeros_f32(*be, {c.vp, c.c});
  Tensor dwpe = c.positions ? zeros_f32(*be, {c.t, c.c}) : Tensor();
  be->embedding_backward(ttok, tdout, dwte, dwpe, false);
  const Vec whole_dwte = values(*be, dwte);
  const Vec whole_dwpe = c.positions ? values(*be, dwpe) : Vec();

  Vec ref(size_t(c.b * c.t * c.c));  // float64
  for (int64_t i = 0; i < c.b * c.t; ++i) {
    for (int64_t j = 0; j < c.c; ++j) {
      ref[size_t(i * c.c + j)] = wte[size_t(tok[size_t(i)] * c.c + j)] +
                                 (c.positions ? wpe[size_t((i % c.t) * c.c + j)] : 0.0);
    }
  }

  for (const int64_t shards : {1, 2, 4}) {
    SCOPED_TRACE(std::to_string(shards) + " shards");
    const int64_t vl = c.vp / shards;
    // The shards' outputs summed in f32, in shard order, as an all-reduce would: a token's row
    // comes from one shard and every other adds 0 (or wpe, on shard 0), so on f32 this is the
    // whole table's wte + wpe exactly.
    std::vector<float> sum(whole.size(), 0.f);
    Vec stacked_dwte;
    for (int64_t s = 0; s < shards; ++s) {
      const Vec rows(wte.begin() + s * vl * c.c, wte.begin() + (s + 1) * vl * c.c);
      Tensor shard = on_dtype(*be, {vl, c.c}, rows, dt);
      Tensor shard_out = on_dtype(*be, {c.b, c.t, c.c}, random_vec(c.b * c.t * c.c, 35), dt);
      be->embedding_shard(ttok, shard, s == 0 ? twpe : Tensor(), shard_out, s * vl, c.v);
      const Vec o = values(*be, shard_out);
      for (size_t i = 0; i < o.size(); ++i) sum[i] += float(o[i]);
      // accumulate = false overwrites (garbage before).
      Tensor shard_dwte = on_f32(*be, {vl, c.c}, random_vec(vl * c.c, 36));
      Tensor shard_dwpe =
          c.positions ? on_f32(*be, {c.t, c.c}, random_vec(c.t * c.c, 37)) : Tensor();
      be->embedding_shard_backward(ttok, tdout, shard_dwte, shard_dwpe, s * vl, c.v, false);
      const Vec g = values(*be, shard_dwte);
      stacked_dwte.insert(stacked_dwte.end(), g.begin(), g.end());
      if (c.positions) {
        EXPECT_EQ(values(*be, shard_dwpe), whole_dwpe) << "dwpe of shard " << s;
      }
      // accumulate = true adds the rows one by one onto the sum: 2x up to f32 rounding.
      be->embedding_shard_backward(ttok, tdout, shard_dwte, shard_dwpe, s * vl, c.v, true);
      Vec twice = g;
      for (double& x : twice) x *= 2;
      NURI_EXPECT_CLOSE(values(*be, shard_dwte), twice, 1e-6, "accumulated dwte of shard " << s);
      if (c.positions) {
        Vec twice_pos = whole_dwpe;
        for (double& x : twice_pos) x *= 2;
        NURI_EXPECT_CLOSE(values(*be, shard_dwpe), twice_pos, 1e-6,
                          "accumulated dwpe of shard " << s);
      }
    }
    const Vec summed(sum.begin(), sum.end());
    if (dt == DType::f32 || !c.positions) {
      EXPECT_EQ(summed, whole) << "Σ shards vs embedding()";
    } else {
      // bf16: a token of shard 0 gets bf16(wte + wpe) from it, any other wte and wpe unrounded
      // (summed in f32 here): one rounding from the float64 sum either way, as the whole op.
      NURI_EXPECT_CLOSE(summed, ref, tolerance_for(dt, 1e-7, 1), "Σ shards vs float64");
      NURI_EXPECT_CLOSE(summed, whole, tolerance_for(dt, 1e-7, 1), "Σ shards vs embedding()");
    }
    EXPECT_EQ(stacked_dwte, whole_dwte) << "stacked shard dwte vs embedding_backward";
  }
  // The whole op itself, against float64 (it is the reference of the shards above).
  NURI_EXPECT_CLOSE(whole, ref, tolerance_for(dt, 1e-7, 1), "embedding forward");
}

// C = 3 takes the scalar CUDA kernels, 16 and 64 the vector ones. V=5 with 450 positions gives
// each token ~90 of them: the CUDA backward splits those runs into pieces; its 4-shard split
// [0, 2), [2, 4), [4, 6), [6, 8) has a shard with one real row and one of padding only.
const ShardCase kShardCases[] = {
    {2, 7, 50, 64, 3, true},
    {3, 17, 50, 64, 16, false},
    {3, 150, 5, 8, 40, true},
    {4, 64, 300, 304, 64, true},
};

INSTANTIATE_TEST_SUITE_P(
    Ops, EmbeddingShardTest,
    ::testing::Combine(::testing::ValuesIn(dtype_runs()), ::testing::ValuesIn(kShardCases)),
    [](const auto& info) {
      const auto& run = std::get<0>(info.param);
      const auto& c = std::get<1>(info.param);
      const bool extra = run.dtype != act_dtype(run.backend);
      return sanitize_name(run.backend + (extra ? "_" + std::string(dtype_name(run.dtype)) : "") +
                           "_B" + std::to_string(c.b) + "_T" + std::to_string(c.t) + "_V" +
                           std::to_string(c.v) + "_Vp" + std::to_string(c.vp) + "_C" +
                           std::to_string(c.c) + (c.positions ? "_pos" : "_nopos"));
    });

}  // namespace
}  // namespace nuri::test
