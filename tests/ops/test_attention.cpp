// Causal and non-causal self-attention with grouped-query heads, forward (out, lse) and backward
// (dq, dk, dv), on every backend, against a float64 reference that materializes the scores.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <sstream>

#include "ops/harness.h"

namespace nuri::test {
namespace {

struct AttnCase {
  int64_t b, t, h, hkv, d;
  bool causal;
  bool fused_qkv;  // q, k, v as strided views of one [B, T, (H + 2·Hkv)·D] buffer
  bool docs = false;  // packed documents (test_documents)
};
void PrintTo(const AttnCase& c, std::ostream* os) {
  *os << "B=" << c.b << " T=" << c.t << " H=" << c.h << " Hkv=" << c.hkv << " D=" << c.d
      << (c.causal ? " causal" : " full") << (c.fused_qkv ? " fused-qkv" : "")
      << (c.docs ? " documents" : "");
}

// Packed documents of B rows of T tokens, as document_bounds() finds them ([2, B, T] i32, host):
// documents of 1 to 129 tokens that start inside and at the edges of the kernels' 16-, 32-, 64-
// and 128-row tiles, a different cut in each row, and a last row of one document where B > 2.
Tensor test_documents(int64_t b, int64_t t) {
  const int64_t lengths[] = {23, 1, 64, 5, 129, 40, 17, 3, 63, 31, 2, 96};
  Tensor tokens = Tensor::empty({b, t}, DType::i32);
  for (int64_t r = 0; r < b; ++r) {
    int32_t* x = tokens.data<int32_t>() + r * t;
    std::fill(x, x + t, 7);
    if (b > 2 && r == b - 1) continue;
    for (int64_t i = -1, n = 3 * r; i < t; i += lengths[n++ % 12]) {
      if (i >= 0) x[i] = 0;  // the separator ends a document
    }
  }
  return document_bounds(tokens, 0);
}

// The first key each query of row bi sees: 0, or its document's start.
const int32_t* key_starts(const Tensor& docs) {
  return docs.defined() ? docs.data<int32_t>() : nullptr;
}
inline int64_t first_key(const int32_t* ks, int64_t t, int64_t bi, int64_t i) {
  return ks ? ks[bi * t + i] : 0;
}

// `docs` on `be` (undefined stays undefined).
Tensor docs_on(Backend& be, const Tensor& docs) {
  if (!docs.defined()) return Tensor();
  const int32_t* v = docs.data<int32_t>();
  return on_i32(be, docs.shape(), {v, v + docs.numel()});
}

// q [B,T,H,D], k/v [B,T,Hkv,D] contiguous; ks: key_start (null: none). Returns {out [B,T,H,D],
// lse [B,H,T]}.
std::vector<Vec> attention_ref(const AttnCase& c, const Vec& q, const Vec& k, const Vec& v,
                               const int32_t* ks = nullptr) {
  Vec out(size_t(c.b * c.t * c.h * c.d), 0.0), lse(size_t(c.b * c.h * c.t));
  const double scale = 1.0 / std::sqrt(double(c.d));
  const int64_t group = c.h / c.hkv;
  Vec s(size_t(c.t));
  for (int64_t bi = 0; bi < c.b; ++bi)
    for (int64_t hi = 0; hi < c.h; ++hi) {
      const int64_t kh = hi / group;
      for (int64_t i = 0; i < c.t; ++i) {
        const int64_t nk = c.causal ? i + 1 : c.t, j0 = first_key(ks, c.t, bi, i);
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = j0; j < nk; ++j) {
          double dot = 0;
          for (int64_t e = 0; e < c.d; ++e)
            dot += q[size_t(((bi * c.t + i) * c.h + hi) * c.d + e)] *
                   k[size_t(((bi * c.t + j) * c.hkv + kh) * c.d + e)];
          s[size_t(j)] = dot * scale;
          mx = std::max(mx, s[size_t(j)]);
        }
        double z = 0;
        for (int64_t j = j0; j < nk; ++j) z += std::exp(s[size_t(j)] - mx);
        for (int64_t j = j0; j < nk; ++j) {
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
  const Tensor docs = c.docs ? test_documents(c.b, c.t) : Tensor();
  opt.documents = docs_on(*be, docs);
  be->attention(tq, tk, tv, out, lse, opt);
  const auto ref = attention_ref(c, q, k, v, key_starts(docs));
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
  g.forward = [&, &c = c](const std::vector<Vec>& in) {
    return std::vector<Vec>{attention_ref(c, in[0], in[1], in[2], key_starts(docs))[0]};
  };
  g.douts = {dout};
  g.grads = {values(*be, dq), values(*be, dk), values(*be, dv)};
  const bool tiny = c.b * c.t * (c.h + 2 * c.hkv) * c.d <= 1200;
  check_gradients(g, tiny, 1e-4, "attention");
}

// Causal, GQA and MQA, non-causal, T = 1 and lengths that are not multiples of any tile,
// head dims 4..64, the fused-QKV strided layout, and packed documents.
const AttnCase kCases[] = {
    {1, 1, 1, 1, 8, true, false},    {2, 7, 2, 1, 4, true, false},
    {1, 9, 4, 2, 8, false, true},    {1, 17, 2, 2, 8, true, true},
    {2, 65, 4, 2, 16, true, false},  {1, 130, 6, 1, 32, true, true},
    {2, 100, 4, 4, 64, false, false}, {1, 200, 2, 1, 64, true, false},
    {2, 30, 2, 1, 8, true, false, true}, {3, 300, 2, 2, 16, true, true, true},
};

// The f32 backends (the CPU's); the CUDA kernels take bf16/f16 and have their own suite below.
std::vector<std::string> f32_backends() {
  std::vector<std::string> r;
  for (const auto& name : backends()) {
    if (act_dtype(name) == DType::f32) r.push_back(name);
  }
  return r;
}
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(AttentionTest);
INSTANTIATE_TEST_SUITE_P(
    Ops, AttentionTest,
    ::testing::Combine(::testing::ValuesIn(f32_backends()), ::testing::ValuesIn(kCases)),
    [](const auto& info) {
      const auto& c = std::get<1>(info.param);
      return sanitize_name(std::get<0>(info.param) + "_B" + std::to_string(c.b) + "_T" +
                           std::to_string(c.t) + "_H" + std::to_string(c.h) + "_KV" +
                           std::to_string(c.hkv) + "_D" + std::to_string(c.d) +
                           (c.causal ? "_causal" : "_full") + (c.fused_qkv ? "_fusedqkv" : "") +
                           (c.docs ? "_docs" : ""));
    });

// The backward gives the same bits on 1 thread and on all threads (no order-dependent sums).
TEST(AttentionDeterminism, BackwardBitsDoNotDependOnThreadCount) {
  for (const auto& name : f32_backends()) {
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


// document_bounds: a separator ends its document; each position's first key and the end of the
// queries that see it.
TEST(AttentionDocuments, BoundsFollowTheSeparators) {
  Tensor tokens = Tensor::empty({2, 6}, DType::i32);
  const int32_t ids[12] = {5, 0, 5, 5, 0, 5, /**/ 0, 0, 5, 5, 5, 0};
  std::copy(ids, ids + 12, tokens.data<int32_t>());
  const Tensor b = document_bounds(tokens, 0);
  const std::vector<int32_t> got(b.data<int32_t>(), b.data<int32_t>() + 24);
  const std::vector<int32_t> want = {0, 0, 2, 2, 2, 5, /**/ 0, 1, 2, 2, 2, 2,   // key_start
                                     2, 2, 5, 5, 5, 6, /**/ 1, 2, 6, 6, 6, 6};  // query_end
  EXPECT_EQ(got, want);
  EXPECT_NO_THROW(check_document_bounds("test", b));
  // The separator beginning its document instead (llm.c's <|endoftext|> ids).
  const Tensor s = document_bounds(tokens, 0, /*separator_starts=*/true);
  const std::vector<int32_t> got_s(s.data<int32_t>(), s.data<int32_t>() + 24);
  const std::vector<int32_t> want_s = {0, 1, 1, 1, 4, 4, /**/ 0, 1, 1, 1, 1, 5,
                                       1, 4, 4, 4, 6, 6, /**/ 1, 5, 5, 5, 5, 6};
  EXPECT_EQ(got_s, want_s);
  EXPECT_NO_THROW(check_document_bounds("test", s));
}

// Documents on every backend: refused without causal masking or in another shape; on the CPU
// (whose backend reads them on the host) bounds that describe no runs of documents too.
TEST(AttentionDocuments, BadDocumentsAreRefusedClearly) {
  for (const auto& name : backends()) {
    SCOPED_TRACE(name);
    auto be = make_backend(name);
    const DType dt = act_dtype(name);
    const Shape s{1, 8, 2, 64};
    Tensor q = be->empty(s, dt), out = be->empty(s, dt), lse = zeros_f32(*be, {1, 2, 8});
    be->zero(q);
    auto expect_error = [&](const AttentionOptions& opt, const std::string& needle) {
      try {
        be->attention(q, q, q, out, lse, opt);
        ADD_FAILURE() << "no error; expected one containing \"" << needle << "\"";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      }
    };
    AttentionOptions opt;
    opt.documents = docs_on(*be, test_documents(1, 8));
    opt.causal = false;
    expect_error(opt, "documents (a document mask) need causal attention");
    opt.causal = true;
    opt.documents = docs_on(*be, test_documents(2, 8));
    expect_error(opt, "documents has shape (2, 2, 8)");
    if (be->device().is_cpu()) {
      Tensor bad = test_documents(1, 8);
      bad.data<int32_t>()[3] = 2;  // position 3 would start at 2, inside a document of 0..22
      opt.documents = bad;
      expect_error(opt, "documents row 0 position 3: key_start is 2, expected 0");
      Tensor early = test_documents(1, 8);
      std::fill(early.data<int32_t>() + 8, early.data<int32_t>() + 16, 7);  // ends before 7
      opt.documents = early;
      expect_error(opt, "documents row 0 position 6: query_end is 7 where its document goes on "
                        "past 7");
      Tensor uneven = test_documents(1, 8);
      uneven.data<int32_t>()[8 + 2] = 7;  // one position of the one document ending early
      opt.documents = uneven;
      expect_error(opt, "documents row 0 position 1: query_end 8 differs from the next "
                        "position's 7 inside one document");
    }
  }
}

// ---- the CUDA kernels (bf16/f16 on tensor cores) ------------------------------------------------
//
// The bar for a kernel in a 16-bit input type: its error against the float64 reference is at most
// twice the error of the same computation done on the CPU in that precision (a "model" that
// rounds exactly where the kernel rounds: P to the input type before P·V, dS to it before the dK
// and dQ products, every output once at the end; everything else in f32). Errors are max-abs over
// the tensor, normalized by max |reference|.

struct KernelCase {
  int64_t b, t, h, hkv, d;
  bool causal;
  DType dtype;
  bool fused_qkv;
  bool atomic_dq;  // also run the backward with atomic dq accumulation (deterministic is default)
  bool docs = false;  // packed documents (test_documents)
};
void PrintTo(const KernelCase& c, std::ostream* os) {
  *os << dtype_name(c.dtype) << " B=" << c.b << " T=" << c.t << " H=" << c.h << " Hkv=" << c.hkv
      << " D=" << c.d << (c.causal ? " causal" : " full") << (c.fused_qkv ? " fused-qkv" : "")
      << (c.atomic_dq ? " +atomic-dq" : "") << (c.docs ? " documents" : "");
}

struct Grads {
  Vec dq, dk, dv;
};

// Index helpers for contiguous [B, T, heads, D] and [B, H, T].
struct Layout {
  int64_t b, t, h, hkv, d;
  size_t q(int64_t bi, int64_t i, int64_t hi, int64_t e) const {
    return size_t(((bi * t + i) * h + hi) * d + e);
  }
  size_t kv(int64_t bi, int64_t j, int64_t g, int64_t e) const {
    return size_t(((bi * t + j) * hkv + g) * d + e);
  }
  size_t row(int64_t bi, int64_t hi, int64_t i) const { return size_t((bi * h + hi) * t + i); }
};

// The float64 reference backward: P from exact scores, Di from the exact output.
Grads attention_backward_ref(const KernelCase& c, const Vec& q, const Vec& k, const Vec& v,
                             const Vec& dout, const int32_t* ks) {
  const Layout L{c.b, c.t, c.h, c.hkv, c.d};
  Grads g{Vec(q.size(), 0.0), Vec(k.size(), 0.0), Vec(v.size(), 0.0)};
  const double scale = 1.0 / std::sqrt(double(c.d));
  const int64_t group = c.h / c.hkv;
  Vec p(size_t(c.t)), dp(size_t(c.t)), o(size_t(c.d));
  for (int64_t bi = 0; bi < c.b; ++bi)
    for (int64_t hi = 0; hi < c.h; ++hi) {
      const int64_t kh = hi / group;
      for (int64_t i = 0; i < c.t; ++i) {
        const int64_t nk = c.causal ? i + 1 : c.t, j0 = first_key(ks, c.t, bi, i);
        double mx = -INFINITY;
        for (int64_t j = j0; j < nk; ++j) {
          double dot = 0;
          for (int64_t e = 0; e < c.d; ++e) dot += q[L.q(bi, i, hi, e)] * k[L.kv(bi, j, kh, e)];
          p[size_t(j)] = dot * scale;
          mx = std::max(mx, p[size_t(j)]);
        }
        double z = 0;
        for (int64_t j = j0; j < nk; ++j) z += (p[size_t(j)] = std::exp(p[size_t(j)] - mx));
        std::fill(o.begin(), o.end(), 0.0);
        for (int64_t j = j0; j < nk; ++j) {
          p[size_t(j)] /= z;
          for (int64_t e = 0; e < c.d; ++e) o[size_t(e)] += p[size_t(j)] * v[L.kv(bi, j, kh, e)];
        }
        double di = 0;
        for (int64_t e = 0; e < c.d; ++e) di += dout[L.q(bi, i, hi, e)] * o[size_t(e)];
        for (int64_t j = j0; j < nk; ++j) {
          double dpj = 0;
          for (int64_t e = 0; e < c.d; ++e) dpj += dout[L.q(bi, i, hi, e)] * v[L.kv(bi, j, kh, e)];
          const double ds = p[size_t(j)] * (dpj - di);
          for (int64_t e = 0; e < c.d; ++e) {
            g.dv[L.kv(bi, j, kh, e)] += p[size_t(j)] * dout[L.q(bi, i, hi, e)];
            g.dk[L.kv(bi, j, kh, e)] += scale * ds * q[L.q(bi, i, hi, e)];
            g.dq[L.q(bi, i, hi, e)] += scale * ds * k[L.kv(bi, j, kh, e)];
          }
        }
      }
    }
  return g;
}

// The CPU model of the kernels in precision dt: f32 arithmetic, rounding to dt where the kernels
// round. Returns {out, lse} and the gradients.
struct ModelResult {
  Vec out, lse;
  Grads grads;
};
ModelResult attention_model(const KernelCase& c, const Vec& q, const Vec& k, const Vec& v,
                            const Vec& dout, DType dt, const int32_t* ks) {
  const Layout L{c.b, c.t, c.h, c.hkv, c.d};
  ModelResult r{Vec(q.size(), 0.0), Vec(size_t(c.b * c.h * c.t)),
                Grads{Vec(q.size(), 0.0), Vec(k.size(), 0.0), Vec(v.size(), 0.0)}};
  const float scale = 1.f / std::sqrt(float(c.d));
  const float scale_log2 = scale * 1.4426950408889634f;
  const int64_t group = c.h / c.hkv;
  auto rnd = [dt](float x) { return float(rounded(double(x), dt)); };
  std::vector<float> s(size_t(c.t)), acc(size_t(c.d));
  std::vector<float> dq_acc(q.size(), 0.f), dk_acc(k.size(), 0.f), dv_acc(v.size(), 0.f);
  for (int64_t bi = 0; bi < c.b; ++bi)
    for (int64_t hi = 0; hi < c.h; ++hi) {
      const int64_t kh = hi / group;
      for (int64_t i = 0; i < c.t; ++i) {
        const int64_t nk = c.causal ? i + 1 : c.t, j0 = first_key(ks, c.t, bi, i);
        float mx = -INFINITY;
        for (int64_t j = j0; j < nk; ++j) {
          float dot = 0;
          for (int64_t e = 0; e < c.d; ++e)
            dot += float(q[L.q(bi, i, hi, e)]) * float(k[L.kv(bi, j, kh, e)]);
          s[size_t(j)] = dot * scale_log2;
          mx = std::max(mx, s[size_t(j)]);
        }
        float l = 0;
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t j = j0; j < nk; ++j) {
          const float pj = exp2f(s[size_t(j)] - mx);
          l += pj;
          const float pr = rnd(pj);
          for (int64_t e = 0; e < c.d; ++e) acc[size_t(e)] += pr * float(v[L.kv(bi, j, kh, e)]);
        }
        for (int64_t e = 0; e < c.d; ++e) r.out[L.q(bi, i, hi, e)] = rnd(acc[size_t(e)] / l);
        const float lse2 = mx + std::log2(l);  // log2 domain, as the backward uses it
        r.lse[L.row(bi, hi, i)] = lse2 * 0.6931471805599453f;

        float di = 0;
        for (int64_t e = 0; e < c.d; ++e)
          di += float(dout[L.q(bi, i, hi, e)]) * float(r.out[L.q(bi, i, hi, e)]);
        for (int64_t j = j0; j < nk; ++j) {
          const float pj = exp2f(s[size_t(j)] - lse2);
          float dpj = 0;
          for (int64_t e = 0; e < c.d; ++e)
            dpj += float(dout[L.q(bi, i, hi, e)]) * float(v[L.kv(bi, j, kh, e)]);
          const float ds = rnd(pj * (dpj - di)), pr = rnd(pj);
          for (int64_t e = 0; e < c.d; ++e) {
            dv_acc[L.kv(bi, j, kh, e)] += pr * float(dout[L.q(bi, i, hi, e)]);
            dk_acc[L.kv(bi, j, kh, e)] += ds * float(q[L.q(bi, i, hi, e)]);
            dq_acc[L.q(bi, i, hi, e)] += ds * float(k[L.kv(bi, j, kh, e)]);
          }
        }
      }
    }
  for (size_t i = 0; i < dq_acc.size(); ++i) r.grads.dq[i] = rnd(dq_acc[i] * scale);
  for (size_t i = 0; i < dk_acc.size(); ++i) r.grads.dk[i] = rnd(dk_acc[i] * scale);
  for (size_t i = 0; i < dv_acc.size(); ++i) r.grads.dv[i] = rnd(dv_acc[i]);
  return r;
}

// The kernel's error is at most twice the model's. Two cases have an f32 floor instead, where
// the model's error says nothing about the input precision:
//  - results that never pass through the input type (lse): they differ from the model by f32
//    summation order and the exp2 implementation; floor 8 f32 ulps of max |ref|;
//  - references that vanish identically (dq and dk when every row sees one key, T = 1): the
//    error is then absolute, and what the kernel returns is f32 cancellation noise of
//    dP − rowsum(dO∘O), terms of size ≈ √D; floor 1e-5 (about 8 ulps of such a term).
void expect_within_model(const Vec& kernel, const Vec& model, const Vec& ref, const char* what,
                         bool f32_result = false) {
  double scale = 0;
  for (double x : ref) scale = std::max(scale, std::abs(x));
  const bool vanishing = scale == 0;
  const Diff dk = compare(kernel, ref), dm = compare(model, ref);
  const double e_kernel = vanishing ? dk.abs : dk.rel, e_model = vanishing ? dm.abs : dm.rel;
  const double floor = vanishing ? 1e-5 : (f32_result ? 8 * 1.1920929e-7 : 0.0);
  const double bound = std::max(2 * e_model, floor);
  std::printf("  %-4s kernel error %.3g, model error %.3g\n", what, e_kernel, e_model);
  EXPECT_LE(e_kernel, bound) << what << ": kernel error " << e_kernel << ", model error "
                             << e_model << " (bound: twice the model's)";
}

class AttentionKernelTest : public ::testing::TestWithParam<std::tuple<std::string, KernelCase>> {};

// q, k, v as device tensors of c.dtype holding the (already rounded) values; fused: strided views
// of one [B, T, H + 2·Hkv, D] buffer (`fused`). With `zero`, zero-filled (for the gradients).
struct Qkv {
  Tensor q, k, v, fused;
};
Qkv qkv_tensors(Backend& be, const KernelCase& c, const Vec& q, const Vec& k, const Vec& v,
                bool zero) {
  const Shape qs{c.b, c.t, c.h, c.d}, ks{c.b, c.t, c.hkv, c.d};
  if (!c.fused_qkv) {
    if (zero) {
      Qkv r{be.empty(qs, c.dtype), be.empty(ks, c.dtype), be.empty(ks, c.dtype), Tensor()};
      for (const Tensor* t : {&r.q, &r.k, &r.v}) be.zero(*t);
      return r;
    }
    return {on_dtype(be, qs, q, c.dtype), on_dtype(be, ks, k, c.dtype),
            on_dtype(be, ks, v, c.dtype), Tensor()};
  }
  const int64_t width = (c.h + 2 * c.hkv) * c.d;
  Vec packed(size_t(c.b * c.t * width), 0.0);
  if (!zero) {
    for (int64_t r = 0; r < c.b * c.t; ++r) {
      for (int64_t e = 0; e < c.h * c.d; ++e) packed[size_t(r * width + e)] = q[size_t(r * c.h * c.d + e)];
      for (int64_t e = 0; e < c.hkv * c.d; ++e) {
        packed[size_t(r * width + c.h * c.d + e)] = k[size_t(r * c.hkv * c.d + e)];
        packed[size_t(r * width + (c.h + c.hkv) * c.d + e)] = v[size_t(r * c.hkv * c.d + e)];
      }
    }
  }
  Tensor qkv = on_dtype(be, {c.b, c.t, c.h + 2 * c.hkv, c.d}, packed, c.dtype);
  return {qkv.slice(2, 0, c.h), qkv.slice(2, c.h, c.h + c.hkv),
          qkv.slice(2, c.h + c.hkv, c.h + 2 * c.hkv), qkv};
}

// Values of q, k, v (or their gradients) of a Qkv; fused views are read through their buffer.
std::array<Vec, 3> qkv_values(Backend& be, const KernelCase& c, const Qkv& t) {
  if (!t.fused.defined()) return {values(be, t.q), values(be, t.k), values(be, t.v)};
  Tensor host = Tensor::empty(t.fused.shape(), DType::f32);
  const Vec all = values(be, t.fused);
  for (size_t i = 0; i < all.size(); ++i) host.data<float>()[i] = float(all[i]);
  auto part = [&](int64_t from, int64_t to) { return values(be, host.slice(2, from, to)); };
  return {part(0, c.h), part(c.h, c.h + c.hkv), part(c.h + c.hkv, c.h + 2 * c.hkv)};
}

/// Forward and (with `backward`) backward of case c on `be` (whichever attention path it runs),
/// each output within twice the model's error. `atomic_trace`: what the run with
/// opt.deterministic = false does.
void expect_kernels_within_model(Backend& be, const KernelCase& c, const char* atomic_trace,
                                 bool backward = true) {
  const Shape qs{c.b, c.t, c.h, c.d};
  const Vec q = rounded(random_vec(c.b * c.t * c.h * c.d, 61), c.dtype),
            k = rounded(random_vec(c.b * c.t * c.hkv * c.d, 62), c.dtype),
            v = rounded(random_vec(c.b * c.t * c.hkv * c.d, 63), c.dtype),
            dout = rounded(random_vec(c.b * c.t * c.h * c.d, 64), c.dtype);
  const Qkv in = qkv_tensors(be, c, q, k, v, false);
  Tensor out = be.empty(qs, c.dtype), lse = zeros_f32(be, {c.b, c.h, c.t});
  AttentionOptions opt;
  opt.causal = c.causal;
  const Tensor docs = c.docs ? test_documents(c.b, c.t) : Tensor();
  opt.documents = docs_on(be, docs);
  be.attention(in.q, in.k, in.v, out, lse, opt);

  const int32_t* ks = key_starts(docs);
  const auto ref =
      attention_ref(AttnCase{c.b, c.t, c.h, c.hkv, c.d, c.causal, false}, q, k, v, ks);
  const ModelResult model = attention_model(c, q, k, v, dout, c.dtype, ks);
  if (ks) {  // the documents matter: the output is far from attention over whole rows
    const auto whole =
        attention_ref(AttnCase{c.b, c.t, c.h, c.hkv, c.d, c.causal, false}, q, k, v)[0];
    EXPECT_GT(compare(values(be, out), whole).rel, 0.1);
  }
  expect_within_model(values(be, out), model.out, ref[0], "out");
  expect_within_model(values(be, lse), model.lse, ref[1], "lse", /*f32_result=*/true);
  if (!backward) return;

  const Grads gref = attention_backward_ref(c, q, k, v, dout, ks);
  const Tensor tdout = on_dtype(be, qs, dout, c.dtype);
  for (bool deterministic : {true, false}) {
    if (!deterministic && !c.atomic_dq) continue;
    SCOPED_TRACE(deterministic ? "deterministic dq" : atomic_trace);
    const Qkv d = qkv_tensors(be, c, q, k, v, true);
    opt.deterministic = deterministic;
    be.attention_backward(in.q, in.k, in.v, out, lse, tdout, d.q, d.k, d.v, opt);
    const auto grads = qkv_values(be, c, d);
    expect_within_model(grads[0], model.grads.dq, gref.dq, "dq");
    expect_within_model(grads[1], model.grads.dk, gref.dk, "dk");
    expect_within_model(grads[2], model.grads.dv, gref.dv, "dv");
  }
}

TEST_P(AttentionKernelTest, WithinTwiceTheCpuErrorInTheInputPrecision) {
  const auto& [name, c] = GetParam();
  auto be = make_backend(name);
  expect_kernels_within_model(*be, c, "atomic dq");
}

// Every dtype × head dim × causal × GQA ratio (1, 2, and H: multi-query) on short sequences that
// are and are not multiples of the tiles (1, 17, 33, 65, 100: one to two tiles, ragged edges),
// then longer ones (128, 200, 512). Fused-QKV strided views on a third of the cases, atomic dq
// accumulation on a quarter (deterministic dq runs on all). Emulated under TSan a thread is slow,
// so B·H stays small: the cost grows as B·H·T²·D.
std::vector<KernelCase> kernel_cases() {
  std::vector<KernelCase> r;
  const int64_t lengths[] = {17, 65, 1, 100, 33};  // 5 is prime to the 2·3 inner combinations
  int n = 0;
  for (DType dt : {DType::bf16, DType::f16})
    for (int64_t d : {64, 128})
      for (bool causal : {true, false})
        for (int64_t ratio : {1, 2, 4}) {
          const int64_t t = lengths[n % 5], h = ratio == 1 ? 2 : 4;
          r.push_back({t <= 17 ? 2 : 1, t, h, h / ratio, d, causal, dt, /*fused_qkv=*/n % 3 == 1,
                       /*atomic_dq=*/n % 4 == 0});
          ++n;
        }
  r.push_back({2, 128, 2, 1, 128, true, DType::bf16, true, true});
  r.push_back({1, 200, 2, 2, 64, false, DType::f16, false, false});
  r.push_back({1, 200, 2, 1, 128, true, DType::bf16, false, true});
  r.push_back({1, 512, 1, 1, 64, true, DType::bf16, false, false});
  // Packed documents (test_documents): tiles that start and end inside documents, documents of
  // one token, a last row of one document (B 3); every path, atomic dq on one.
  r.push_back({2, 200, 2, 1, 64, true, DType::bf16, false, true, true});
  r.push_back({3, 130, 2, 2, 128, true, DType::f16, true, false, true});
  r.push_back({1, 260, 2, 1, 128, true, DType::bf16, false, false, true});
  return r;
}

/// Each case on each backend with 16-bit activations (those that run the attention kernels).
std::vector<std::tuple<std::string, KernelCase>> on_16bit_backends(
    const std::vector<KernelCase>& cases) {
  std::vector<std::tuple<std::string, KernelCase>> r;
  for (const auto& name : backends()) {
    if (act_dtype(name) == DType::f32) continue;
    for (const auto& c : cases) r.emplace_back(name, c);
  }
  return r;
}

/// The test name of a (backend, case) parameter; `atomic_mark`: "_atomicdq" on the cases that
/// also run the atomic dq.
template <class Info>
std::string kernel_case_name(const Info& info, bool atomic_mark) {
  const auto& c = std::get<1>(info.param);
  return sanitize_name(std::get<0>(info.param) + "_" + dtype_name(c.dtype) + "_B" +
                       std::to_string(c.b) + "_T" + std::to_string(c.t) + "_H" +
                       std::to_string(c.h) + "_KV" + std::to_string(c.hkv) + "_D" +
                       std::to_string(c.d) + (c.causal ? "_causal" : "_full") +
                       (c.fused_qkv ? "_fusedqkv" : "") +
                       (atomic_mark && c.atomic_dq ? "_atomicdq" : "") + (c.docs ? "_docs" : ""));
}

GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(AttentionKernelTest);
INSTANTIATE_TEST_SUITE_P(Ops, AttentionKernelTest,
                         ::testing::ValuesIn(on_16bit_backends(kernel_cases())),
                         [](const auto& info) { return kernel_case_name(info, true); });

// ---- the sm_90a kernels (NURI_ATTENTION=sm90) ------------------------------------------------
//
// The same cases and bar for kernels/attention_fwd_sm90.cuh and attention_bwd_sm90.cuh (wgmma,
// TMA, mbarrier, warp specialization), plus sequences of three and four tiles of 128 so that
// every stage is reused (each stage's empty barrier goes through phases), on an emulated device
// of 3 SMs, so that the persistent forward's blocks each walk several work tiles. Everywhere on the
// emulator; on a GPU only where the path exists (an H100/H200 with a 90a build), skipped
// elsewhere saying why.

/// A backend of `name` with NURI_ATTENTION=path; skips (GPU) or fails (emulator, which runs
/// every path) where that path cannot be made.
#define NURI_BACKEND_ON_PATH(be, name, path)                                          \
  auto [be, be##_why] = make_backend_with(name, "NURI_ATTENTION", path);              \
  if (!be) {                                                                          \
    if ((name) == "cuda-emu") FAIL() << be##_why;                                     \
    GTEST_SKIP() << be##_why;                                                         \
  }

class AttentionSm90Test : public ::testing::TestWithParam<std::tuple<std::string, KernelCase>> {};

TEST_P(AttentionSm90Test, WithinTwiceTheCpuErrorInTheInputPrecision) {
  const auto& [name, c] = GetParam();
  NURI_BACKEND_ON_PATH(be, name, "sm90");
  // The persistent forward runs one block per SM: on an emulated device of 3 SMs each block
  // walks several work tiles (unevenly), so Q, O and the K/V stages are reused across them.
  ScopedEnv sms("NURI_EMU_SMS", "3");
  // dq is the query-major pass in either mode.
  expect_kernels_within_model(*be, c, "dq without atomics all the same");
}

std::vector<std::tuple<std::string, KernelCase>> sm90_params() {
  std::vector<KernelCase> cases = kernel_cases();
  cases.push_back({1, 384, 2, 1, 128, false, DType::f16, true, false});
  cases.push_back({1, 500, 1, 1, 64, false, DType::bf16, false, false});
  return on_16bit_backends(cases);
}

GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(AttentionSm90Test);
INSTANTIATE_TEST_SUITE_P(Ops, AttentionSm90Test, ::testing::ValuesIn(sm90_params()),
                         [](const auto& info) { return kernel_case_name(info, false); });

// ---- the forward on 128-row query blocks (NURI_ATTENTION=nuri128) ------------------------------
//
// The same cases and bar for attention_fwd_q128_kernel (two m16 row tiles a warp; Q read from its
// tile at each key tile at D 128), forward only: the backward of this path is nuri's, tested
// above. Sequences of 1 to 4 query blocks of 128 (the last ragged), causal blocks whose warps
// skip key tiles.

class AttentionQ128Test : public ::testing::TestWithParam<std::tuple<std::string, KernelCase>> {};

TEST_P(AttentionQ128Test, ForwardWithinTwiceTheCpuErrorInTheInputPrecision) {
  const auto& [name, c] = GetParam();
  NURI_BACKEND_ON_PATH(be, name, "nuri128");
  expect_kernels_within_model(*be, c, "", /*backward=*/false);
}

std::vector<std::tuple<std::string, KernelCase>> q128_params() {
  // bf16 for the short cases (f16 changes only the mma's type, as in the 64-row kernel), both
  // for the long ones.
  std::vector<KernelCase> cases;
  for (const KernelCase& c : kernel_cases()) {
    if (c.dtype == DType::bf16 || c.t >= 128) cases.push_back(c);
  }
  cases.push_back({1, 260, 2, 1, 128, true, DType::f16, true, false});
  return on_16bit_backends(cases);
}

GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(AttentionQ128Test);
INSTANTIATE_TEST_SUITE_P(Ops, AttentionQ128Test, ::testing::ValuesIn(q128_params()),
                         [](const auto& info) { return kernel_case_name(info, false); });

/// Tiles chosen as for a GPU with `bytes` of shared memory a SM: NURI_TILE_SMEM_PER_SM on any
/// device, and on the emulator a device with that shared memory (NURI_EMU_SMEM_PER_SM, which a
/// GPU ignores).
struct TilesFor {
  explicit TilesFor(const char* bytes)
      : device("NURI_EMU_SMEM_PER_SM", bytes), tiles("NURI_TILE_SMEM_PER_SM", bytes) {}
  ScopedEnv device, tiles;
};

// On a GPU with 100 KiB of shared memory a SM (an RTX 3090/4090), two 128-row blocks on 64-key
// tiles do not fit beside each other at D 128, so the forward walks key tiles of 32
// (attn_fwd_q128_key_rows, FlashAttention-2's sm_86/89 shape). The same bar with the tiles of
// that shared memory (TilesFor 102400; 65536 makes D 64 take them too), on the emulator and on
// any GPU: several key tiles (T 33 to 200), ragged ends, causal warps skipping tiles, GQA,
// fused-QKV views.
class AttentionQ128KeyTile32Test
    : public ::testing::TestWithParam<std::tuple<std::string, KernelCase>> {};

TEST_P(AttentionQ128KeyTile32Test, ForwardWithinTwiceTheCpuErrorInTheInputPrecision) {
  const auto& [name, c] = GetParam();
  TilesFor tiles(c.d == 128 ? "102400" : "65536");
  NURI_BACKEND_ON_PATH(be, name, "nuri128");
  expect_kernels_within_model(*be, c, "", /*backward=*/false);
}

std::vector<std::tuple<std::string, KernelCase>> q128_key_tile32_params() {
  // bf16 (f16 changes only the mma's type), several key tiles; D 64 (which no GPU nuri targets
  // runs on 32-key tiles) on the short cases only, to keep the TSan suite short.
  std::vector<KernelCase> cases;
  for (const KernelCase& c : kernel_cases()) {
    if (c.dtype == DType::bf16 && c.t >= 33 && (c.d == 128 || c.t <= 100)) cases.push_back(c);
  }
  return on_16bit_backends(cases);
}

GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(AttentionQ128KeyTile32Test);
INSTANTIATE_TEST_SUITE_P(Ops, AttentionQ128KeyTile32Test,
                         ::testing::ValuesIn(q128_key_tile32_params()),
                         [](const auto& info) { return kernel_case_name(info, false); });

/// Out and lse of one forward of case c (inputs drawn from `seed`, in c's layout) on `be`, with
/// the softmax scale `scale` (0: 1/sqrt(D)).
std::vector<Vec> forward_bits(Backend& be, const KernelCase& c, float scale, uint64_t seed) {
  AttentionOptions opt;
  opt.causal = c.causal;
  opt.scale = scale;
  const Vec q = rounded(random_vec(c.b * c.t * c.h * c.d, seed), c.dtype),
            k = rounded(random_vec(c.b * c.t * c.hkv * c.d, seed + 1), c.dtype),
            v = rounded(random_vec(c.b * c.t * c.hkv * c.d, seed + 2), c.dtype);
  const Qkv in = qkv_tensors(be, c, q, k, v, false);
  Tensor out = be.empty({c.b, c.t, c.h, c.d}, c.dtype), lse = zeros_f32(be, {c.b, c.h, c.t});
  be.attention(in.q, in.k, in.v, out, lse, opt);
  return {values(be, out), values(be, lse)};
}

/// Expects two forward_bits results to be the same bits.
void expect_same_bits(const std::vector<Vec>& a, const std::vector<Vec>& b) {
  EXPECT_EQ(a[0], b[0]) << "out";
  EXPECT_EQ(a[1], b[1]) << "lse";
}

// Each row of a 128-row block meets the same key tiles in the same order as in a 64-row block
// (a warp skips only tiles it cannot see), and its products, softmax and stores are the same
// per row, so the two forwards agree bit for bit: `auto` may pick either without changing a
// result. Plain and negative scales, ragged ends, GQA, fused-QKV views.
TEST(AttentionQ128, ForwardIsBitForBitTheSixtyFourRowKernels) {
  int runs = 0;
  for (const auto& name : backends()) {
    if (act_dtype(name) == DType::f32) continue;
    auto [q64, why64] = make_backend_with(name, "NURI_ATTENTION", "nuri");
    auto [q128, why128] = make_backend_with(name, "NURI_ATTENTION", "nuri128");
    if (!q64 || !q128) {
      if (name == "cuda-emu") ADD_FAILURE() << why64 << why128;  // the emulator runs every path
      continue;
    }
    // Small under TSan: two query blocks at most.
    for (const KernelCase& c : {KernelCase{2, 17, 4, 2, 64, true, DType::bf16, true, false},
                                KernelCase{1, 150, 1, 1, 128, true, DType::f16, false, false},
                                KernelCase{1, 130, 1, 1, 64, false, DType::bf16, false, false}}) {
      for (float scale : {0.f, -0.3f}) {
        if (scale != 0.f && c.t == 130) continue;
        SCOPED_TRACE(name + " T " + std::to_string(c.t) + " D " + std::to_string(c.d) +
                     (c.causal ? " causal" : " full") + " scale " + std::to_string(scale));
        expect_same_bits(forward_bits(*q64, c, scale, 91), forward_bits(*q128, c, scale, 91));
      }
    }
    ++runs;
  }
  if (runs == 0) GTEST_SKIP() << "no backend with a 16-bit attention kernel in this build";
}

// The 64-row forward on swizzled tiles (attn_fwd_swizzled: D 128 on a GPU with 100 KiB of shared
// memory a SM, an RTX 3090/4090) does what it does on padded tiles, product for product, so its
// outputs are the same bits; the padded kernel meets the CPU bar in AttentionKernelTest. TilesFor
// picks either layout on any device: padded at 96 KiB (D 128) or 64 KiB (D 64), swizzled at
// 100 KiB (D 128) or 68 KiB (D 64, where 4 swizzled blocks fit against 3 padded: no GPU nuri
// targets has that, but the instance is compiled). KernelCounters.SixtyFourRowForward... and
// TileSharedMemory... check on the emulator which tiles each gives. On a GPU this tests the
// swizzled fragment loads' address XOR, which the emulator replaces with a check of the layout.
// Ragged ends, GQA, fused-QKV views, both input types, plain and negative scales.
TEST(AttentionSwizzledTiles, SixtyFourRowForwardIsBitForBitThePaddedTiles) {
  int runs = 0;
  for (const auto& name : backends()) {
    if (act_dtype(name) == DType::f32) continue;
    auto [be, why] = make_backend_with(name, "NURI_ATTENTION", "nuri");
    if (!be) {
      if (name == "cuda-emu") ADD_FAILURE() << why;  // the emulator runs every path
      continue;
    }
    for (const auto& [c, scale] :
         {std::pair<KernelCase, float>{{1, 130, 1, 1, 128, true, DType::bf16, false, false}, 0.f},
          {{1, 65, 4, 2, 128, false, DType::f16, true, false}, -0.3f},
          {{1, 70, 2, 1, 64, true, DType::bf16, false, false}, -0.3f}}) {
      SCOPED_TRACE(name + " T " + std::to_string(c.t) + " D " + std::to_string(c.d) +
                   (c.causal ? " causal" : " full"));
      std::vector<Vec> bits[2];  // padded, swizzled
      for (int swizzled = 0; swizzled < 2; ++swizzled) {
        TilesFor tiles(c.d == 128 ? (swizzled ? "102400" : "98304")
                                  : (swizzled ? "69632" : "65536"));
        bits[swizzled] = forward_bits(*be, c, scale, 94);
      }
      expect_same_bits(bits[0], bits[1]);
    }
    ++runs;
  }
  if (runs == 0) GTEST_SKIP() << "no backend with a 16-bit attention kernel in this build";
}

// Deterministic mode: the same bits from two backward runs, whose blocks the emulator schedules
// in different random orders (each launch draws its own order).
TEST(AttentionKernelDeterminism, DeterministicBackwardRepeatsBitForBit) {
  for (const auto& name : backends()) {
    if (act_dtype(name) == DType::f32) continue;
    for (const char* path : {"nuri", "sm90"}) {
      SCOPED_TRACE(std::string("NURI_ATTENTION=") + path);
      auto [be, why] = make_backend_with(name, "NURI_ATTENTION", path);
      if (!be) {
        if (name == "cuda-emu") ADD_FAILURE() << why;  // the emulator runs every path
        continue;
      }
      const KernelCase c{1, 100, 4, 2, 64, true, DType::bf16, false, false};
      const Shape qs{c.b, c.t, c.h, c.d}, ks{c.b, c.t, c.hkv, c.d};
      Tensor q = on(*be, qs, random_vec(c.b * c.t * c.h * c.d, 65)),
             k = on(*be, ks, random_vec(c.b * c.t * c.hkv * c.d, 66)),
             v = on(*be, ks, random_vec(c.b * c.t * c.hkv * c.d, 67)),
             dout = on(*be, qs, random_vec(c.b * c.t * c.h * c.d, 68));
      Tensor out = be->empty(qs, DType::bf16), lse = zeros_f32(*be, {c.b, c.h, c.t});
      be->attention(q, k, v, out, lse, AttentionOptions{});
      std::vector<Vec> runs;
      for (int run = 0; run < 2; ++run) {
        Tensor dq = zeros(*be, qs), dk = zeros(*be, ks), dv = zeros(*be, ks);
        be->attention_backward(q, k, v, out, lse, dout, dq, dk, dv, AttentionOptions{});
        Vec all = values(*be, dq);
        for (const auto& x : {values(*be, dk), values(*be, dv)}) {
          all.insert(all.end(), x.begin(), x.end());
        }
        runs.push_back(all);
      }
      EXPECT_EQ(runs[0], runs[1]) << name;
    }
  }
}

// What the CUDA kernels do not take is refused with a message that says what to do.
TEST(AttentionKernelErrors, UnsupportedInputsAreRefusedClearly) {
  for (const auto& name : backends()) {
    if (act_dtype(name) == DType::f32) continue;
    auto be = make_backend(name);
    auto expect_error = [&](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                            const Tensor& lse, const std::string& needle) {
      try {
        be->attention(q, k, v, out, lse, AttentionOptions{});
        ADD_FAILURE() << "no error; expected one containing \"" << needle << "\"";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      }
    };
    const Shape s{1, 8, 2, 64};
    Tensor lse = zeros_f32(*be, {1, 2, 8});
    Tensor f32 = zeros_f32(*be, s);
    expect_error(f32, f32, f32, f32, lse, "takes bf16 or f16");
    Tensor d32 = zeros(*be, {1, 8, 2, 32});
    expect_error(d32, d32, d32, d32, lse, "head_dim 32 has no CUDA kernel");
    Tensor padded = zeros(*be, {1, 8, 2, 68});  // head rows 136 bytes apart: not 16-byte aligned
    Tensor misaligned = padded.slice(3, 0, 64);
    Tensor good = zeros(*be, s);
    expect_error(misaligned, good, good, good, lse, "16-byte aligned rows");
    const auto [none, why] = make_backend_with(name, "NURI_ATTENTION", "fastest");
    EXPECT_FALSE(none);
    EXPECT_NE(why.find("NURI_ATTENTION: unknown attention path 'fastest'; use auto, nuri, "
                       "nuri128, sm90 or cudnn"),
              std::string::npos)
        << why;
  }
}

// A given softmax scale, positive and negative (the forward folds the scale into an FMA and
// flips Q's signs for a negative one: once in registers, or at each read of Q's tile for 128-row
// blocks at D 128; the sm_90a forward takes the row min instead), against the CPU backend on the
// same rounded inputs, with each attention path (for nuri128 the forward: its backward is
// nuri's).
TEST(AttentionKernelScale, GivenAndNegativeScalesMatchTheCpuBackend) {
  auto cpu = make_backend("cpu");
  int runs = 0;
  for (const auto& name : backends()) {
    if (act_dtype(name) == DType::f32) continue;
    for (const auto& [path, d] : {std::pair<const char*, int64_t>{"nuri", 64}, {"nuri128", 64},
                                  {"nuri128", 128}, {"sm90", 64}}) {
      auto [be, why] = make_backend_with(name, "NURI_ATTENTION", path);
      if (!be) {
        if (name == "cuda-emu") ADD_FAILURE() << why;  // the emulator runs every path
        continue;
      }
      const KernelCase c{1, 65, 2, 1, d, true, DType::bf16, false, false};
      const bool forward_only = std::string(path) == "nuri128";  // its backward is nuri's
      const Shape qs{c.b, c.t, c.h, c.d}, ks{c.b, c.t, c.hkv, c.d};
      const Vec q = rounded(random_vec(c.b * c.t * c.h * c.d, 95), c.dtype),
                k = rounded(random_vec(c.b * c.t * c.hkv * c.d, 96), c.dtype),
                v = rounded(random_vec(c.b * c.t * c.hkv * c.d, 97), c.dtype),
                dout = rounded(random_vec(c.b * c.t * c.h * c.d, 98), c.dtype);
      for (float scale : {0.3f, -0.2f, -20.f}) {
        SCOPED_TRACE(name + " NURI_ATTENTION=" + path + " D " + std::to_string(d) + " scale " +
                     std::to_string(scale));
        AttentionOptions opt;
        opt.scale = scale;
        std::vector<Vec> got[2];
        for (int which = 0; which < 2; ++which) {
          Backend& b = which ? *cpu : *be;
          const DType dt = which ? DType::f32 : c.dtype;
          Tensor tq = on_dtype(b, qs, q, dt), tk = on_dtype(b, ks, k, dt),
                 tv = on_dtype(b, ks, v, dt);
          Tensor out = b.empty(qs, dt), lse = zeros_f32(b, {c.b, c.h, c.t});
          b.attention(tq, tk, tv, out, lse, opt);
          if (forward_only) {
            got[which] = {values(b, out), values(b, lse)};
            continue;
          }
          Tensor dq = b.empty(qs, dt), dk = b.empty(ks, dt), dv = b.empty(ks, dt);
          for (const Tensor* t : {&dq, &dk, &dv}) b.zero(*t);
          b.attention_backward(tq, tk, tv, out, lse, on_dtype(b, qs, dout, dt), dq, dk, dv, opt);
          got[which] = {values(b, out), values(b, lse), values(b, dq), values(b, dk),
                        values(b, dv)};
        }
        const char* what[] = {"out", "lse", "dq", "dk", "dv"};
        for (int i = 0; i < int(got[0].size()); ++i) {
          double big = 0, worst = 0;
          for (size_t j = 0; j < got[1][size_t(i)].size(); ++j) {
            big = std::max(big, std::abs(got[1][size_t(i)][j]));
            worst = std::max(worst, std::abs(got[0][size_t(i)][j] - got[1][size_t(i)][j]));
          }
          // bf16 inputs are exact in both; the kernel rounds P, dS and its outputs to bf16.
          const double bound = i == 1 ? 1e-4 * std::max(big, 1.0) : 4.0 / 128 * big;
          EXPECT_LE(worst, bound) << what[i] << " differs from the CPU backend by " << worst
                                  << " (largest value " << big << ")";
        }
      }
      ++runs;
    }
  }
  if (runs == 0) GTEST_SKIP() << "no backend with a 16-bit attention kernel in this build";
}

// Inputs where key 0 holds every query row's max (an "attention sink", as in trained models):
// from the second key tile on no row's max moves, so every warp skips the rescale of its output
// (attn::rescale_rows' vote), on every forward path. The result must be the CPU backend's all
// the same; the random inputs of the suites exercise the rescale itself.
TEST(AttentionKernelStableMax, ForwardWithAKeyHoldingEveryRowsMaxMatchesTheCpuBackend) {
  auto cpu = make_backend("cpu");
  int runs = 0;
  for (const auto& name : backends()) {
    if (act_dtype(name) == DType::f32) continue;
    for (const char* path : {"nuri", "nuri128", "sm90"}) {
      auto [be, why] = make_backend_with(name, "NURI_ATTENTION", path);
      if (!be) {
        if (name == "cuda-emu") ADD_FAILURE() << why;  // the emulator runs every path
        continue;
      }
      for (const auto& dc : {std::pair<int64_t, bool>{64, false}, {128, true}}) {
        // Named copies: the score lambda below captures d, and clang 16 captures no
        // structured binding.
        const int64_t d = dc.first;
        const bool causal = dc.second;
        SCOPED_TRACE(name + " NURI_ATTENTION=" + path + " D " + std::to_string(d) +
                     (causal ? " causal" : " full"));
        const int64_t b = 1, t = 200, h = 2;  // 4 key tiles of 64, the last one partial
        const Shape s{b, t, h, d};
        Vec q = random_vec(b * t * h * d, 61, 0.25), k = random_vec(b * t * h * d, 62, 0.25),
            v = random_vec(b * t * h * d, 63);
        // Column 0 of every query is 4, and of key 0 is 16 (of the others at most 1): key 0
        // scores about 64 against a few units, still not so far that the other keys' weights
        // vanish in f32 (e^-5.6 to e^-7.9 each after the scale).
        for (int64_t row = 0; row < t * h; ++row) {
          q[size_t(row * d)] = 4.0;
          k[size_t(row * d)] = row < h ? 16.0 : std::clamp(k[size_t(row * d)], -1.0, 1.0);
        }
        q = rounded(q, DType::bf16);
        k = rounded(k, DType::bf16);
        v = rounded(v, DType::bf16);
        // The premise, on the rounded inputs: key 0 scores highest for every query and head.
        for (int64_t i = 0; i < t; ++i) {
          for (int64_t hh = 0; hh < h; ++hh) {
            auto score = [&](int64_t j) {
              double sum = 0;
              for (int64_t x = 0; x < d; ++x) {
                sum += q[size_t((i * h + hh) * d + x)] * k[size_t((j * h + hh) * d + x)];
              }
              return sum;
            };
            const double top = score(0);
            for (int64_t j = 1; j < t; ++j) ASSERT_LT(score(j), top) << i << " " << j;
          }
        }
        AttentionOptions opt;
        opt.causal = causal;
        Vec got[2][2];
        for (int which = 0; which < 2; ++which) {
          Backend& bk = which ? *cpu : *be;
          const DType dt = which ? DType::f32 : DType::bf16;
          // The CPU backend on one thread: at this size it would start OpenMP threads, whose
          // joins the emulated tree's race detector does not see.
          ThreadCount one(which ? 1 : max_threads());
          Tensor tq = on_dtype(bk, s, q, dt), tk = on_dtype(bk, s, k, dt),
                 tv = on_dtype(bk, s, v, dt);
          Tensor out = bk.empty(s, dt), lse = zeros_f32(bk, {b, h, t});
          bk.attention(tq, tk, tv, out, lse, opt);
          got[which][0] = values(bk, out);
          got[which][1] = values(bk, lse);
        }
        for (int i = 0; i < 2; ++i) {
          double big = 0, worst = 0;
          for (size_t j = 0; j < got[1][i].size(); ++j) {
            big = std::max(big, std::abs(got[1][i][j]));
            worst = std::max(worst, std::abs(got[0][i][j] - got[1][i][j]));
          }
          // As AttentionKernelScale: P and the output rounded to bf16 in the kernel.
          const double bound = i == 1 ? 1e-4 * std::max(big, 1.0) : 4.0 / 128 * big;
          EXPECT_LE(worst, bound) << (i ? "lse" : "out") << " differs from the CPU backend by "
                                  << worst << " (largest value " << big << ")";
        }
      }
      ++runs;
    }
  }
  if (runs == 0) GTEST_SKIP() << "no backend with a 16-bit attention kernel in this build";
}

// ---- attention_decode: the last rows of a sequence against its cached keys ------------------

struct DecodeCase {
  int64_t b, keys, rows, h, hkv, d;
  bool causal;
  DType dtype;  // on 16-bit backends; the f32 backends run f32
  bool docs = false;
};

// Rows [from, from + n) of x [B, T, heads, D] (contiguous), as [B, n, heads, D].
Vec rows_of(const Vec& x, int64_t b, int64_t t, int64_t width, int64_t from, int64_t n) {
  Vec r;
  for (int64_t bi = 0; bi < b; ++bi) {
    const auto begin = x.begin() + (bi * t + from) * width;
    r.insert(r.end(), begin, begin + n * width);
  }
  return r;
}

// The decoded rows are the rows attention() over every key gives: against the float64
// reference (f32 backends: 1e-5, and the CPU backend's attention() bit for bit; 16-bit
// backends: within twice the error of the same-precision model of the tiled kernels, whose
// P is rounded where the decoding kernel keeps f32). q comes from a fused QKV buffer, as the
// model's decode cache holds it.
void expect_decoded_rows(const std::string& name, const DecodeCase& dc) {
  auto be = make_backend(name);
  const DType dt = act_dtype(*be) == DType::f32 ? DType::f32 : dc.dtype;
  const KernelCase c{dc.b, dc.keys, dc.h, dc.hkv, dc.d, dc.causal, dt, true, false, dc.docs};
  const Vec q = rounded(random_vec(c.b * c.t * c.h * c.d, 71), dt),
            k = rounded(random_vec(c.b * c.t * c.hkv * c.d, 72), dt),
            v = rounded(random_vec(c.b * c.t * c.hkv * c.d, 73), dt);
  const Qkv in = qkv_tensors(*be, c, q, k, v, false);
  const int64_t from = dc.keys - dc.rows;
  const Tensor q_rows = in.q.slice(1, from, dc.keys);
  Tensor out = be->empty({c.b, dc.rows, c.h, c.d}, dt);
  AttentionOptions opt;
  opt.causal = c.causal;
  const Tensor docs = c.docs ? test_documents(c.b, c.t) : Tensor();
  opt.documents = docs_on(*be, docs);
  be->attention_decode(q_rows, in.k, in.v, out, opt);
  const Vec got = values(*be, out);

  const int32_t* ks = key_starts(docs);
  const AttnCase ac{c.b, c.t, c.h, c.hkv, c.d, c.causal, false};
  const Vec want = rows_of(attention_ref(ac, q, k, v, ks)[0], c.b, c.t, c.h * c.d, from, dc.rows);
  if (ks) {  // the documents matter: the rows are far from attention over whole rows
    const Vec whole = rows_of(attention_ref(ac, q, k, v)[0], c.b, c.t, c.h * c.d, from, dc.rows);
    EXPECT_GT(compare(got, whole).rel, 0.1);
  }
  if (dt == DType::f32) {
    NURI_EXPECT_CLOSE(got, want, 1e-5, "out");
    Tensor all = be->empty({c.b, c.t, c.h, c.d}, dt), lse = zeros_f32(*be, {c.b, c.h, c.t});
    be->attention(in.q, in.k, in.v, all, lse, opt);
    EXPECT_EQ(got, rows_of(values(*be, all), c.b, c.t, c.h * c.d, from, dc.rows))
        << "the CPU backend's decoded rows are attention()'s bits";
  } else {
    const ModelResult model = attention_model(c, q, k, v, Vec(q.size(), 0.0), dt, ks);
    expect_within_model(got, rows_of(model.out, c.b, c.t, c.h * c.d, from, dc.rows), want, "out");
  }
}

class AttentionDecodeTest : public ::testing::TestWithParam<std::tuple<std::string, DecodeCase>> {};

TEST_P(AttentionDecodeTest, RowsAreWhatAttentionOverEveryKeyGives) {
  expect_decoded_rows(std::get<0>(GetParam()), std::get<1>(GetParam()));
}

// One key; one row and a few against keys that end inside a 64-key tile, GQA and multi-query;
// more rows than a 64-row tile; full attention; head dims 40 and 256 (the decoding kernel's
// columns per lane); packed documents, with a last batch row of one document (B 3).
const DecodeCase kDecodeCases[] = {
    {1, 1, 1, 1, 1, 64, true, DType::bf16},
    {2, 70, 1, 4, 2, 64, true, DType::bf16},
    {1, 130, 3, 4, 1, 128, true, DType::f16},
    {2, 200, 70, 2, 2, 64, true, DType::bf16, true},
    {1, 33, 5, 2, 1, 64, false, DType::bf16},
    {1, 50, 2, 2, 2, 40, true, DType::f16},
    {1, 20, 1, 1, 1, 256, true, DType::bf16},
    {3, 300, 2, 2, 2, 128, true, DType::bf16, true},
};

std::vector<std::tuple<std::string, DecodeCase>> decode_params() {
  std::vector<std::tuple<std::string, DecodeCase>> r;
  for (const auto& name : backends())
    for (const auto& c : kDecodeCases) r.emplace_back(name, c);
  return r;
}

INSTANTIATE_TEST_SUITE_P(Ops, AttentionDecodeTest, ::testing::ValuesIn(decode_params()),
                         [](const auto& info) {
                           const std::string& name = std::get<0>(info.param);
                           const DecodeCase& c = std::get<1>(info.param);
                           std::ostringstream os;
                           os << name << "_" << (act_dtype(name) == DType::f32
                                                     ? "f32" : dtype_name(c.dtype))
                              << "_B" << c.b << "_K" << c.keys << "_R" << c.rows << "_H" << c.h
                              << "_KV" << c.hkv << "_D" << c.d
                              << (c.causal ? "_causal" : "_full") << (c.docs ? "_docs" : "");
                           return sanitize_name(os.str());
                         });

// The CUDA kernel splits a row's keys over blocks (NURI_DECODE_SPLITS sets how many): any
// count gives the rows within the same bound, including more splits than a row sees keys (the
// empty splits' partial results weigh nothing) and splits that cut documents. What the launcher
// chooses by itself is in test_kernel_counters.cpp.
TEST(AttentionDecodeSplits, EverySplitCountGivesTheRows) {
  int runs = 0;
  for (const auto& name : backends()) {
    if (act_dtype(name) == DType::f32) continue;  // the CPU backend does not split
    for (const char* splits : {"1", "2", "3", "7", "64"}) {
      SCOPED_TRACE(name + ", NURI_DECODE_SPLITS=" + splits);
      ScopedEnv env("NURI_DECODE_SPLITS", splits);
      expect_decoded_rows(name, {2, 150, 3, 4, 2, 64, true, DType::bf16, true});
      expect_decoded_rows(name, {1, 90, 1, 2, 1, 128, false, DType::f16});
    }
    ++runs;
  }
  if (runs == 0) GTEST_SKIP() << "no backend with a 16-bit attention kernel in this build";
}

// Shapes that do not fit are refused, naming what is wrong.
TEST(AttentionDecodeErrors, MismatchedShapesAreRefusedClearly) {
  for (const auto& name : backends()) {
    auto be = make_backend(name);
    const DType dt = act_dtype(*be);
    auto expect_error = [&](const Tensor& q, const Tensor& kv, const AttentionOptions& opt,
                            const std::string& needle) {
      const Tensor out = be->empty(q.shape(), dt);
      try {
        be->attention_decode(q, kv, kv, out, opt);
        ADD_FAILURE() << "no error; expected one containing \"" << needle << "\"";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      }
    };
    const Tensor q = be->empty({1, 4, 2, 64}, dt), kv3 = be->empty({1, 3, 2, 64}, dt);
    be->zero(q);
    be->zero(kv3);
    expect_error(q, kv3, AttentionOptions{}, "keys >= 4");
    const Tensor kv8 = be->empty({1, 8, 2, 64}, dt);
    be->zero(kv8);
    AttentionOptions docs;
    docs.documents = docs_on(*be, test_documents(1, 4));
    expect_error(q, kv8, docs, "expected (2, 1, 8)");
    docs.documents = docs_on(*be, test_documents(1, 8));
    docs.causal = false;
    expect_error(q, kv8, docs, "documents (a document mask) need causal attention");
    if (dt != DType::f32) {  // the CUDA kernel's limit (a lane holds D / 32 columns)
      const Tensor wide = be->empty({1, 1, 1, 264}, dt);
      be->zero(wide);
      expect_error(wide, wide, AttentionOptions{}, "head_dim 264 exceeds the decoding kernel's");
      const Tensor no_heads = be->empty({1, 1, 0, 64}, dt);
      expect_error(no_heads, no_heads, AttentionOptions{}, "heads and head_dim must be positive");
      for (const char* bad : {"0", "65", "two", "3x", " 3", "+3"}) {
        ScopedEnv env("NURI_DECODE_SPLITS", bad);
        expect_error(q, kv8, AttentionOptions{}, std::string("NURI_DECODE_SPLITS='") + bad);
      }
    }
  }
}

}  // namespace
}  // namespace nuri::test
