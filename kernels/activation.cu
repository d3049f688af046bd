// Activation launchers and their instantiations (float, __nv_bfloat16), see activation.cuh.
#include <algorithm>
#include <cstdint>

#include "activation.cuh"

namespace nuri::kernels {

namespace {

using act::kThreads;

#if defined(NURI_CUDA_EMULATION)
constexpr int64_t kMaxBlocks = 1;  // so the op tests' sizes run the grid-stride loops repeatedly
#else
// A few waves of 256-thread blocks on an H100 (132 SMs x 8 blocks); more work grid-strides.
constexpr int64_t kMaxBlocks = 132 * 8 * 4;
#endif

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class T>
constexpr int kVec = 16 / int(sizeof(T));  // elements per 16-byte pack

dim3 grid_for(int64_t work) {
  return dim3(unsigned(std::clamp<int64_t>(ceil_div(work, kThreads), 1, kMaxBlocks)));
}

}  // namespace

template <class T>
void gelu_forward(const GeluParams<T>& p, cudaStream_t stream) {
  NURI_ASSERT(p.n > 0);
  if (aligned16(p.gX) && aligned16(p.gY)) {
    NURI_LAUNCH((act::gelu_forward_kernel<T, kVec<T>>), grid_for(p.n / kVec<T>), kThreads, 0,
                stream, p);
  } else {
    NURI_LAUNCH((act::gelu_forward_kernel<T, 1>), grid_for(p.n), kThreads, 0, stream, p);
  }
}

template <class T>
void gelu_backward(const GeluBackwardParams<T>& p, cudaStream_t stream) {
  NURI_ASSERT(p.n > 0);
  if (aligned16(p.gX) && aligned16(p.gDy) && aligned16(p.gDx)) {
    NURI_LAUNCH((act::gelu_backward_kernel<T, kVec<T>>), grid_for(p.n / kVec<T>), kThreads, 0,
                stream, p);
  } else {
    NURI_LAUNCH((act::gelu_backward_kernel<T, 1>), grid_for(p.n), kThreads, 0, stream, p);
  }
}

template <class T>
void swiglu_forward(const SwigluParams<T>& p, cudaStream_t stream) {
  NURI_ASSERT(p.m > 0 && p.f > 0);
  if (p.f % kVec<T> == 0 && aligned16(p.gX) && aligned16(p.gY)) {
    NURI_LAUNCH((act::swiglu_forward_kernel<T, kVec<T>>), grid_for(p.m * p.f / kVec<T>), kThreads,
                0, stream, p);
  } else {
    NURI_LAUNCH((act::swiglu_forward_kernel<T, 1>), grid_for(p.m * p.f), kThreads, 0, stream, p);
  }
}

template <class T>
void swiglu_backward(const SwigluBackwardParams<T>& p, cudaStream_t stream) {
  NURI_ASSERT(p.m > 0 && p.f > 0);
  if (p.f % kVec<T> == 0 && aligned16(p.gX) && aligned16(p.gDy) && aligned16(p.gDx)) {
    NURI_LAUNCH((act::swiglu_backward_kernel<T, kVec<T>>), grid_for(p.m * p.f / kVec<T>), kThreads,
                0, stream, p);
  } else {
    NURI_LAUNCH((act::swiglu_backward_kernel<T, 1>), grid_for(p.m * p.f), kThreads, 0, stream, p);
  }
}

// The supported storage types.
#define NURI_INSTANTIATE_ACTIVATIONS(T)                                       \
  template void gelu_forward<T>(const GeluParams<T>&, cudaStream_t);          \
  template void gelu_backward<T>(const GeluBackwardParams<T>&, cudaStream_t); \
  template void swiglu_forward<T>(const SwigluParams<T>&, cudaStream_t);      \
  template void swiglu_backward<T>(const SwigluBackwardParams<T>&, cudaStream_t);
NURI_INSTANTIATE_ACTIVATIONS(float)
NURI_INSTANTIATE_ACTIVATIONS(__nv_bfloat16)
#undef NURI_INSTANTIATE_ACTIVATIONS

}  // namespace nuri::kernels
