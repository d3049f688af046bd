// Cross-entropy on the CUDA backend: validation, dtype dispatch and the launches
// (kernels/cross_entropy.cuh). Logits and dlogits are bf16 or f32; lse, losses and loss are f32.
//
// Targets live on the device, so checking them is a kernel: a one-block scan counts the rows that
// count and finds the first bad target, and the host reads those 12 bytes back (one stream sync
// per call) to raise the CPU backend's error before any output is written and to know the count.
//
// The vocabulary-parallel ops run the same row kernels on a shard's columns [col_lo, col_lo + Vl)
// (the plain ops are col_lo = 0 with every column); the merge scans the targets only for the
// count (their range was checked by the shards, which alone know vocab_size).
#include "cross_entropy.h"  // kernels/

#include <algorithm>
#include <limits>

#include "backend/cuda/check.h"
#include "backend/cuda/cuda_backend.h"

namespace nuri {

namespace {

// Validates logits [N, Vp] (bf16 or f32), vocab_size and targets [N] (i32); returns the dtype.
DType check_logits_targets(const char* op, const Tensor& logits, const Tensor& targets,
                           int64_t vocab_size) {
  const DType dt = cuda::activation_dtype(op, "logits", logits);
  cuda::check_dev(op, "logits", logits, dt);
  NURI_CHECK(logits.dim() == 2, op, ": logits must be [N, padded_vocab], got shape ",
             shape_str(logits.shape()));
  const int64_t n = logits.size(0), vp = logits.size(1);
  NURI_CHECK(vocab_size > 0 && vocab_size <= vp, op, ": vocab_size ", vocab_size,
             " must be in [1, ", vp, "] (the padded width of logits)");
  NURI_CHECK(n <= std::numeric_limits<int32_t>::max(), op, ": ", n,
             " rows exceed the CUDA backend's limit of 2^31 - 1 (one block per row)");
  cuda::check_dev(op, "targets", targets, DType::i32);
  cuda::check_shape(op, "targets", targets, {n});
  return dt;
}

// Validates a shard's logits [N, Vl] (bf16 or f32; the columns [col_lo, col_lo + Vl)), col_lo and
// targets [N] (i32); returns the dtype.
DType check_shard(const char* op, const Tensor& logits, const Tensor& targets, int64_t vocab_size,
                  int64_t col_lo) {
  const DType dt = cuda::activation_dtype(op, "logits", logits);
  cuda::check_dev(op, "logits", logits, dt);
  NURI_CHECK(logits.dim() == 2, op, ": logits must be [N, shard_width], got shape ",
             shape_str(logits.shape()));
  NURI_CHECK(vocab_size > 0, op, ": vocab_size (", vocab_size, ") must be positive");
  NURI_CHECK(col_lo >= 0 && col_lo < vocab_size, op, ": col_lo (", col_lo,
             ") must be in [0, vocab_size = ", vocab_size,
             "): a shard starts at a real column of the vocabulary");
  const int64_t n = logits.size(0);
  NURI_CHECK(n <= std::numeric_limits<int32_t>::max(), op, ": ", n,
             " rows exceed the CUDA backend's limit of 2^31 - 1 (one block per row)");
  cuda::check_dev(op, "targets", targets, DType::i32);
  cuda::check_shape(op, "targets", targets, {n});
  return dt;
}

// The shard's real columns: [0, real) of its Vl (the rest is padding), 0 for an empty shard.
int64_t real_columns(int64_t width, int64_t vocab_size, int64_t col_lo) {
  return std::max<int64_t>(0, std::min(width, vocab_size - col_lo));
}

struct TargetScan {
  int64_t count;       // rows whose target is not ignore_index
  int64_t bad_row;     // first row whose target is outside [0, vocab) and not ignored; N if none
  int64_t bad_target;  // its target
};

// Runs the target scan against [0, vocab) and reads it back (a stream synchronization).
TargetScan scan(CudaBackend& be, const char* op, const Tensor& targets, int64_t vocab,
                int32_t ignore_index) {
  const int64_t n = targets.numel();
  if (n == 0) return {0, 0, 0};
  auto* g_result = static_cast<int32_t*>(be.workspace(3 * sizeof(int32_t)));
  kernels::launch_ce_scan_targets(targets.data<int32_t>(), n, vocab, ignore_index, g_result,
                                  be.stream());
  int32_t result[3];
  const cudaError_t err =
      cudaMemcpyAsync(result, g_result, sizeof(result), cudaMemcpyDeviceToHost, be.stream());
  NURI_CHECK(err == cudaSuccess, op,
             ": reading back the target scan failed: ", cudaGetErrorString(err));
  be.synchronize();
  return {result[0], result[1], result[2]};
}

// Throws on a target outside [0, vocab_size) that is not ignore_index (the CPU backend's
// message), else returns the number of rows that count.
int64_t scan_targets(CudaBackend& be, const char* op, const Tensor& targets, int64_t vocab_size,
                     int32_t ignore_index) {
  const TargetScan r = scan(be, op, targets, vocab_size, ignore_index);
  NURI_CHECK(r.bad_row >= targets.numel(), op, ": target ", r.bad_target, " at row ", r.bad_row,
             " is outside the vocabulary [0, ", vocab_size, ") and is not ignore_index (",
             ignore_index, ")");
  return r.count;
}

}  // namespace

void CudaBackend::cross_entropy(const Tensor& logits, const Tensor& targets, int64_t vocab_size,
                                int32_t ignore_index, const Tensor& losses, const Tensor& lse,
                                const Tensor& loss) {
  constexpr const char* op = "cross_entropy";
  const DType dt = check_logits_targets(op, logits, targets, vocab_size);
  const int64_t count = scan_targets(*this, op, targets, vocab_size, ignore_index);
  const int64_t n = logits.size(0), vp = logits.size(1);
  cuda::check_dev(op, "losses", losses, DType::f32);
  cuda::check_shape(op, "losses", losses, {n});
  cuda::check_dev(op, "lse", lse, DType::f32);
  cuda::check_shape(op, "lse", lse, {n});
  cuda::check_dev(op, "loss", loss, DType::f32);
  cuda::check_shape(op, "loss", loss, {1});
  const int32_t* tg = targets.data<int32_t>();
  float* lo = losses.data<float>();
  float* ls = lse.data<float>();
  float* l = loss.data<float>();
  if (dt == DType::bf16) {
    kernels::launch_ce_forward(reinterpret_cast<const __nv_bfloat16*>(logits.data<bf16_t>()), tg, n,
                               vp, vocab_size, ignore_index, count, lo, ls, l, stream());
  } else {
    kernels::launch_ce_forward(logits.data<float>(), tg, n, vp, vocab_size, ignore_index, count, lo,
                               ls, l, stream());
  }
}

void CudaBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                         const Tensor& lse, int64_t vocab_size,
                                         int32_t ignore_index, float dloss, const Tensor& dlogits) {
  constexpr const char* op = "cross_entropy_backward";
  const DType dt = check_logits_targets(op, logits, targets, vocab_size);
  const int64_t count = scan_targets(*this, op, targets, vocab_size, ignore_index);
  const int64_t n = logits.size(0), vp = logits.size(1);
  cuda::check_dev(op, "lse", lse, DType::f32);
  cuda::check_shape(op, "lse", lse, {n});
  cuda::check_dev(op, "dlogits", dlogits, dt);
  cuda::check_shape(op, "dlogits", dlogits, logits.shape());
  const float scale = count > 0 ? dloss / float(count) : 0.f;  // as the CPU backend
  const int32_t* tg = targets.data<int32_t>();
  const float* ls = lse.data<float>();
  if (dt == DType::bf16) {
    kernels::launch_ce_backward(reinterpret_cast<const __nv_bfloat16*>(logits.data<bf16_t>()), tg,
                                ls, n, vp, vocab_size, 0, ignore_index, scale,
                                reinterpret_cast<__nv_bfloat16*>(dlogits.data<bf16_t>()), stream());
  } else {
    kernels::launch_ce_backward(logits.data<float>(), tg, ls, n, vp, vocab_size, 0, ignore_index,
                                scale, dlogits.data<float>(), stream());
  }
}

void CudaBackend::cross_entropy_shard(const Tensor& logits, const Tensor& targets,
                                      int64_t vocab_size, int32_t ignore_index, int64_t col_lo,
                                      const Tensor& losses, const Tensor& lse) {
  constexpr const char* op = "cross_entropy_shard";
  const DType dt = check_shard(op, logits, targets, vocab_size, col_lo);
  scan_targets(*this, op, targets, vocab_size, ignore_index);
  const int64_t n = logits.size(0), width = logits.size(1);
  cuda::check_dev(op, "losses", losses, DType::f32);
  cuda::check_shape(op, "losses", losses, {n});
  cuda::check_dev(op, "lse", lse, DType::f32);
  cuda::check_shape(op, "lse", lse, {n});
  const int64_t real = real_columns(width, vocab_size, col_lo);
  const int32_t* tg = targets.data<int32_t>();
  float* lo = losses.data<float>();
  float* ls = lse.data<float>();
  if (dt == DType::bf16) {
    kernels::launch_ce_shard_forward(reinterpret_cast<const __nv_bfloat16*>(logits.data<bf16_t>()),
                                     tg, n, width, real, col_lo, vocab_size, ignore_index, lo, ls,
                                     stream());
  } else {
    kernels::launch_ce_shard_forward(logits.data<float>(), tg, n, width, real, col_lo, vocab_size,
                                     ignore_index, lo, ls, stream());
  }
}

void CudaBackend::cross_entropy_merge(const Tensor& part_lse, const Tensor& part_losses,
                                      const Tensor& targets, int32_t ignore_index,
                                      const Tensor& losses, const Tensor& lse, const Tensor& loss) {
  constexpr const char* op = "cross_entropy_merge";
  cuda::check_dev(op, "part_lse", part_lse, DType::f32);
  NURI_CHECK(part_lse.dim() == 2 && part_lse.size(0) >= 1, op,
             ": part_lse must be [S, N] with S >= 1 shards, got shape ",
             shape_str(part_lse.shape()));
  const int64_t shards = part_lse.size(0), n = part_lse.size(1);
  cuda::check_dev(op, "part_losses", part_losses, DType::f32);
  cuda::check_shape(op, "part_losses", part_losses, part_lse.shape());
  cuda::check_dev(op, "targets", targets, DType::i32);
  cuda::check_shape(op, "targets", targets, {n});
  cuda::check_dev(op, "losses", losses, DType::f32);
  cuda::check_shape(op, "losses", losses, {n});
  cuda::check_dev(op, "lse", lse, DType::f32);
  cuda::check_shape(op, "lse", lse, {n});
  cuda::check_dev(op, "loss", loss, DType::f32);
  cuda::check_shape(op, "loss", loss, {1});
  // The merge does not know vocab_size (the shards checked the targets against it): the scan
  // gives the count, and rejects only negative targets, which no vocabulary holds.
  const TargetScan r = scan(*this, op, targets, std::numeric_limits<int64_t>::max(), ignore_index);
  NURI_CHECK(r.bad_row >= n, op, ": target ", r.bad_target, " at row ", r.bad_row,
             " is negative and is not ignore_index (", ignore_index, ")");
  const int64_t count = r.count;
  kernels::launch_ce_merge(part_lse.data<float>(), part_losses.data<float>(),
                           targets.data<int32_t>(), shards, n, ignore_index, count,
                           losses.data<float>(), lse.data<float>(), loss.data<float>(), stream());
}

void CudaBackend::cross_entropy_shard_backward(const Tensor& logits, const Tensor& targets,
                                               const Tensor& lse, int64_t vocab_size,
                                               int32_t ignore_index, int64_t col_lo, float dloss,
                                               const Tensor& dlogits) {
  constexpr const char* op = "cross_entropy_shard_backward";
  const DType dt = check_shard(op, logits, targets, vocab_size, col_lo);
  // Rows that count over the whole vocabulary: the same number on every shard.
  const int64_t count = scan_targets(*this, op, targets, vocab_size, ignore_index);
  const int64_t n = logits.size(0), width = logits.size(1);
  cuda::check_dev(op, "lse", lse, DType::f32);
  cuda::check_shape(op, "lse", lse, {n});
  cuda::check_dev(op, "dlogits", dlogits, dt);
  cuda::check_shape(op, "dlogits", dlogits, logits.shape());
  const float scale = count > 0 ? dloss / float(count) : 0.f;  // as the CPU backend
  const int64_t real = real_columns(width, vocab_size, col_lo);
  const int32_t* tg = targets.data<int32_t>();
  const float* ls = lse.data<float>();
  if (dt == DType::bf16) {
    kernels::launch_ce_backward(reinterpret_cast<const __nv_bfloat16*>(logits.data<bf16_t>()), tg,
                                ls, n, width, real, col_lo, ignore_index, scale,
                                reinterpret_cast<__nv_bfloat16*>(dlogits.data<bf16_t>()), stream());
  } else {
    kernels::launch_ce_backward(logits.data<float>(), tg, ls, n, width, real, col_lo, ignore_index,
                                scale, dlogits.data<float>(), stream());
  }
}

}  // namespace nuri
