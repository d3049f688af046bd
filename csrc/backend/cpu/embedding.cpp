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

// Validates tokens [B, T] (every id in [0, vocab)) against wte [V, C] and wpe [Tmax, C]; returns
// B, T, C. vocab is the whole vocabulary for a shard; kWholeTable means wte's rows.
void embedding_dims(const char* op, const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                    int64_t vocab, int64_t& b, int64_t& t, int64_t& c) {
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

// out [B·T, C] = wte [Vl, C][token - row_lo] (0 for tokens outside the shard) + wpe [Tmax, C][t]
// when given. The whole-table op has every token inside.
void embed(const Tensor& tokens, const Tensor& wte, const Tensor& wpe, const Tensor& out, int64_t b,
           int64_t t, int64_t c, int64_t row_lo) {
  const int32_t* tok = tokens.data<int32_t>();
  const float* e = wte.data<float>();
  const float* p = wpe.defined() ? wpe.data<float>() : nullptr;
  float* o = out.data<float>();
  const int64_t rows = wte.size(0);
#pragma omp parallel for schedule(static) if (b * t * c >= cpu::kParallelWork)
  for (int64_t i = 0; i < b * t; ++i) {
    const int64_t id = int64_t(tok[i]) - row_lo;
    float* orow = o + i * c;
    const float* pr = p ? p + (i % t) * c : nullptr;
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

// dwte [Vl, C] (+)= the scatter of dout [B·T, C] by token - row_lo over the tokens inside the
// shard; dwpe [Tmax, C] (+)= Σ_b dout when given.
void embed_backward(const Tensor& tokens, const Tensor& dout, const Tensor& dwte,
                    const Tensor& dwpe, int64_t b, int64_t t, int64_t c, int64_t row_lo,
                    bool accumulate) {
  const int32_t* tok = tokens.data<int32_t>();
  const float* g = dout.data<float>();
  float* dw = dwte.data<float>();
  const int64_t rows = dwte.size(0);
  if (!accumulate) std::memset(dw, 0, dwte.nbytes());
  constexpr int64_t kCols = 64;
  const int64_t blocks = (c + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (b * t * c >= cpu::kParallelWork)
  for (int64_t bi = 0; bi < blocks; ++bi) {
    const int64_t j0 = bi * kCols, j1 = std::min(c, j0 + kCols);
    for (int64_t i = 0; i < b * t; ++i) {
      const int64_t id = int64_t(tok[i]) - row_lo;
      if (id < 0 || id >= rows) continue;  // another shard's row
      float* dst = dw + id * c;
      const float* src = g + i * c;
      for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
    }
  }
  if (!dwpe.defined()) return;
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
                           const Tensor& out) {
  constexpr const char* op = "embedding";
  int64_t b, t, c;
  embedding_dims(op, tokens, wte, wpe, kWholeTable, b, t, c);
  check_cpu(op, "out", out);
  cpu::check_shape(op, "out", out, {b, t, c});
  embed(tokens, wte, wpe, out, b, t, c, 0);
}

void CpuBackend::embedding_backward(const Tensor& tokens, const Tensor& dout, const Tensor& dwte,
                                    const Tensor& dwpe, bool accumulate) {
  constexpr const char* op = "embedding_backward";
  int64_t b, t, c;
  embedding_dims(op, tokens, dwte, dwpe, kWholeTable, b, t, c);
  check_cpu(op, "dout", dout);
  cpu::check_shape(op, "dout", dout, {b, t, c});
  embed_backward(tokens, dout, dwte, dwpe, b, t, c, 0, accumulate);
}

void CpuBackend::embedding_shard(const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                                 const Tensor& out, int64_t row_lo, int64_t vocab_size) {
  constexpr const char* op = "embedding_shard";
  check_shard(op, row_lo, vocab_size);
  int64_t b, t, c;
  embedding_dims(op, tokens, wte, wpe, vocab_size, b, t, c);
  check_cpu(op, "out", out);
  cpu::check_shape(op, "out", out, {b, t, c});
  embed(tokens, wte, wpe, out, b, t, c, row_lo);
}

void CpuBackend::embedding_shard_backward(const Tensor& tokens, const Tensor& dout,
                                          const Tensor& dwte, const Tensor& dwpe, int64_t row_lo,
                                          int64_t vocab_size, bool accumulate) {
  constexpr const char* op = "embedding_shard_backward";
  check_shard(op, row_lo, vocab_size);
  int64_t b, t, c;
  embedding_dims(op, tokens, dwte, dwpe, vocab_size, b, t, c);
  check_cpu(op, "dout", dout);
  cpu::check_shape(op, "dout", dout, {b, t, c});
  embed_backward(tokens, dout, dwte, dwpe, b, t, c, row_lo, accumulate);
}

}  // namespace nuri
