// Token + learned position embedding, whole-table and vocabulary-parallel (a shard holds the
// rows [row_lo, row_lo + Vl) of the table; tokens outside it contribute 0). The whole-table ops
// are the shard with row_lo = 0 and every row, so both run the same loops. The backward is a
// scatter-add; it is made deterministic (independent of thread count) by giving each thread a
// block of channels and walking all tokens in order, instead of using atomics.
#include <algorithm>
#include <cstring>

#include "backend/cpu/check.h"
#include "backend/cpu/cpu_backend.h"

namespace nuri {

using cpu::check_cpu;

namespace {

constexpr int64_t kWholeTable = -1;

// Validates tokens [B, T] (every id in [0, vocab)) against wte [V, C] and wpe [Tmax, C], and
// positions [B, T] (optional, with wpe: each in [0, Tmax)); returns B, T, C. vocab is the whole
// vocabulary for a shard; kWholeTable means wte's rows.
void embedding_dims(const char* op, const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                    const Tensor& positions, int64_t vocab, int64_t& b, int64_t& t, int64_t& c) {
  check_cpu(op, "tokens", tokens, DType::i32);
  NURI_CHECK(tokens.dim() == 2, op, ": tokens must be [B, T], got shape ",
             shape_str(tokens.shape()));
  check_cpu(op, "wte", wte);
  NURI_CHECK(wte.dim() == 2, op, ": wte must be [V, C], got shape ", shape_str(wte.shape()));
  b = tokens.size(0);
  t = tokens.size(1);
  c = wte.size(1);
  if (wpe.defined()) {
    check_cpu(op, "wpe", wpe);
    NURI_CHECK(wpe.dim() == 2 && wpe.size(1) == c, op, ": wpe has shape ",
               shape_str(wpe.shape()), ", expected [Tmax, ", c, "]");
    NURI_CHECK(t <= wpe.size(0), op, ": sequence length ", t,
               " exceeds the position table's max_seq_len ", wpe.size(0));
  }
  if (positions.defined()) {
    NURI_CHECK(wpe.defined(), op, ": positions are given without a position table (wpe); "
               "rotary models take no positions here");
    check_cpu(op, "positions", positions, DType::i32);
    cpu::check_shape(op, "positions", positions, {b, t});
    const int32_t* pos = positions.data<int32_t>();
    for (int64_t i = 0; i < b * t; ++i) {
      NURI_CHECK(pos[i] >= 0 && pos[i] < wpe.size(0), op, ": position id ", pos[i], " at batch ",
                 i / t, ", position ", i % t, " is outside the position table [0, ",
                 wpe.size(0), ")");
    }
  }
  if (vocab == kWholeTable) vocab = wte.size(0);
  const int32_t* tok = tokens.data<int32_t>();
  for (int64_t i = 0; i < b * t; ++i) {
    NURI_CHECK(tok[i] >= 0 && tok[i] < vocab, op, ": token id ", tok[i], " at batch ", i / t,
               ", position ", i % t, " is outside the vocabulary [0, ", vocab, ")");
  }
}

// The shard's own arguments: row_lo >= 0 and a vocabulary to check the tokens against.
void check_shard(const char* op, int64_t row_lo, int64_t vocab_size) {
  NURI_CHECK(vocab_size > 0, op, ": vocab_size (", vocab_size, ") must be positive");
  NURI_CHECK(row_lo >= 0, op, ": row_lo (", row_lo,
             ") must be >= 0 (the first vocabulary row this shard holds)");
}

// out [B·T, C] = wte [Vl, C][token - row_lo] (0 for tokens outside the shard) + wpe [Tmax, C][p]
// when given, p = positions[i] or t. The whole-table op has every token inside.
void embed(const Tensor& tokens, const Tensor& wte, const Tensor& wpe, const Tensor& positions,
           const Tensor& out, int64_t b, int64_t t, int64_t c, int64_t row_lo) {
  const int32_t* tok = tokens.data<int32_t>();
  const int32_t* pos = positions.defined() ? positions.data<int32_t>() : nullptr;
  const float* e = wte.data<float>();
  const float* p = wpe.defined() ? wpe.data<float>() : nullptr;
  float* o = out.data<float>();
  const int64_t rows = wte.size(0);
#pragma omp parallel for schedule(static) if (b * t * c >= cpu::kParallelWork)
  for (int64_t i = 0; i < b * t; ++i) {
    const int64_t id = int64_t(tok[i]) - row_lo;
    float* orow = o + i * c;
    const float* pr = p ? p + (pos ? int64_t(pos[i]) : i % t) * c : nullptr;
    if (id < 0 || id >= rows) {  // another shard's token: only the position term
      if (pr) {
        std::memcpy(orow, pr, size_t(c) * sizeof(float));
      } else {
        std::memset(orow, 0, size_t(c) * sizeof(float));
      }
      continue;
    }
    const float* er = e + id * c;
    if (pr) {
      for (int64_t j = 0; j < c; ++j) orow[j] = er[j] + pr[j];
    } else {
      std::memcpy(orow, er, size_t(c) * sizeof(float));
    }
  }
}

// dst [rows, C] (+)= the scatter of dout [n, C] by id[i] - row_lo over the ids in [0, rows). Each
// thread owns a block of columns and walks the positions in order: the same sums on any thread
// count.
void scatter_rows(const int32_t* id, const float* g, int64_t n, int64_t c, int64_t row_lo,
                  const Tensor& dst, bool accumulate) {
  float* dw = dst.data<float>();
  const int64_t rows = dst.size(0);
  if (!accumulate) std::memset(dw, 0, dst.nbytes());
  constexpr int64_t kCols = 64;
  const int64_t blocks = (c + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (n * c >= cpu::kParallelWork)
  for (int64_t bi = 0; bi < blocks; ++bi) {
    const int64_t j0 = bi * kCols, j1 = std::min(c, j0 + kCols);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = int64_t(id[i]) - row_lo;
      if (r < 0 || r >= rows) continue;  // another shard's row
      float* d = dw + r * c;
      const float* src = g + i * c;
      for (int64_t j = j0; j < j1; ++j) d[j] += src[j];
    }
  }
}

// dwte [Vl, C] (+)= the scatter of dout [B·T, C] by token - row_lo over the tokens inside the
// shard; dwpe [Tmax, C] (+)= the scatter by position (Σ_b dout at row t without positions) when
// given.
void embed_backward(const Tensor& tokens, const Tensor& dout, const Tensor& dwte,
                    const Tensor& dwpe, const Tensor& positions, int64_t b, int64_t t, int64_t c,
                    int64_t row_lo, bool accumulate) {
  const float* g = dout.data<float>();
  scatter_rows(tokens.data<int32_t>(), g, b * t, c, row_lo, dwte, accumulate);
  if (!dwpe.defined()) return;
  if (positions.defined()) {
    scatter_rows(positions.data<int32_t>(), g, b * t, c, 0, dwpe, accumulate);
    return;
  }
  float* dp = dwpe.data<float>();
#pragma omp parallel for schedule(static) if (b * t * c >= cpu::kParallelWork)
  for (int64_t ti = 0; ti < t; ++ti) {
    float* dst = dp + ti * c;
    if (!accumulate) std::memset(dst, 0, size_t(c) * sizeof(float));
    for (int64_t bi = 0; bi < b; ++bi) {
      const float* src = g + (bi * t + ti) * c;
      for (int64_t j = 0; j < c; ++j) dst[j] += src[j];
    }
  }
  if (!accumulate && dwpe.size(0) > t) {
    std::memset(dp + t * c, 0, size_t((dwpe.size(0) - t) * c) * sizeof(float));
  }
}

}  // namespace

void CpuBackend::embedding(const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                           const Tensor& positions, const Tensor& out) {
  constexpr const char* op = "embedding";
  int64_t b, t, c;
  embedding_dims(op, tokens, wte, wpe, positions, kWholeTable, b, t, c);
  check_cpu(op, "out", out);
  cpu::check_shape(op, "out", out, {b, t, c});
  embed(tokens, wte, wpe, positions, out, b, t, c, 0);
}

void CpuBackend::embedding_backward(const Tensor& tokens, const Tensor& dout, const Tensor& dwte,
                                    const Tensor& dwpe, const Tensor& positions,
                                    bool accumulate) {
  constexpr const char* op = "embedding_backward";
  int64_t b, t, c;
  embedding_dims(op, tokens, dwte, dwpe, positions, kWholeTable, b, t, c);
  check_cpu(op, "dout", dout);
  cpu::check_shape(op, "dout", dout, {b, t, c});
  embed_backward(tokens, dout, dwte, dwpe, positions, b, t, c, 0, accumulate);
}

void CpuBackend::embedding_shard(const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                                 const Tensor& positions, const Tensor& out, int64_t row_lo,
                                 int64_t vocab_size) {
  constexpr const char* op = "embedding_shard";
  check_shard(op, row_lo, vocab_size);
  int64_t b, t, c;
  embedding_dims(op, tokens, wte, wpe, positions, vocab_size, b, t, c);
  check_cpu(op, "out", out);
  cpu::check_shape(op, "out", out, {b, t, c});
  embed(tokens, wte, wpe, positions, out, b, t, c, row_lo);
}

void CpuBackend::embedding_shard_backward(const Tensor& tokens, const Tensor& dout,
                                          const Tensor& dwte, const Tensor& dwpe,
                                          const Tensor& positions, int64_t row_lo,
                                          int64_t vocab_size, bool accumulate) {
  constexpr const char* op = "embedding_shard_backward";
  check_shard(op, row_lo, vocab_size);
  int64_t b, t, c;
  embedding_dims(op, tokens, dwte, dwpe, positions, vocab_size, b, t, c);
  check_cpu(op, "dout", dout);
  cpu::check_shape(op, "dout", dout, {b, t, c});
  embed_backward(tokens, dout, dwte, dwpe, positions, b, t, c, row_lo, accumulate);
}

}  // namespace nuri
