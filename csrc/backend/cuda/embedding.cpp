// Token + position embedding on the CUDA backend, whole-table and vocabulary-parallel (a shard
// holds the rows [row_lo, row_lo + Vl); the whole table is the shard with row_lo = 0 and every
// row). The token array is copied to the host (a stream synchronization) to validate it with the
// CPU backend's message, and, in the backward, to sort positions by token: the runs that make the
// scatter-add deterministic without atomics (kernels/embedding.cuh). Given positions (packed
// documents) are checked the same way, and dwpe is then the same scatter by position. Tokens
// stay i32 on the device.
#include "embedding.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "backend/cuda/check.h"
#include "backend/cuda/cuda_backend.h"

namespace nuri {

namespace {

void cuda_check(cudaError_t err, const char* op, const char* what) {
  NURI_CHECK(err == cudaSuccess, op, ": CUDA error ", cudaGetErrorName(err), " (",
             cudaGetErrorString(err), ") in ", what);
}

constexpr int64_t kWholeTable = -1;

// The first n i32 values of each device tensor given (tokens, and positions when defined), on
// the host after one stream synchronization for both.
void ids_to_host(const char* op, const Tensor& tokens, const Tensor& positions, int64_t n,
                 cudaStream_t stream, std::vector<int32_t>& tok, std::vector<int32_t>& pos) {
  tok.assign(size_t(n), 0);
  pos.assign(positions.defined() ? size_t(n) : 0, 0);
  if (n == 0) return;
  const char* what = positions.defined() ? "copying the tokens and positions to the host"
                                         : "copying the tokens to the host";
  cuda_check(cudaMemcpyAsync(tok.data(), tokens.raw(), size_t(n) * sizeof(int32_t),
                             cudaMemcpyDeviceToHost, stream),
             op, what);
  if (positions.defined()) {
    cuda_check(cudaMemcpyAsync(pos.data(), positions.raw(), size_t(n) * sizeof(int32_t),
                               cudaMemcpyDeviceToHost, stream),
               op, what);
  }
  cuda_check(cudaStreamSynchronize(stream), op, what);
}

// Validates tokens [B, T] against wte [V, C] (dtype wdt) and wpe [Tmax, C] (optional, dtype
// wdt), and positions [B, T] (optional, with wpe), and returns the tokens on the host (each in
// [0, vocab)) with B, T, C, and the positions on the host (each in [0, Tmax)) in `pos` when
// given. vocab is the whole vocabulary for a shard; kWholeTable means wte's rows.
std::vector<int32_t> embedding_dims(const char* op, const Tensor& tokens, const char* wte_name,
                                    const Tensor& wte, const char* wpe_name, const Tensor& wpe,
                                    const Tensor& positions, DType wdt, int64_t vocab,
                                    cudaStream_t stream, int64_t& b, int64_t& t, int64_t& c,
                                    std::vector<int32_t>& pos) {
  cuda::check_dev(op, "tokens", tokens, DType::i32);
  NURI_CHECK(tokens.dim() == 2, op, ": tokens must be [B, T], got shape ",
             shape_str(tokens.shape()));
  cuda::check_dev(op, wte_name, wte, wdt);
  NURI_CHECK(wte.dim() == 2, op, ": ", wte_name, " must be [V, C], got shape ",
             shape_str(wte.shape()));
  b = tokens.size(0);
  t = tokens.size(1);
  c = wte.size(1);
  if (wpe.defined()) {
    cuda::check_dev(op, wpe_name, wpe, wdt);
    NURI_CHECK(wpe.dim() == 2 && wpe.size(1) == c, op, ": ", wpe_name, " has shape ",
               shape_str(wpe.shape()), ", expected [Tmax, ", c, "]");
    NURI_CHECK(t <= wpe.size(0), op, ": sequence length ", t,
               " exceeds the position table's max_seq_len ", wpe.size(0));
  }
  const int64_t n = b * t;
  if (vocab == kWholeTable) vocab = wte.size(0);
  NURI_CHECK(n < (int64_t(1) << 31), op, ": ", n,
             " tokens exceed the CUDA backend's limit of 2^31 - 1 per call");
  if (positions.defined()) {
    NURI_CHECK(wpe.defined(), op, ": positions are given without a position table (", wpe_name,
               "); rotary models take no positions here");
    cuda::check_dev(op, "positions", positions, DType::i32);
    cuda::check_shape(op, "positions", positions, {b, t});
  }
  std::vector<int32_t> tok;
  ids_to_host(op, tokens, positions, n, stream, tok, pos);
  for (int64_t i = 0; i < n; ++i) {
    NURI_CHECK(tok[size_t(i)] >= 0 && tok[size_t(i)] < vocab, op, ": token id ", tok[size_t(i)],
               " at batch ", i / t, ", position ", i % t, " is outside the vocabulary [0, ", vocab,
               ")");
  }
  for (size_t i = 0; i < pos.size(); ++i) {
    NURI_CHECK(pos[i] >= 0 && pos[i] < wpe.size(0), op, ": position id ", pos[i], " at batch ",
               int64_t(i) / t, ", position ", int64_t(i) % t,
               " is outside the position table [0, ", wpe.size(0), ")");
  }
  return tok;
}

// The shard's own arguments: row_lo >= 0 and a vocabulary to check the tokens against.
void check_shard(const char* op, int64_t row_lo, int64_t vocab_size) {
  NURI_CHECK(vocab_size > 0, op, ": vocab_size (", vocab_size, ") must be positive");
  NURI_CHECK(row_lo >= 0, op, ": row_lo (", row_lo,
             ") must be >= 0 (the first vocabulary row this shard holds)");
}

// The backward's schedule, in one int32 buffer uploaded at once: order [N] (positions grouped
// by token, increasing within a token), then the runs and the merges (EmbeddingRun each).
struct RunPlan {
  std::vector<int32_t> words;
  size_t runs_at = 0, merges_at = 0;  // word offsets, 16-byte aligned
  int64_t runs = 0, merges = 0, slots = 0;
};

// Tokens are rows of dwte [rows, C] after subtracting row_lo; positions whose token falls outside
// [0, rows) belong to another shard and are left out of the plan.
RunPlan plan_runs(const std::vector<int32_t>& tok, int64_t row_lo, int64_t rows, int64_t run_rows) {
  const auto local = [&](int32_t token) { return int64_t(token) - row_lo; };
  const auto inside = [&](int32_t token) { return local(token) >= 0 && local(token) < rows; };
  std::vector<int32_t> unique_of(size_t(rows), -1);  // row -> index of first appearance
  std::vector<int32_t> token_of, start;              // per unique row
  int64_t n = 0;                                     // positions inside the shard
  for (int32_t token : tok) {
    if (!inside(token)) continue;
    ++n;
    const int32_t id = int32_t(local(token));
    int32_t& u = unique_of[size_t(id)];
    if (u < 0) {
      u = int32_t(token_of.size());
      token_of.push_back(id);
      start.push_back(0);
    }
    ++start[size_t(u)];  // a count for now
  }
  int32_t offset = 0;
  for (int32_t& s : start) offset += std::exchange(s, offset);
  RunPlan plan;
  const auto align4 = [](size_t w) { return (w + 3) / 4 * 4; };
  plan.words.resize(align4(size_t(n)));
  std::vector<int32_t> cursor = start;
  for (size_t i = 0; i < tok.size(); ++i) {
    if (!inside(tok[i])) continue;
    plan.words[size_t(cursor[size_t(unique_of[size_t(local(tok[i]))])]++)] = int32_t(i);
  }
  std::vector<kernels::EmbeddingRun> runs, merges;
  for (size_t u = 0; u < token_of.size(); ++u) {
    const int32_t begin = start[u], end = u + 1 < start.size() ? start[u + 1] : int32_t(n);
    if (end - begin <= run_rows) {
      runs.push_back({token_of[u], begin, end, -1});
      continue;
    }
    const int32_t first_slot = int32_t(plan.slots);
    for (int32_t s = begin; s < end; s += int32_t(run_rows)) {
      runs.push_back({token_of[u], s, std::min(end, s + int32_t(run_rows)), int32_t(plan.slots++)});
    }
    merges.push_back({token_of[u], first_slot, int32_t(plan.slots), -1});
  }
  static_assert(sizeof(kernels::EmbeddingRun) == 4 * sizeof(int32_t));
  plan.runs = int64_t(runs.size());
  plan.merges = int64_t(merges.size());
  plan.runs_at = plan.words.size();
  plan.merges_at = plan.runs_at + 4 * runs.size();
  plan.words.resize(plan.merges_at + 4 * merges.size());
  std::memcpy(plan.words.data() + plan.runs_at, runs.data(), runs.size() * sizeof(runs[0]));
  std::memcpy(plan.words.data() + plan.merges_at, merges.data(), merges.size() * sizeof(merges[0]));
  return plan;
}

template <class T>
void wte_grad(const Tensor& dout, const Tensor& dwte, const RunPlan& plan, void* workspace,
              size_t partial_at, bool accumulate, cudaStream_t stream) {
  const auto* words = static_cast<const int32_t*>(workspace);
  kernels::EmbeddingWteGradParams<T> p{};
  p.gDout = static_cast<const T*>(dout.raw());
  p.gOrder = words;
  p.gRuns = reinterpret_cast<const kernels::EmbeddingRun*>(words + plan.runs_at);
  p.gMerges = reinterpret_cast<const kernels::EmbeddingRun*>(words + plan.merges_at);
  p.gDwte = static_cast<float*>(dwte.raw());
  p.gPartial = reinterpret_cast<float*>(static_cast<char*>(workspace) + partial_at);
  p.runs = plan.runs;
  p.merges = plan.merges;
  p.channels = dwte.size(1);
  p.accumulate = accumulate;
  kernels::embedding_backward_wte(p, stream);
}

template <class T>
void wpe_grad(const Tensor& dout, const Tensor& dwpe, int64_t b, int64_t t, bool accumulate,
              cudaStream_t stream) {
  kernels::EmbeddingWpeGradParams<T> p{static_cast<const T*>(dout.raw()),
                                       static_cast<float*>(dwpe.raw()),
                                       b,
                                       t,
                                       dwpe.size(1),
                                       accumulate};
  kernels::embedding_backward_wpe(p, stream);
}

// The forward of a shard [row_lo, row_lo + Vl) of the table checked against vocab (kWholeTable:
// wte is the whole table, row_lo = 0).
void embed(CudaBackend& be, const char* op, const Tensor& tokens, const Tensor& wte,
           const Tensor& wpe, const Tensor& positions, const Tensor& out, int64_t row_lo,
           int64_t vocab) {
  cuda::check_dev(op, "tokens", tokens, DType::i32);
  const DType dt = cuda::activation_dtype(op, "wte", wte);
  int64_t b, t, c;
  std::vector<int32_t> pos;
  embedding_dims(op, tokens, "wte", wte, "wpe", wpe, positions, dt, vocab, be.stream(), b, t, c,
                 pos);
  cuda::check_dev(op, "out", out, dt);
  cuda::check_shape(op, "out", out, {b, t, c});
  const auto* gpos = positions.defined() ? static_cast<const int32_t*>(positions.raw()) : nullptr;
  if (dt == DType::bf16) {
    using T = __nv_bfloat16;
    kernels::embedding<T>(
        {static_cast<const int32_t*>(tokens.raw()), static_cast<const T*>(wte.raw()),
         wpe.defined() ? static_cast<const T*>(wpe.raw()) : nullptr, gpos,
         static_cast<T*>(out.raw()), b * t, t, c, row_lo, wte.size(0)},
        be.stream());
  } else {
    kernels::embedding<float>(
        {static_cast<const int32_t*>(tokens.raw()), static_cast<const float*>(wte.raw()),
         wpe.defined() ? static_cast<const float*>(wpe.raw()) : nullptr, gpos,
         static_cast<float*>(out.raw()), b * t, t, c, row_lo, wte.size(0)},
        be.stream());
  }
}

// dst [rows, C] (+)= the scatter of dout [n, C] by ids[i] - row_lo (host ids; those outside
// [0, rows) are another shard's and left out), deterministically: the run plan uploaded to the
// workspace, then the run and merge kernels.
void scatter_grad(CudaBackend& be, const char* op, const std::vector<int32_t>& ids,
                  int64_t row_lo, const Tensor& dout, DType dt, const Tensor& dst,
                  bool accumulate) {
  const cudaStream_t stream = be.stream();
  const int64_t c = dst.size(1);
  if (!accumulate && dst.numel() > 0) {
    cuda_check(cudaMemsetAsync(dst.raw(), 0, dst.nbytes(), stream), op, "zeroing a gradient");
  }
  if (ids.empty() || c == 0) return;
  const RunPlan plan = plan_runs(ids, row_lo, dst.size(0), kernels::kEmbeddingRunRows);
  const size_t words_bytes = plan.words.size() * sizeof(int32_t);
  const size_t partial_at = (words_bytes + 255) / 256 * 256;
  void* ws = be.workspace(partial_at + size_t(plan.slots * c) * sizeof(float));
  if (words_bytes > 0) {
    cuda_check(cudaMemcpyAsync(ws, plan.words.data(), words_bytes, cudaMemcpyHostToDevice, stream),
               op, "uploading the scatter's runs");
  }
  if (dt == DType::bf16) {
    wte_grad<__nv_bfloat16>(dout, dst, plan, ws, partial_at, accumulate, stream);
  } else {
    wte_grad<float>(dout, dst, plan, ws, partial_at, accumulate, stream);
  }
}

// The backward of a shard, as embed().
void embed_backward(CudaBackend& be, const char* op, const Tensor& tokens, const Tensor& dout,
                    const Tensor& dwte, const Tensor& dwpe, const Tensor& positions,
                    int64_t row_lo, int64_t vocab, bool accumulate) {
  const cudaStream_t stream = be.stream();
  int64_t b, t, c;
  std::vector<int32_t> pos;
  const std::vector<int32_t> tok = embedding_dims(op, tokens, "dwte", dwte, "dwpe", dwpe,
                                                  positions, DType::f32, vocab, stream, b, t, c,
                                                  pos);
  const DType dt = cuda::activation_dtype(op, "dout", dout);
  cuda::check_dev(op, "dout", dout, dt);
  cuda::check_shape(op, "dout", dout, {b, t, c});
  scatter_grad(be, op, tok, row_lo, dout, dt, dwte, accumulate);

  if (!dwpe.defined()) return;
  if (positions.defined()) {  // rows by position: the same scatter as the tokens'
    scatter_grad(be, op, pos, 0, dout, dt, dwpe, accumulate);
    return;
  }
  if (b > 0 && t > 0 && c > 0) {
    if (dt == DType::bf16) {
      wpe_grad<__nv_bfloat16>(dout, dwpe, b, t, accumulate, stream);
    } else {
      wpe_grad<float>(dout, dwpe, b, t, accumulate, stream);
    }
  }
  // Rows the batch does not reach: zeroed when overwriting (and every row when B = 0).
  const int64_t first_zero = b > 0 ? t : 0;
  if (!accumulate && dwpe.size(0) > first_zero && c > 0) {
    cuda_check(cudaMemsetAsync(static_cast<float*>(dwpe.raw()) + first_zero * c, 0,
                               size_t((dwpe.size(0) - first_zero) * c) * sizeof(float), stream),
               op, "zeroing dwpe");
  }
}

}  // namespace

void CudaBackend::embedding(const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                            const Tensor& positions, const Tensor& out) {
  embed(*this, "embedding", tokens, wte, wpe, positions, out, 0, kWholeTable);
}

void CudaBackend::embedding_backward(const Tensor& tokens, const Tensor& dout, const Tensor& dwte,
                                     const Tensor& dwpe, const Tensor& positions,
                                     bool accumulate) {
  embed_backward(*this, "embedding_backward", tokens, dout, dwte, dwpe, positions, 0, kWholeTable,
                 accumulate);
}

void CudaBackend::embedding_shard(const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                                  const Tensor& positions, const Tensor& out, int64_t row_lo,
                                  int64_t vocab_size) {
  constexpr const char* op = "embedding_shard";
  check_shard(op, row_lo, vocab_size);
  embed(*this, op, tokens, wte, wpe, positions, out, row_lo, vocab_size);
}

void CudaBackend::embedding_shard_backward(const Tensor& tokens, const Tensor& dout,
                                           const Tensor& dwte, const Tensor& dwpe,
                                           const Tensor& positions, int64_t row_lo,
                                           int64_t vocab_size, bool accumulate) {
  constexpr const char* op = "embedding_shard_backward";
  check_shard(op, row_lo, vocab_size);
  embed_backward(*this, op, tokens, dout, dwte, dwpe, positions, row_lo, vocab_size, accumulate);
}

}  // namespace nuri
