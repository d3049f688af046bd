// Host interface of the rotary position embedding kernels (rope.cuh): the parameter struct and
// the launcher, instantiated for float and __nv_bfloat16 in rope.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "nuri/core/rope.h"

namespace nuri::kernels {

/// One rotation of x by sign · angle into y, angle = (pos_offset + t) · rope.frequency(i, D).
/// Strides are in elements; the head dim has unit stride in both tensors.
template <class T>
struct RopeParams {
  const T* gX;               // [B, T, H, D]
  T* gY;                     // [B, T, H, D]; may be gX (in place)
  int64_t x_sb, x_st, x_sh;  // strides of gX over B, T, H
  int64_t y_sb, y_st, y_sh;  // strides of gY over B, T, H
  int64_t batch;             // B
  int64_t seq;               // T
  int64_t heads;             // H
  int64_t half;              // D / 2: element i is rotated with element i + D/2
  int64_t pos_offset;        // position of t = 0; pos_offset + T <= 2^24 (exact in float)
  Rope rope;                 // theta > 0, and the scaling (nuri/core/rope.h)
  float sign;                // +1 forward, -1 backward (the transpose)
};

/// Largest head dim the kernels take: the inverse-frequency table lives in shared memory.
constexpr int64_t kRopeMaxHeadDim = 8192;

/// Applies the rotation; requires B·T·H > 0, half in [1, kRopeMaxHeadDim / 2].
template <class T>
void rope(const RopeParams<T>& p, cudaStream_t stream);

}  // namespace nuri::kernels
