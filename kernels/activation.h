// Host interface of the elementwise activation kernels (activation.cuh): GELU (tanh
// approximation) and SwiGLU, forward and backward; T is float or __nv_bfloat16, instantiated in
// activation.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace nuri::kernels {

template <class T>
struct GeluParams {
  const T* gX;  // [n]
  T* gY;        // [n]
  int64_t n;
};

template <class T>
struct GeluBackwardParams {
  const T* gX;   // [n] the forward input
  const T* gDy;  // [n]
  T* gDx;        // [n]; may alias gDy (each element is read before it is written, by one thread)
  int64_t n;
};

/// x holds [gate | up] along its last dim; y = silu(gate) · up.
template <class T>
struct SwigluParams {
  const T* gX;  // [M, 2F]
  T* gY;        // [M, F]
  int64_t m, f;
};

template <class T>
struct SwigluBackwardParams {
  const T* gX;   // [M, 2F] the forward input
  const T* gDy;  // [M, F]
  T* gDx;        // [M, 2F]: [dgate | dup]
  int64_t m, f;
};

/// Each launcher requires non-empty work (n > 0, m·f > 0).
template <class T>
void gelu_forward(const GeluParams<T>& p, cudaStream_t stream);
template <class T>
void gelu_backward(const GeluBackwardParams<T>& p, cudaStream_t stream);
template <class T>
void swiglu_forward(const SwigluParams<T>& p, cudaStream_t stream);
template <class T>
void swiglu_backward(const SwigluBackwardParams<T>& p, cudaStream_t stream);

}  // namespace nuri::kernels
