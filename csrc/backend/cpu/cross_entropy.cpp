// Softmax cross-entropy fused over the vocabulary: one pass per row computes the log-sum-exp of
// the real columns (padded columns never enter), the backward writes softmax − onehot in place
// if asked. Rows whose target is ignore_index count for nothing.
//
// Vocabulary-parallel (tensor-parallel) variants: a shard holds the columns [col_lo, col_lo + Vl)
// and computes its own lse and loss terms; cross_entropy_merge combines the S shards' rows. The
// whole-vocabulary ops are the shard with col_lo = 0 holding every column, so both run the same
// row loops.
#include <algorithm>
#include <cmath>
#include <limits>

#include "backend/cpu/check.h"
#include "backend/cpu/cpu_backend.h"

namespace nuri {

using cpu::check_cpu;

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Validates targets [N] (each in [0, vocab_size) or ignore_index); returns the rows that count.
int64_t count_targets(const char* op, const Tensor& targets, int64_t n, int64_t vocab_size,
                      int32_t ignore_index) {
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

// Validates logits [N, Vp], targets [N]; returns the number of rows that count.
int64_t check_cross_entropy(const char* op, const Tensor& logits, const Tensor& targets,
                            int64_t vocab_size, int32_t ignore_index) {
  check_cpu(op, "logits", logits);
  NURI_CHECK(logits.dim() == 2, op, ": logits must be [N, padded_vocab], got shape ",
             shape_str(logits.shape()));
  const int64_t n = logits.size(0), vp = logits.size(1);
  NURI_CHECK(vocab_size > 0 && vocab_size <= vp, op, ": vocab_size ", vocab_size,
             " must be in [1, ", vp, "] (the padded width of logits)");
  return count_targets(op, targets, n, vocab_size, ignore_index);
}

// Validates a shard's logits [N, Vl] (the columns [col_lo, col_lo + Vl)), col_lo and targets
// [N]; returns the rows that count (over the whole vocabulary: the same on every shard).
int64_t check_shard(const char* op, const Tensor& logits, const Tensor& targets, int64_t vocab_size,
                    int32_t ignore_index, int64_t col_lo) {
  check_cpu(op, "logits", logits);
  NURI_CHECK(logits.dim() == 2, op, ": logits must be [N, shard_width], got shape ",
             shape_str(logits.shape()));
  NURI_CHECK(vocab_size > 0, op, ": vocab_size (", vocab_size, ") must be positive");
  NURI_CHECK(col_lo >= 0 && col_lo < vocab_size, op, ": col_lo (", col_lo,
             ") must be in [0, vocab_size = ", vocab_size,
             "): a shard starts at a real column of the vocabulary");
  return count_targets(op, targets, logits.size(0), vocab_size, ignore_index);
}

// The shard's real columns: [0, real) of its Vl (the rest is padding), 0 for an empty shard.
int64_t real_columns(int64_t width, int64_t vocab_size, int64_t col_lo) {
  return std::max<int64_t>(0, std::min(width, vocab_size - col_lo));
}

// lse [N] and losses [N] of logits [N, width] holding the vocabulary ids [col_lo, col_lo + real)
// in their first `real` columns: losses = lse - logit[target - col_lo] for a target in the
// shard, lse for a target elsewhere, 0 where ignored. lse = -inf when real = 0.
void ce_rows(const Tensor& logits, const Tensor& targets, int64_t real, int64_t col_lo,
             int32_t ignore_index, const Tensor& losses, const Tensor& lse) {
  const int64_t n = logits.size(0), width = logits.size(1);
  const float* lg = logits.data<float>();
  const int32_t* tg = targets.data<int32_t>();
  float* lo = losses.data<float>();
  float* ls = lse.data<float>();
#pragma omp parallel for schedule(static) if (n * real >= cpu::kParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const float* row = lg + i * width;
    float mx = kNegInf;
    for (int64_t j = 0; j < real; ++j) mx = std::max(mx, row[j]);
    // A float running sum over ~50k terms loses ~1e-5 relative; the sum is cheap next to the
    // exponentials, so it is kept in double.
    double sum = 0.0;
    for (int64_t j = 0; j < real; ++j) sum += double(std::exp(row[j] - mx));
    const float l = real > 0 ? mx + float(std::log(sum)) : kNegInf;
    ls[i] = l;
    const int64_t local = int64_t(tg[i]) - col_lo;
    if (tg[i] == ignore_index) {
      lo[i] = 0.f;
    } else {
      lo[i] = local >= 0 && local < real ? l - row[local] : l;
    }
  }
}

// dlogits [N, width] = scale · (softmax - onehot) on the first `real` columns of rows that
// count (onehot at target - col_lo when in the shard), 0 elsewhere. dlogits may alias logits.
void ce_backward_rows(const Tensor& logits, const Tensor& targets, const Tensor& lse, int64_t real,
                      int64_t col_lo, int32_t ignore_index, float scale, const Tensor& dlogits) {
  const int64_t n = logits.size(0), width = logits.size(1);
  const float* lg = logits.data<float>();
  const int32_t* tg = targets.data<int32_t>();
  const float* ls = lse.data<float>();
  float* dl = dlogits.data<float>();
#pragma omp parallel for schedule(static) if (n * width >= cpu::kParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const float* row = lg + i * width;
    float* drow = dl + i * width;
    if (tg[i] == ignore_index) {
      for (int64_t j = 0; j < width; ++j) drow[j] = 0.f;
      continue;
    }
    const float l = ls[i];
    for (int64_t j = 0; j < real; ++j) drow[j] = scale * std::exp(row[j] - l);
    for (int64_t j = real; j < width; ++j) drow[j] = 0.f;
    const int64_t local = int64_t(tg[i]) - col_lo;
    if (local >= 0 && local < real) drow[local] -= scale;
  }
}

// loss [1] = Σ losses / count, summed in row order (deterministic); 0 if no row counts.
void mean_loss(const Tensor& losses, int64_t count, const Tensor& loss) {
  const float* lo = losses.data<float>();
  double total = 0.0;
  for (int64_t i = 0; i < losses.numel(); ++i) total += lo[i];
  loss.data<float>()[0] = count > 0 ? float(total / double(count)) : 0.f;
}

}  // namespace

void CpuBackend::cross_entropy(const Tensor& logits, const Tensor& targets, int64_t vocab_size,
                               int32_t ignore_index, const Tensor& losses, const Tensor& lse,
                               const Tensor& loss) {
  constexpr const char* op = "cross_entropy";
  const int64_t count = check_cross_entropy(op, logits, targets, vocab_size, ignore_index);
  const int64_t n = logits.size(0);
  check_cpu(op, "losses", losses);
  cpu::check_shape(op, "losses", losses, {n});
  check_cpu(op, "lse", lse);
  cpu::check_shape(op, "lse", lse, {n});
  check_cpu(op, "loss", loss);
  cpu::check_shape(op, "loss", loss, {1});
  ce_rows(logits, targets, vocab_size, 0, ignore_index, losses, lse);
  mean_loss(losses, count, loss);
}

void CpuBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                        const Tensor& lse, int64_t vocab_size,
                                        int32_t ignore_index, float dloss,
                                        const Tensor& dlogits) {
  constexpr const char* op = "cross_entropy_backward";
  const int64_t count = check_cross_entropy(op, logits, targets, vocab_size, ignore_index);
  const int64_t n = logits.size(0);
  check_cpu(op, "lse", lse);
  cpu::check_shape(op, "lse", lse, {n});
  check_cpu(op, "dlogits", dlogits);
  cpu::check_shape(op, "dlogits", dlogits, logits.shape());
  const float scale = count > 0 ? dloss / float(count) : 0.f;
  ce_backward_rows(logits, targets, lse, vocab_size, 0, ignore_index, scale, dlogits);
}

void CpuBackend::cross_entropy_shard(const Tensor& logits, const Tensor& targets,
                                     int64_t vocab_size, int32_t ignore_index, int64_t col_lo,
                                     const Tensor& losses, const Tensor& lse) {
  constexpr const char* op = "cross_entropy_shard";
  check_shard(op, logits, targets, vocab_size, ignore_index, col_lo);
  const int64_t n = logits.size(0);
  check_cpu(op, "losses", losses);
  cpu::check_shape(op, "losses", losses, {n});
  check_cpu(op, "lse", lse);
  cpu::check_shape(op, "lse", lse, {n});
  ce_rows(logits, targets, real_columns(logits.size(1), vocab_size, col_lo), col_lo, ignore_index,
          losses, lse);
}

void CpuBackend::cross_entropy_merge(const Tensor& part_lse, const Tensor& part_losses,
                                     const Tensor& targets, int32_t ignore_index,
                                     const Tensor& losses, const Tensor& lse, const Tensor& loss) {
  constexpr const char* op = "cross_entropy_merge";
  check_cpu(op, "part_lse", part_lse);
  NURI_CHECK(part_lse.dim() == 2 && part_lse.size(0) >= 1, op,
             ": part_lse must be [S, N] with S >= 1 shards, got shape ",
             shape_str(part_lse.shape()));
  const int64_t shards = part_lse.size(0), n = part_lse.size(1);
  check_cpu(op, "part_losses", part_losses);
  cpu::check_shape(op, "part_losses", part_losses, part_lse.shape());
  check_cpu(op, "targets", targets, DType::i32);
  cpu::check_shape(op, "targets", targets, {n});
  check_cpu(op, "losses", losses);
  cpu::check_shape(op, "losses", losses, {n});
  check_cpu(op, "lse", lse);
  cpu::check_shape(op, "lse", lse, {n});
  check_cpu(op, "loss", loss);
  cpu::check_shape(op, "loss", loss, {1});
  const float* pl = part_lse.data<float>();
  const float* plo = part_losses.data<float>();
  const int32_t* tg = targets.data<int32_t>();
  float* lo = losses.data<float>();
  float* ls = lse.data<float>();
  // The merge does not know vocab_size (the shards checked the targets against it); it rejects
  // only negative targets, which no vocabulary holds.
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (tg[i] == ignore_index) continue;
    NURI_CHECK(tg[i] >= 0, op, ": target ", tg[i], " at row ", i,
               " is negative and is not ignore_index (", ignore_index, ")");
    ++count;
  }
#pragma omp parallel for schedule(static) if (n * shards >= cpu::kParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    // A shard without real columns has lse = -inf: it adds nothing to the sum and owns no
    // target (its lse - loss would be -inf - -inf = NaN). A NaN lse wins the max and propagates.
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t s = 0; s < shards; ++s) {
      const double v = pl[s * n + i];
      if (v > mx || std::isnan(v)) mx = v;
    }
    double sum = 0.0, target_logit = 0.0;
    for (int64_t s = 0; s < shards; ++s) {
      const float v = pl[s * n + i];
      if (v == kNegInf) continue;
      sum += std::exp(double(v) - mx);
      target_logit += double(v) - double(plo[s * n + i]);  // 0 except on the target's owner
    }
    const double l = mx == -std::numeric_limits<double>::infinity() ? mx : mx + std::log(sum);
    ls[i] = float(l);
    lo[i] = tg[i] == ignore_index ? 0.f : float(l - target_logit);
  }
  mean_loss(losses, count, loss);
}

void CpuBackend::cross_entropy_shard_backward(const Tensor& logits, const Tensor& targets,
                                              const Tensor& lse, int64_t vocab_size,
                                              int32_t ignore_index, int64_t col_lo, float dloss,
                                              const Tensor& dlogits) {
  constexpr const char* op = "cross_entropy_shard_backward";
  const int64_t count = check_shard(op, logits, targets, vocab_size, ignore_index, col_lo);
  const int64_t n = logits.size(0);
  check_cpu(op, "lse", lse);
  cpu::check_shape(op, "lse", lse, {n});
  check_cpu(op, "dlogits", dlogits);
  cpu::check_shape(op, "dlogits", dlogits, logits.shape());
  const float scale = count > 0 ? dloss / float(count) : 0.f;  // as cross_entropy_backward
  ce_backward_rows(logits, targets, lse, real_columns(logits.size(1), vocab_size, col_lo), col_lo,
                   ignore_index, scale, dlogits);
}

}  // namespace nuri
