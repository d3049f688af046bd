// Causal or full softmax attention with grouped-query heads, FlashAttention-2 formulation:
// out = softmax(scale · Q Kᵀ) V per (batch, query head), query head h reading kv head h / (H/Hkv).
// The design choice: nothing of size T×T ever exists. The forward walks 64-key tiles with an
// online softmax and saves only lse [B, H, T]; the backward recomputes P = exp(scale·QKᵀ − lse)
// tile by tile. Every tile product runs through one register-blocked micro-kernel on contiguous,
// zero-padded scratch copies, so q, k, v may be strided views of a fused QKV buffer. The backward
// runs one task per (batch, kv head) that owns dK/dV of that head and dQ of its query heads: no
// races and no atomics, and the bits do not depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>

#include "backend/cpu/check.h"
#include "backend/cpu/cpu_backend.h"

namespace nuri {

namespace {

constexpr int kBq = 64;  // query rows per tile
constexpr int kBk = 64;  // keys per tile
constexpr int kMR = 4;   // micro-kernel rows: 4 × 16 accumulators fill 8 AVX2 registers
constexpr int kNR = 16;  // micro-kernel columns; every B operand is zero-padded to a multiple

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Eight floats in one AVX register (two SSE registers without AVX). The unaligned variant loads
// and stores rows of scratch at any float offset.
using vec8 = float __attribute__((vector_size(32)));
using vec8u = float __attribute__((vector_size(32), aligned(4)));

// C [MR, kNR] (row stride ldc) = (accumulate ? C : 0) + A · B, A[i, k] = a[i·a_rs + k·a_cs]
// (so Aᵀ is a stride swap), B [k_len, kNR] with row stride ldb. Explicit vectors keep the
// MR × kNR accumulators in registers, where g++ otherwise spills them.
template <int MR>
inline void micro_kernel(int k_len, const float* __restrict a, int64_t a_rs, int64_t a_cs,
                         const float* __restrict b, int64_t ldb, float* __restrict c, int64_t ldc,
                         bool accumulate) {
  static_assert(kNR == 16, "two vec8 per row");
  vec8 r_acc[MR][2];
  for (int i = 0; i < MR; ++i) {
    r_acc[i][0] = accumulate ? *reinterpret_cast<const vec8u*>(c + i * ldc) : vec8{};
    r_acc[i][1] = accumulate ? *reinterpret_cast<const vec8u*>(c + i * ldc + 8) : vec8{};
  }
  for (int k = 0; k < k_len; ++k) {
    const vec8 b0 = *reinterpret_cast<const vec8u*>(b + k * ldb);
    const vec8 b1 = *reinterpret_cast<const vec8u*>(b + k * ldb + 8);
    for (int i = 0; i < MR; ++i) {
      const float ai = a[i * a_rs + k * a_cs];
      r_acc[i][0] += ai * b0;
      r_acc[i][1] += ai * b1;
    }
  }
  for (int i = 0; i < MR; ++i) {
    *reinterpret_cast<vec8u*>(c + i * ldc) = r_acc[i][0];
    *reinterpret_cast<vec8u*>(c + i * ldc + 8) = r_acc[i][1];
  }
}

// C [m, n] = (accumulate ? C : 0) + A [m, k] · B [k, n]; n must be a multiple of kNR.
void tile_matmul(int m, int n, int k, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
                 int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  for (int n0 = 0; n0 < n; n0 += kNR) {
    int i = 0;
    for (; i + kMR <= m; i += kMR)
      micro_kernel<kMR>(k, a + i * a_rs, a_rs, a_cs, b + n0, ldb, c + i * ldc + n0, ldc,
                        accumulate);
    for (; i < m; ++i)
      micro_kernel<1>(k, a + i * a_rs, a_rs, a_cs, b + n0, ldb, c + i * ldc + n0, ldc, accumulate);
  }
}

// dst [rows, ld] = scale · src rows (row stride src_rs, d floats each), columns d..ld zeroed.
void load_rows(float* __restrict dst, int64_t ld, const float* __restrict src, int64_t src_rs,
               int rows, int d, float scale) {
  for (int r = 0; r < rows; ++r) {
    float* out = dst + r * ld;
    const float* in = src + r * src_rs;
    for (int i = 0; i < d; ++i) out[i] = scale * in[i];
    for (int64_t i = d; i < ld; ++i) out[i] = 0.f;
  }
}

// dst [d, kBk] = srcᵀ for src rows 0..rows (row stride src_rs), columns rows..cols zeroed.
void load_transposed(float* __restrict dst, const float* __restrict src, int64_t src_rs, int rows,
                     int cols, int d) {
  for (int r = 0; r < rows; ++r)
    for (int i = 0; i < d; ++i) dst[i * kBk + r] = src[r * src_rs + i];
  for (int i = 0; i < d; ++i)
    for (int r = rows; r < cols; ++r) dst[i * kBk + r] = 0.f;
}

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};

// Per-thread scratch for all threads of the coming parallel region, allocated before it so that
// a failure throws on the calling thread. Returns the buffer and the floats per thread.
std::unique_ptr<float[], AlignedFree> thread_scratch(int64_t floats, int64_t* per_thread) {
  *per_thread = round_up(floats, 16);  // 64-byte aligned slices
  const size_t bytes = size_t(*per_thread * omp_get_max_threads()) * sizeof(float);
  float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
  NURI_CHECK(p != nullptr, "attention: could not allocate ", bytes, " bytes of tile scratch");
  return std::unique_ptr<float[], AlignedFree>(p);
}

// A [B, T, heads, D] view with unit stride in D.
struct View4 {
  float* p = nullptr;
  int64_t sb = 0, st = 0, sh = 0;
  float* row(int64_t b, int64_t t, int64_t h) const { return p + b * sb + t * st + h * sh; }
};

View4 view4(const Tensor& t) { return {t.data<float>(), t.stride(0), t.stride(1), t.stride(2)}; }

struct AttnParams {
  View4 q;         // [B, T, H, D]
  View4 k, v;      // [B, Tk, Hkv, D]
  View4 out;       // [B, T, H, D]
  float* lse;      // [B, H, T]
  View4 dout, dq;  // [B, T, H, D]   (backward)
  View4 dk, dv;    // [B, T, Hkv, D] (backward)
  int64_t B, T, H, Hkv, D;
  // Keys, and the sequence row of query 0: Tk = T and row0 = 0 but in attention_decode, where
  // the queries are the last T of Tk rows (row0 = Tk - T; forward only).
  int64_t Tk, row0;
  float scale;
  bool causal;
  const int32_t* key_start = nullptr;  // [B, Tk] packed documents (AttentionOptions::documents)
  // The first key the query at sequence row `query` of batch row b may see.
  int64_t first_key(int64_t b, int64_t query) const {
    return key_start ? key_start[b * Tk + query] : 0;
  }
};

// Keys a query row may see inside the key tile [j0, j0 + bk): [first, end).
struct KeyRange {
  int first, end;
};
inline KeyRange visible_keys(const AttnParams& p, int64_t b, int64_t query, int64_t j0, int bk) {
  const int end = p.causal ? int(std::clamp<int64_t>(query - j0 + 1, 0, bk)) : bk;
  const int first = int(std::clamp<int64_t>(p.first_key(b, query) - j0, 0, end));
  return {first, end};
}

// out rows [q0, q0 + bq) of head h and their lse, walking key tiles with an online softmax.
// Query q0 + r is row row0 + q0 + r of the sequence, for the mask.
void forward_tile(const AttnParams& p, int64_t b, int64_t h, int64_t q0, float* ws) {
  const int d = int(p.D);
  const int64_t dp = round_up(p.D, kNR);
  const int bq = int(std::min<int64_t>(kBq, p.T - q0));
  const int64_t g = h / (p.H / p.Hkv);
  float* s_q = ws;                  // [kBq, dp] scale · Q
  float* s_kt = s_q + kBq * dp;     // [D, kBk] Kᵀ
  float* s_v = s_kt + p.D * kBk;    // [kBk, dp] V
  float* s_p = s_v + kBk * dp;      // [kBq, kBk] scores, then unnormalized probabilities
  float* r_acc = s_p + kBq * kBk;   // [kBq, dp] unnormalized output
  float* r_max = r_acc + kBq * dp;  // [kBq] running row max of the scores
  float* r_sum = r_max + kBq;       // [kBq] running row sum of exp(score − max)

  load_rows(s_q, dp, p.q.row(b, q0, h), p.q.st, bq, d, p.scale);
  std::fill(r_acc, r_acc + kBq * dp, 0.f);
  std::fill(r_max, r_max + kBq, -std::numeric_limits<float>::infinity());
  std::fill(r_sum, r_sum + kBq, 0.f);
  const int64_t row = p.row0 + q0;  // of the tile's first query
  const int64_t k_end = p.causal ? row + bq : p.Tk;  // causal: later key tiles are fully masked
  // Documents: the tile's first row starts first; key tiles before its document are masked.
  for (int64_t j0 = p.first_key(b, row) / kBk * kBk; j0 < k_end; j0 += kBk) {
    const int bk = int(std::min<int64_t>(kBk, k_end - j0));
    const int nk = int(round_up(bk, kNR));
    load_transposed(s_kt, p.k.row(b, j0, g), p.k.st, bk, nk, d);
    load_rows(s_v, dp, p.v.row(b, j0, g), p.v.st, bk, d, 1.f);
    tile_matmul(bq, nk, d, s_q, dp, 1, s_kt, kBk, s_p, kBk, false);  // S [bq, nk]
    for (int r = 0; r < bq; ++r) {
      float* s = s_p + r * kBk;
      const KeyRange vis = visible_keys(p, b, row + r, j0, bk);
      std::fill(s, s + vis.first, 0.f);
      std::fill(s + vis.end, s + bk, 0.f);
      if (vis.first == vis.end) continue;  // a row's keys all masked here: nothing to add
      float mx = r_max[r];  // −inf until the row's first visible key
      for (int n = vis.first; n < vis.end; ++n) mx = std::max(mx, s[n]);
      for (int n = vis.first; n < vis.end; ++n) s[n] = expf(s[n] - mx);
      float sum = 0.f;
      for (int n = vis.first; n < vis.end; ++n) sum += s[n];
      // Rescales what earlier tiles accumulated (nothing, and 0, before the first visible key).
      const float alpha = expf(r_max[r] - mx);
      r_sum[r] = r_sum[r] * alpha + sum;
      r_max[r] = mx;
      if (alpha != 1.f) {
        float* acc = r_acc + r * dp;
        for (int64_t i = 0; i < dp; ++i) acc[i] *= alpha;
      }
    }
    tile_matmul(bq, int(dp), bk, s_p, kBk, 1, s_v, dp, r_acc, dp, true);  // acc += P · V
  }
  float* lse = p.lse + (b * p.H + h) * p.T + q0;
  for (int r = 0; r < bq; ++r) {
    const float inv = 1.f / r_sum[r];
    const float* acc = r_acc + r * dp;
    float* out = p.out.row(b, q0 + r, h);
    for (int i = 0; i < d; ++i) out[i] = acc[i] * inv;
    lse[r] = r_max[r] + logf(r_sum[r]);
  }
}

int64_t forward_scratch(int64_t D) {
  const int64_t dp = round_up(D, kNR);
  return 2 * kBq * dp + D * kBk + kBk * dp + kBq * kBk + 2 * kBq;
}

// dk, dv of kv head g and dq of the query heads sharing it, for batch b. Key tiles outermost:
// dK/dV of a tile stay in scratch while every query tile of every head in the group passes.
void backward_kv_head(const AttnParams& p, int64_t b, int64_t g, float* ws) {
  const int d = int(p.D);
  const int64_t dp = round_up(p.D, kNR);
  const int64_t group = p.H / p.Hkv;
  float* s_kt = ws;                // [D, kBk] Kᵀ
  float* s_ks = s_kt + p.D * kBk;  // [kBk, dp] scale · K
  float* s_vt = s_ks + kBk * dp;   // [D, kBk] Vᵀ
  float* s_q = s_vt + p.D * kBk;   // [kBq, dp] scale · Q
  float* s_do = s_q + kBq * dp;    // [kBq, dp] dO
  float* s_p = s_do + kBq * dp;    // [kBq, kBk] P
  float* s_ds = s_p + kBq * kBk;   // [kBq, kBk] dP, then dS = P ∘ (dP − Di)
  float* s_dq = s_ds + kBq * kBk;  // [kBq, dp] this key tile's share of dQ
  float* r_dk = s_dq + kBq * dp;   // [kBk, dp]
  float* r_dv = r_dk + kBk * dp;   // [kBk, dp]
  float* r_lse = r_dv + kBk * dp;  // [kBq]
  float* r_di = r_lse + kBq;       // [kBq] Di = rowsum(dO ∘ O)

  for (int64_t h = g * group; h < (g + 1) * group; ++h)
    for (int64_t t = 0; t < p.T; ++t) std::fill(p.dq.row(b, t, h), p.dq.row(b, t, h) + d, 0.f);
  for (int64_t j0 = 0; j0 < p.T; j0 += kBk) {
    const int bk = int(std::min<int64_t>(kBk, p.T - j0));
    const int nk = int(round_up(bk, kNR));
    load_transposed(s_kt, p.k.row(b, j0, g), p.k.st, bk, nk, d);
    load_rows(s_ks, dp, p.k.row(b, j0, g), p.k.st, bk, d, p.scale);
    load_transposed(s_vt, p.v.row(b, j0, g), p.v.st, bk, nk, d);
    std::fill(r_dk, r_dk + kBk * dp, 0.f);
    std::fill(r_dv, r_dv + kBk * dp, 0.f);
    const int64_t i_begin = p.causal ? j0 / kBq * kBq : 0;  // earlier query tiles see no key here
    for (int64_t h = g * group; h < (g + 1) * group; ++h) {
      for (int64_t i0 = i_begin; i0 < p.T; i0 += kBq) {
        // Documents: this and every later query tile start past the key tile.
        if (p.first_key(b, i0) >= j0 + bk) break;
        const int bq = int(std::min<int64_t>(kBq, p.T - i0));
        load_rows(s_q, dp, p.q.row(b, i0, h), p.q.st, bq, d, p.scale);
        load_rows(s_do, dp, p.dout.row(b, i0, h), p.dout.st, bq, d, 1.f);
        const float* lse = p.lse + (b * p.H + h) * p.T + i0;
        for (int r = 0; r < bq; ++r) {
          const float* o = p.out.row(b, i0 + r, h);
          const float* dout = s_do + r * dp;
          float di = 0.f;
          for (int i = 0; i < d; ++i) di += dout[i] * o[i];
          r_di[r] = di;
          r_lse[r] = lse[r];
        }
        tile_matmul(bq, nk, d, s_q, dp, 1, s_kt, kBk, s_p, kBk, false);  // S [bq, nk]
        for (int r = 0; r < bq; ++r) {
          float* s = s_p + r * kBk;
          const KeyRange vis = visible_keys(p, b, i0 + r, j0, bk);
          std::fill(s, s + vis.first, 0.f);
          for (int n = vis.first; n < vis.end; ++n) s[n] = expf(s[n] - r_lse[r]);
          for (int n = vis.end; n < nk; ++n) s[n] = 0.f;
        }
        tile_matmul(bk, int(dp), bq, s_p, 1, kBk, s_do, dp, r_dv, dp, true);  // dV += Pᵀ dO
        tile_matmul(bq, nk, d, s_do, dp, 1, s_vt, kBk, s_ds, kBk, false);     // dP = dO Vᵀ
        for (int r = 0; r < bq; ++r) {
          float* ds = s_ds + r * kBk;
          const float* pr = s_p + r * kBk;
          const float di = r_di[r];
          for (int n = 0; n < nk; ++n) ds[n] = pr[n] * (ds[n] - di);
        }
        tile_matmul(bk, int(dp), bq, s_ds, 1, kBk, s_q, dp, r_dk, dp, true);    // dK += dSᵀ·sQ
        tile_matmul(bq, int(dp), bk, s_ds, kBk, 1, s_ks, dp, s_dq, dp, false);  // dS · sK
        for (int r = 0; r < bq; ++r) {
          float* dq = p.dq.row(b, i0 + r, h);
          const float* part = s_dq + r * dp;
          for (int i = 0; i < d; ++i) dq[i] += part[i];
        }
      }
    }
    for (int r = 0; r < bk; ++r) {
      std::copy(r_dk + r * dp, r_dk + r * dp + d, p.dk.row(b, j0 + r, g));
      std::copy(r_dv + r * dp, r_dv + r * dp + d, p.dv.row(b, j0 + r, g));
    }
  }
}

int64_t backward_scratch(int64_t D) {
  const int64_t dp = round_up(D, kNR);
  return 2 * D * kBk + 3 * kBk * dp + 3 * kBq * dp + 2 * kBq * kBk + 2 * kBq;
}

// q, k, v: 4 dims, f32 on the CPU, unit stride in D (out and dout of the backward alike).
void check_view(const char* op, const char* name, const Tensor& t) {
  cpu::check_cpu(op, name, t, DType::f32, /*contiguous=*/false);
  NURI_CHECK(t.dim() == 4, op, ": ", name, " must be [B, T, heads, head_dim], got shape ",
             shape_str(t.shape()));
  NURI_CHECK(t.stride(3) == 1, op, ": ", name, " must have unit stride in its last dim (shape ",
             shape_str(t.shape()), ", strides ", shape_str(t.strides()), ")");
}

// decode: the queries are the last T of k's rows (attention_decode), not all of them.
AttnParams check_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& lse, const AttentionOptions& opt, bool decode = false) {
  check_view(op, "q", q);
  check_view(op, "k", k);
  check_view(op, "v", v);
  AttnParams p{};
  p.B = q.size(0), p.T = q.size(1), p.H = q.size(2), p.Hkv = k.size(2), p.D = q.size(3);
  NURI_CHECK(p.T > 0 && p.D > 0, op, ": q has shape ", shape_str(q.shape()),
             "; the sequence length and head_dim must be positive");
  p.Tk = k.size(1);
  p.row0 = p.Tk - p.T;
  if (decode) {
    NURI_CHECK(k.size(0) == p.B && p.Tk >= p.T && k.size(3) == p.D, op, ": k has shape ",
               shape_str(k.shape()), ", expected (", p.B, ", keys >= ", p.T, ", n_kv_head, ",
               p.D, ") to hold q ", shape_str(q.shape()), "'s rows and those before");
  } else {
    NURI_CHECK(k.size(0) == p.B && p.Tk == p.T && k.size(3) == p.D, op, ": k has shape ",
               shape_str(k.shape()), ", expected (", p.B, ", ", p.T, ", n_kv_head, ", p.D,
               ") to match q ", shape_str(q.shape()));
  }
  cpu::check_shape(op, "v", v, k.shape());
  NURI_CHECK(p.Hkv > 0 && p.H % p.Hkv == 0, op, ": n_kv_head (", p.Hkv, ") must divide n_head (",
             p.H, ")");
  NURI_CHECK(std::isfinite(opt.scale), op, ": scale must be finite, got ", opt.scale);
  cpu::check_cpu(op, "lse", lse);
  cpu::check_shape(op, "lse", lse, {p.B, p.H, p.T});
  p.q = view4(q), p.k = view4(k), p.v = view4(v);
  p.lse = lse.data<float>();
  p.scale = opt.scale != 0.f ? opt.scale : 1.f / std::sqrt(float(p.D));
  p.causal = opt.causal;
  if (opt.documents.defined()) {
    NURI_CHECK(opt.causal, op, ": documents (a document mask) need causal attention");
    check_document_bounds(op, opt.documents);
    NURI_CHECK(opt.documents.size(1) == p.B && opt.documents.size(2) == p.Tk, op,
               ": documents has shape ", shape_str(opt.documents.shape()), ", expected (2, ", p.B,
               ", ", p.Tk, ") for k ", shape_str(k.shape()));
    p.key_start = opt.documents.data<int32_t>();
  }
  return p;
}

// attention() (decode false) and attention_decode(): out, and lse, of every query tile.
void forward(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
             const Tensor& out, const Tensor& lse, const AttentionOptions& opt, bool decode) {
  AttnParams p = check_inputs(op, q, k, v, lse, opt, decode);
  cpu::check_cpu(op, "out", out);
  cpu::check_shape(op, "out", out, q.shape());
  p.out = view4(out);

  int64_t per_thread = 0;
  const auto scratch = thread_scratch(forward_scratch(p.D), &per_thread);
  const int64_t n_tiles = (p.T + kBq - 1) / kBq;
#pragma omp parallel if (p.B * p.H * p.T * p.Tk * p.D >= 64 * cpu::kParallelWork)
  {
    float* ws = scratch.get() + omp_get_thread_num() * per_thread;
#pragma omp for collapse(3) schedule(dynamic, 1)
    for (int64_t b = 0; b < p.B; ++b)
      for (int64_t h = 0; h < p.H; ++h)
        for (int64_t tile = 0; tile < n_tiles; ++tile)  // last (causal: costliest) tiles first
          forward_tile(p, b, h, (n_tiles - 1 - tile) * kBq, ws);
  }
}

}  // namespace

void CpuBackend::attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                           const Tensor& lse, const AttentionOptions& opt) {
  forward("attention", q, k, v, out, lse, opt, /*decode=*/false);
}

void CpuBackend::attention_decode(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const AttentionOptions& opt) {
  const char* op = "attention_decode";
  NURI_CHECK(q.defined() && q.dim() == 4, op, ": q must be [B, T, heads, head_dim]");
  const Tensor lse = empty({q.size(0), q.size(2), q.size(1)});  // (unread)
  forward(op, q, k, v, out, lse, opt, /*decode=*/true);
}

void CpuBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& out, const Tensor& lse, const Tensor& dout,
                                    const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                    const AttentionOptions& opt) {
  const char* op = "attention_backward";
  AttnParams p = check_inputs(op, q, k, v, lse, opt);
  check_view(op, "out", out);
  cpu::check_shape(op, "out", out, q.shape());
  check_view(op, "dout", dout);
  cpu::check_shape(op, "dout", dout, q.shape());
  check_view(op, "dq", dq);  // strided views of one fused dQKV buffer are fine
  cpu::check_shape(op, "dq", dq, q.shape());
  check_view(op, "dk", dk);
  cpu::check_shape(op, "dk", dk, k.shape());
  check_view(op, "dv", dv);
  cpu::check_shape(op, "dv", dv, v.shape());
  p.out = view4(out), p.dout = view4(dout);
  p.dq = view4(dq), p.dk = view4(dk), p.dv = view4(dv);

  int64_t per_thread = 0;
  const auto scratch = thread_scratch(backward_scratch(p.D), &per_thread);
#pragma omp parallel if (p.B * p.H * p.T * p.T * p.D >= 64 * cpu::kParallelWork)
  {
    float* ws = scratch.get() + omp_get_thread_num() * per_thread;
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t b = 0; b < p.B; ++b)
      for (int64_t g = 0; g < p.Hkv; ++g) backward_kv_head(p, b, g, ws);
  }
}

}  // namespace nuri
