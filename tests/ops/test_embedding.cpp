// Token + position embedding and its deterministic scatter-add backward, on every backend; and
// the vocabulary-parallel shards (tensor parallelism), checked against the whole-table ops.
#include <sstream>

#include "ops/harness.h"

namespace nuri::test {
namespace {

struct EmbCase {
  int64_t b, t, v, c, tmax;
  bool positions;   // a position table (wpe)
  int64_t doc = 0;  // > 0: explicit positions, documents of 1 .. doc tokens each counted from 0
};
void PrintTo(const EmbCase& c, std::ostream* os) {
  *os << "B=" << c.b << " T=" << c.t << " V=" << c.v << " C=" << c.c << " Tmax=" << c.tmax
      << (c.positions ? " positions" : "") << (c.doc > 0 ? " documents" : "");
}

// Positions [B, T] of packed documents of 1 .. doc tokens (random lengths), each from 0: what
// document_positions() gives a learned-position model. Short documents make every position
// repeat, so the dwpe scatter really adds (and with doc = 2, splits its runs into pieces).
std::vector<int32_t> packed_positions(int64_t b, int64_t t, int64_t doc, uint64_t seed) {
  std::vector<int32_t> pos(size_t(b * t));
  Philox rng(seed, 2);
  uint64_t draw = 0;
  for (int64_t r = 0; r < b; ++r) {
    int64_t left = 0, at = 0;
    for (int64_t i = 0; i < t; ++i) {
      if (left == 0) {
        left = 1 + int64_t(rng.bits(draw++) % uint32_t(doc));
        at = 0;
      }
      pos[size_t(r * t + i)] = int32_t(at++);
      --left;
    }
  }
  return pos;
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
  // The row of wpe each token adds: t, or its place in its document.
  std::vector<int32_t> pos(size_t(c.b * c.t));
  for (size_t i = 0; i < pos.size(); ++i) pos[i] = int32_t(int64_t(i) % c.t);
  if (c.doc > 0) pos = packed_positions(c.b, c.t, c.doc, 26);
  Tensor tpos = c.doc > 0 ? on_i32(*be, {c.b, c.t}, pos) : Tensor();
  Tensor out = be->empty({c.b, c.t, c.c}, dt);
  be->zero(out);
  be->embedding(ttok, twte, twpe, tpos, out);
  auto forward = [&, &c = c](const std::vector<Vec>& in) {
    Vec y(size_t(c.b * c.t * c.c));
    for (int64_t i = 0; i < c.b * c.t; ++i) {
      for (int64_t j = 0; j < c.c; ++j) {
        double v = in[0][size_t(tok[size_t(i)] * c.c + j)];
        if (c.positions) v += in[1][size_t(pos[size_t(i)] * c.c + j)];
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
  be->embedding_backward(ttok, tdout, tdwte, tdwpe, tpos, false);
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
      ref_dwpe[size_t(pos[size_t(i)] * c.c + j)] += dout[size_t(i * c.c + j)];
    }
  }
  NURI_EXPECT_CLOSE(g.grads[0], ref_dwte, 1e-6, "dwte");
  if (c.positions) NURI_EXPECT_CLOSE(g.grads[1], ref_dwpe, 1e-6, "dwpe");
  const double fd_cost = double(wte.size() + (c.positions ? wpe.size() : 0)) * double(dout.size());
  check_gradients(g, fd_cost <= (run.backend == "cpu" ? 2e7 : 1e6), 1e-5, "embedding");

  // accumulate = true doubles it.
  be->embedding_backward(ttok, tdout, tdwte, tdwpe, tpos, true);
  Vec twice = g.grads[0];
  for (double& v : twice) v *= 2;
  NURI_EXPECT_CLOSE(values(*be, tdwte), twice, 1e-6, "accumulated dwte");
  if (c.positions) {
    Vec twice_pos = g.grads[1];
    for (double& v : twice_pos) v *= 2;
    NURI_EXPECT_CLOSE(values(*be, tdwpe), twice_pos, 1e-6, "accumulated dwpe");
  }
}

// C not a multiple of 4 or 8 takes the scalar CUDA kernels, the others the vector ones. The
// T=150 cases give each token ~150 positions: the CUDA backward splits such runs into pieces and
// adds the pieces' partial sums in a second kernel; with documents of 1 or 2 tokens, position 0
// and 1 too. The cases with documents read wpe by explicit positions.
const EmbCase kCases[] = {
    {1, 1, 1, 1, 1, true},         {2, 7, 5, 3, 9, true},          {3, 17, 11, 33, 17, false},
    {2, 65, 97, 70, 128, true},    {4, 64, 300, 64, 64, true},     {3, 150, 3, 40, 150, true},
    {2, 7, 5, 3, 9, true, 3},      {2, 65, 97, 70, 128, true, 9},  {3, 150, 3, 40, 150, true, 2},
};

INSTANTIATE_TEST_SUITE_P(
    Ops, EmbeddingTest,
    ::testing::Combine(::testing::ValuesIn(dtype_runs()), ::testing::ValuesIn(kCases)),
    [](const auto& info) {
      const auto& run = std::get<0>(info.param);
      const auto& c = std::get<1>(info.param);
      const bool extra = run.dtype != act_dtype(run.backend);
      std::ostringstream name;
      name << run.backend;
      if (extra) name << "_" << dtype_name(run.dtype);
      name << "_B" << c.b << "_T" << c.t << "_V" << c.v << "_C" << c.c
           << (c.positions ? "_pos" : "_nopos") << (c.doc > 0 ? "_docs" : "");
      return sanitize_name(name.str());
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
        be->embedding_backward(ttok, dout, d, dp, Tensor(), false);
        results.push_back(values(*be, d));
        const Vec pos = values(*be, dp);
        results.back().insert(results.back().end(), pos.begin(), pos.end());
        // By explicit positions (documents of 1 or 2 tokens: long runs split into pieces).
        Tensor dq = zeros_f32(*be, {t, c});
        const Tensor tpos = on_i32(*be, {b, t}, packed_positions(b, t, 2, 27));
        be->embedding_backward(ttok, dout, d, dq, tpos, false);
        const Vec by_pos = values(*be, dq);
        results.back().insert(results.back().end(), by_pos.begin(), by_pos.end());
      }
      EXPECT_EQ(results[0], results[1]) << name << " with " << v << " distinct tokens";
    }
  }
}

// ---- vocabulary-parallel shards ---------------------------------------------------------------

struct ShardCase {
  int64_t b, t, v, vp, c;  // vp: the padded table's rows, split into S shards of vp / S
  bool positions;
  int64_t doc = 0;  // > 0: explicit positions (packed_positions)
};
void PrintTo(const ShardCase& c, std::ostream* os) {
  *os << "B=" << c.b << " T=" << c.t << " V=" << c.v << " Vp=" << c.vp << " C=" << c.c
      << (c.positions ? " positions" : "") << (c.doc > 0 ? " documents" : "");
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
  std::vector<int32_t> pos(size_t(c.b * c.t));
  for (size_t i = 0; i < pos.size(); ++i) pos[i] = int32_t(int64_t(i) % c.t);
  if (c.doc > 0) pos = packed_positions(c.b, c.t, c.doc, 38);
  const Tensor tpos = c.doc > 0 ? on_i32(*be, {c.b, c.t}, pos) : Tensor();

  Tensor out = be->empty({c.b, c.t, c.c}, dt);
  be->embedding(ttok, on_dtype(*be, {c.vp, c.c}, wte, dt), twpe, tpos, out);
  const Vec whole = values(*be, out);
  Tensor dwte = zeros_f32(*be, {c.vp, c.c});
  Tensor dwpe = c.positions ? zeros_f32(*be, {c.t, c.c}) : Tensor();
  be->embedding_backward(ttok, tdout, dwte, dwpe, tpos, false);
  const Vec whole_dwte = values(*be, dwte);
  const Vec whole_dwpe = c.positions ? values(*be, dwpe) : Vec();

  Vec ref(size_t(c.b * c.t * c.c));  // float64
  for (int64_t i = 0; i < c.b * c.t; ++i) {
    for (int64_t j = 0; j < c.c; ++j) {
      ref[size_t(i * c.c + j)] = wte[size_t(tok[size_t(i)] * c.c + j)] +
                                 (c.positions ? wpe[size_t(pos[size_t(i)] * c.c + j)] : 0.0);
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
      be->embedding_shard(ttok, shard, s == 0 ? twpe : Tensor(), s == 0 ? tpos : Tensor(),
                          shard_out, s * vl, c.v);
      const Vec o = values(*be, shard_out);
      for (size_t i = 0; i < o.size(); ++i) sum[i] += float(o[i]);
      // accumulate = false overwrites (garbage before).
      Tensor shard_dwte = on_f32(*be, {vl, c.c}, random_vec(vl * c.c, 36));
      Tensor shard_dwpe =
          c.positions ? on_f32(*be, {c.t, c.c}, random_vec(c.t * c.c, 37)) : Tensor();
      be->embedding_shard_backward(ttok, tdout, shard_dwte, shard_dwpe, tpos, s * vl, c.v, false);
      const Vec g = values(*be, shard_dwte);
      stacked_dwte.insert(stacked_dwte.end(), g.begin(), g.end());
      if (c.positions) {
        EXPECT_EQ(values(*be, shard_dwpe), whole_dwpe) << "dwpe of shard " << s;
      }
      // accumulate = true adds the rows one by one onto the sum: 2x up to f32 rounding.
      be->embedding_shard_backward(ttok, tdout, shard_dwte, shard_dwpe, tpos, s * vl, c.v, true);
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
    {3, 17, 50, 64, 16, true, 5},
};

INSTANTIATE_TEST_SUITE_P(
    Ops, EmbeddingShardTest,
    ::testing::Combine(::testing::ValuesIn(dtype_runs()), ::testing::ValuesIn(kShardCases)),
    [](const auto& info) {
      const auto& run = std::get<0>(info.param);
      const auto& c = std::get<1>(info.param);
      const bool extra = run.dtype != act_dtype(run.backend);
      std::ostringstream name;
      name << run.backend;
      if (extra) name << "_" << dtype_name(run.dtype);
      name << "_B" << c.b << "_T" << c.t << "_V" << c.v << "_Vp" << c.vp << "_C" << c.c
           << (c.positions ? "_pos" : "_nopos") << (c.doc > 0 ? "_docs" : "");
      return sanitize_name(name.str());
    });

}  // namespace
}  // namespace nuri::test
