// Rotary position embedding on the CUDA backend: the validation of cpu/rope.cpp (same messages),
// then one kernel launch (kernels/rope.cuh) on bf16 or f32 activations of any strides.
#include "rope.h"

#include "backend/cuda/check.h"
#include "backend/cuda/cuda_backend.h"

namespace nuri {

namespace {

template <class T>
kernels::RopeParams<T> rope_params(const Tensor& x, const Tensor& y, const Rope& rope,
                                   int64_t pos_offset, float sign) {
  kernels::RopeParams<T> p{};
  p.gX = static_cast<const T*>(x.raw());
  p.gY = static_cast<T*>(y.raw());
  p.x_sb = x.stride(0);
  p.x_st = x.stride(1);
  p.x_sh = x.stride(2);
  p.y_sb = y.stride(0);
  p.y_st = y.stride(1);
  p.y_sh = y.stride(2);
  p.batch = x.size(0);
  p.seq = x.size(1);
  p.heads = x.size(2);
  p.half = x.size(3) / 2;
  p.pos_offset = pos_offset;
  p.rope = rope;
  p.sign = sign;
  return p;
}

// Rotates x [B, T, H, D] by sign · angle into y (may alias x).
void rotate(const char* op, const Tensor& x, const Tensor& y, const Rope& rope,
            int64_t pos_offset, float sign, cudaStream_t stream) {
  const DType dt = cuda::activation_dtype(op, "input", x);
  cuda::check_dev(op, "input", x, dt, /*contiguous=*/false);
  cuda::check_dev(op, "output", y, dt, /*contiguous=*/false);
  NURI_CHECK(x.dim() == 4, op, ": input must be [B, T, H, D], got shape ", shape_str(x.shape()));
  cuda::check_shape(op, "output", y, x.shape());
  const int64_t b = x.size(0), t = x.size(1), h = x.size(2), d = x.size(3);
  NURI_CHECK(d % 2 == 0 && d > 0, op, ": head dim must be even and positive, got ", d);
  NURI_CHECK(x.stride(3) == 1 && y.stride(3) == 1, op, ": the head dim must have unit stride");
  check_rope(op, rope);
  NURI_CHECK(pos_offset >= 0, op, ": position offset must be >= 0, got ", pos_offset);
  NURI_CHECK(d <= kernels::kRopeMaxHeadDim, op, ": head dim ", d,
             " exceeds the CUDA backend's limit of ", kernels::kRopeMaxHeadDim);
  constexpr int64_t kMaxPosition = int64_t(1) << 24;  // positions are exact in float below it
  NURI_CHECK(pos_offset + t <= kMaxPosition, op, ": positions up to ", pos_offset + t,
             " exceed the CUDA backend's limit of 2^24 (position offset ", pos_offset,
             ", sequence length ", t, ")");
  if (b * t * h == 0) return;
  if (dt == DType::bf16) {
    kernels::rope(rope_params<__nv_bfloat16>(x, y, rope, pos_offset, sign), stream);
  } else {
    kernels::rope(rope_params<float>(x, y, rope, pos_offset, sign), stream);
  }
}

}  // namespace

void CudaBackend::rope(const Tensor& x, const Tensor& y, const Rope& r, int64_t pos_offset) {
  rotate("rope", x, y, r, pos_offset, 1.f, stream());
}

void CudaBackend::rope_backward(const Tensor& dy, const Tensor& dx, const Rope& r,
                                int64_t pos_offset) {
  rotate("rope_backward", dy, dx, r, pos_offset, -1.f, stream());
}

}  // namespace nuri
