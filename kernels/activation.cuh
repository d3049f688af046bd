// Elementwise activations (device code): GELU with the tanh approximation (GPT-2's, the same
// formula as the CPU backend's cpu/math.h) and SwiGLU = silu(gate) · up with [gate | up] along
// the last dim. Grid-stride loops over packs of N elements (16-byte loads when the host found the
// pointers aligned), fp32 math on T = bf16 or f32 storage.
#pragma once

#include "activation.h"
#include "common.cuh"

namespace nuri::kernels::act {

constexpr int kThreads = 256;

constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluA = 0.044715f;

__device__ __forceinline__ float gelu(float x) {
  const float u = kGeluC * (x + kGeluA * x * x * x);
  return 0.5f * x * (1.f + tanhf(u));
}

/// d gelu(x) / dx.
__device__ __forceinline__ float gelu_grad(float x) {
  const float u = kGeluC * (x + kGeluA * x * x * x);
  const float th = tanhf(u);
  const float du = kGeluC * (1.f + 3.f * kGeluA * x * x);
  return 0.5f * (1.f + th) + 0.5f * x * (1.f - th * th) * du;
}

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

__device__ __forceinline__ int64_t global_thread() {
  return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() { return int64_t(gridDim.x) * blockDim.x; }

/// A grid-stride walk over the packs of an [M, row_packs] matrix that keeps (row, col) without a
/// 64-bit division per step (two divisions up front).
struct RowWalk {
  int64_t row, col, row_packs, step_rows, step_cols;
  __device__ __forceinline__ explicit RowWalk(int64_t row_packs_) : row_packs(row_packs_) {
    const int64_t q = global_thread(), step = grid_threads();
    row = q / row_packs;
    col = q - row * row_packs;
    step_rows = step / row_packs;
    step_cols = step - step_rows * row_packs;
  }
  __device__ __forceinline__ void next() {
    row += step_rows;
    col += step_cols;
    if (col >= row_packs) col -= row_packs, ++row;
  }
};

/// y = gelu(x): packs of N by grid stride, then the n % N tail by the grid's first threads.
template <class T, int N>
__global__ void __launch_bounds__(kThreads) gelu_forward_kernel(const GeluParams<T> p) {
  using P = Pack<T, N>;
  const P* gx = reinterpret_cast<const P*>(p.gX);  // [n / N]
  P* gy = reinterpret_cast<P*>(p.gY);
  const int64_t packs = p.n / N;
  for (int64_t q = global_thread(); q < packs; q += grid_threads()) {
    const P rx = gx[q];
    P ry;
#pragma unroll
    for (int e = 0; e < N; ++e) ry.v[e] = from_float<T>(gelu(to_float(rx.v[e])));
    gy[q] = ry;
  }
  const int64_t i = packs * N + global_thread();
  if (i < p.n) p.gY[i] = from_float<T>(gelu(to_float(p.gX[i])));
}

/// dx = dy · gelu'(x). dx may alias dy: every element is read and written by one thread.
template <class T, int N>
__global__ void __launch_bounds__(kThreads) gelu_backward_kernel(const GeluBackwardParams<T> p) {
  using P = Pack<T, N>;
  const P* gx = reinterpret_cast<const P*>(p.gX);  // [n / N]
  const P* gdy = reinterpret_cast<const P*>(p.gDy);
  P* gdx = reinterpret_cast<P*>(p.gDx);
  const int64_t packs = p.n / N;
  for (int64_t q = global_thread(); q < packs; q += grid_threads()) {
    const P rx = gx[q], rdy = gdy[q];
    P rdx;
#pragma unroll
    for (int e = 0; e < N; ++e) {
      rdx.v[e] = from_float<T>(to_float(rdy.v[e]) * gelu_grad(to_float(rx.v[e])));
    }
    gdx[q] = rdx;
  }
  const int64_t i = packs * N + global_thread();
  if (i < p.n) p.gDx[i] = from_float<T>(to_float(p.gDy[i]) * gelu_grad(to_float(p.gX[i])));
}

/// y[i, j] = silu(x[i, j]) · x[i, F + j], over the [M, F / N] packs of y by grid stride.
template <class T, int N>
__global__ void __launch_bounds__(kThreads) swiglu_forward_kernel(const SwigluParams<T> p) {
  using P = Pack<T, N>;
  const int64_t row_packs = p.f / N;
  for (RowWalk w(row_packs); w.row < p.m; w.next()) {
    const int64_t row = w.row, col = w.col;
    const P* gx = reinterpret_cast<const P*>(p.gX + row * 2 * p.f);  // [2F / N]: gate | up
    const P rg = gx[col], ru = gx[row_packs + col];
    P ry;
#pragma unroll
    for (int e = 0; e < N; ++e) {
      const float gate = to_float(rg.v[e]);
      ry.v[e] = from_float<T>(gate * sigmoid(gate) * to_float(ru.v[e]));
    }
    reinterpret_cast<P*>(p.gY + row * p.f)[col] = ry;
  }
}

/// dgate = dy · up · silu'(gate), dup = dy · silu(gate).
template <class T, int N>
__global__ void __launch_bounds__(kThreads)
    swiglu_backward_kernel(const SwigluBackwardParams<T> p) {
  using P = Pack<T, N>;
  const int64_t row_packs = p.f / N;
  for (RowWalk w(row_packs); w.row < p.m; w.next()) {
    const int64_t row = w.row, col = w.col;
    const P* gx = reinterpret_cast<const P*>(p.gX + row * 2 * p.f);  // [2F / N]: gate | up
    P* gdx = reinterpret_cast<P*>(p.gDx + row * 2 * p.f);            // [2F / N]: dgate | dup
    const P rg = gx[col], ru = gx[row_packs + col];
    const P rdy = reinterpret_cast<const P*>(p.gDy + row * p.f)[col];
    P rdg, rdu;
#pragma unroll
    for (int e = 0; e < N; ++e) {
      const float gate = to_float(rg.v[e]), dy = to_float(rdy.v[e]);
      const float s = sigmoid(gate);
      const float dsilu = s * (1.f + gate * (1.f - s));
      rdu.v[e] = from_float<T>(dy * gate * s);
      rdg.v[e] = from_float<T>(dy * to_float(ru.v[e]) * dsilu);
    }
    gdx[col] = rdg;
    gdx[row_packs + col] = rdu;
  }
}

}  // namespace nuri::kernels::act
