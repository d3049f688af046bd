// Softmax cross-entropy fused over the vocabulary: one pass per row computes the log-sum-exp of
// the real columns (padded columns never enter), the backward writes softmax − onehot in place
// if asked. Rows whose target is ignore_index count for nothing.
#include <cmath>
#include <limits>

#include "backend/cpu/check.h"
#include "backend/cpu/cpu_backend.h"

namespace nuri {

using cpu::check_cpu;

// Validates logits [N, Vp], targets [N]; returns the number of rows that count.
static int64_t check_cross_entropy(const char* op, const Tensor& logits, const Tensor& targets,
                                   int64_t vocab_size, int32_t ignore_index) {
  check_cpu(op, "logits", logits);
  NURI_CHECK(logits.dim() == 2, op, ": logits must be [N, padded_vocab], got shape ",
             shape_str(logits.shape()));
  const int64_t n = logits.size(0), vp = logits.size(1);
  NURI_CHECK(vocab_size > 0 && vocab_size <= vp, op, ": vocab_size ", vocab_size,
             " must be in [1, ", vp, "] (the padded width of logits)");
  check_cpu(op, "targets", targets, DType::i32);
  cpu::check_shape(op, "targets", targets, {n});
  const int32_t* tg = targets.data<int32_t>();
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (tg[i] == ignore_index) continue;
    NURI_CHECK(tg[i] >= 0 && tg[i] < vocab_size, op, ": target ", tg[i], " at row ", i,
               " is outside the vocabulary [0, ", vocab_size, ") and is not ignore_index (",
               ignore_index, ")");
    ++count;
  }
  return count;
}

void CpuBackend::cross_entropy(const Tensor& logits, const Tensor& targets, int64_t vocab_size,
                               int32_t ignore_index, const Tensor& losses, const Tensor& lse,
                               const Tensor& loss) {
  constexpr const char* op = "cross_entropy";
  const int64_t count = check_cross_entropy(op, logits, targets, vocab_size, ignore_index);
  const int64_t n = logits.size(0), vp = logits.size(1);
  check_cpu(op, "losses", losses);
  cpu::check_shape(op, "losses", losses, {n});
  check_cpu(op, "lse", lse);
  cpu::check_shape(op, "lse", lse, {n});
  check_cpu(op, "loss", loss);
  cpu::check_shape(op, "loss", loss, {1});
  const float* lg = logits.data<float>();
  const int32_t* tg = targets.data<int32_t>();
  float* lo = losses.data<float>();
  float* ls = lse.data<float>();
#pragma omp parallel for schedule(static) if (n * vocab_size >= cpu::kParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const float* row = lg + i * vp;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < vocab_size; ++j) mx = std::max(mx, row[j]);
    // A float running sum over ~50k terms loses ~1e-5 relative; the sum is cheap next to the
    // exponentials, so it is kept in double.
    double sum = 0.0;
    for (int64_t j = 0; j < vocab_size; ++j) sum += double(std::exp(row[j] - mx));
    const float l = mx + float(std::log(sum));
    ls[i] = l;
    lo[i] = tg[i] == ignore_index ? 0.f : l - row[tg[i]];
  }
  double total = 0.0;  // in row order: deterministic
  for (int64_t i = 0; i < n; ++i) total += lo[i];
  loss.data<float>()[0] = count > 0 ? float(total / double(count)) : 0.f;
}

void CpuBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                        const Tensor& lse, int64_t vocab_size,
                                        int32_t ignore_index, float dloss,
                                        const Tensor& dlogits) {
  constexpr const char* op = "cross_entropy_backward";
  const int64_t count = check_cross_entropy(op, logits, targets, vocab_size, ignore_index);
  const int64_t n = logits.size(0), vp = logits.size(1);
  check_cpu(op, "lse", lse);
  cpu::check_shape(op, "lse", lse, {n});
  check_cpu(op, "dlogits", dlogits);
  cpu::check_shape(op, "dlogits", dlogits, logits.shape());
  const float scale = count > 0 ? dloss / float(count) : 0.f;
  const float* lg = logits.data<float>();
  const int32_t* tg = targets.data<int32_t>();
  const float* ls = lse.data<float>();
  float* dl = dlogits.data<float>();
#pragma omp parallel for schedule(static) if (n * vp >= cpu::kParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const float* row = lg + i * vp;
    float* drow = dl + i * vp;
    if (tg[i] == ignore_index) {
      for (int64_t j = 0; j < vp; ++j) drow[j] = 0.f;
      continue;
    }
    const float l = ls[i];
    for (int64_t j = 0; j < vocab_size; ++j) drow[j] = scale * std::exp(row[j] - l);
    for (int64_t j = vocab_size; j < vp; ++j) drow[j] = 0.f;
    drow[tg[i]] -= scale;
  }
}

}  // namespace nuri
