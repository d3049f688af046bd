// Cross-entropy on the CUDA backend: validation, dtype dispatch and the launches
// (kernels/cross_entropy.cuh). Logits and dlogits are bf16 or f32; lse, losses and loss are f32.
//
// Targets live on the device, so checking them is a kernel: a one-block scan counts the rows that
// count and finds the first bad target, and the host reads those 12 bytes back (one stream sync
// per call) to raise the CPU backend's error before any output is written and to know the count.
#include "cross_entropy.h"  // kernels/

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

// Runs the target scan and reads it back: throws on a target outside [0, vocab_size) that is not
// ignore_index (the CPU backend's message), else returns the number of rows that count.
int64_t scan_targets(CudaBackend& be, const char* op, const Tensor& targets, int64_t vocab_size,
                     int32_t ignore_index) {
  const int64_t n = targets.numel();
  if (n == 0) return 0;
  auto* g_result = static_cast<int32_t*>(be.workspace(3 * sizeof(int32_t)));
  kernels::launch_ce_scan_targets(targets.data<int32_t>(), n, vocab_size, ignore_index, g_result,
                                  be.stream());
  int32_t result[3];
  const cudaError_t err =
      cudaMemcpyAsync(result, g_result, sizeof(result), cudaMemcpyDeviceToHost, be.stream());
  NURI_CHECK(err == cudaSuccess, op,
             ": reading back the target scan failed: ", cudaGetErrorString(err));
  be.synchronize();
  const int64_t count = result[0], bad_row = result[1], bad_target = result[2];
  NURI_CHECK(bad_row >= n, op, ": target ", bad_target, " at row ", bad_row,
             " is outside the vocabulary [0, ", vocab_size, ") and is not ignore_index (",
             ignore_index, ")");
  return count;
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
                                ls, n, vp, vocab_size, ignore_index, scale,
                                reinterpret_cast<__nv_bfloat16*>(dlogits.data<bf16_t>()), stream());
  } else {
    kernels::launch_ce_backward(logits.data<float>(), tg, ls, n, vp, vocab_size, ignore_index,
                                scale, dlogits.data<float>(), stream());
  }
}

}  // namespace nuri
