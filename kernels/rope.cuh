// Rotary position embedding, rotate-half convention: element i of a head is rotated together
// with element i + D/2 by the angle a = p · f_i, p = pos_offset + t, f_i = theta^(-2i/D)
// rescaled as the Rope says (nuri/core/rope.h, shared with the CPU backend).
//
// The design choice: the angle is as accurate as the CPU backend's double-precision one at any
// position, without double-precision trigonometry. Each block computes f_i in double (as the CPU
// does) and keeps the angle per position in turns, g_i = f_i / 2π, in shared memory as a float
// pair g_hi + g_lo. A thread forms p·g exactly enough (p·g_hi split by an fma), drops whole turns
// (exact in float), and calls sincosf on what is left times 2π, |angle| <= 2π: the error stays
// ~3e-7 rad at every position, where a float angle p·f would be off by up to p·2^-24 rad. A
// thread owns a (b, t, head group, vector of columns) and applies the same cos/sin to all heads
// of its group, so the trigonometry is amortized over heads.
#pragma once

#include "common.cuh"
#include "rope.h"

namespace nuri::kernels {

constexpr int kRopeThreads = 256;

/// theta^(-2i/D) / 2π (turns per position) as a float pair whose sum carries the double value.
struct RopeTurns {
  float hi, lo;
};

/// 2π as a float pair: hi + lo carries it to ~2^-48.
constexpr float kTwoPiHi = 6.28318548202514648f;
constexpr float kTwoPiLo = -1.74845553e-7f;

/// The launch's view of the work: the op's parameters and how they are split into items.
template <class T>
struct RopeKernelParams {
  RopeParams<T> op;
  int64_t vecs;    // vector columns per half head: half / kVec
  int64_t groups;  // head groups: a thread covers heads g, g + groups, ... of one (b, t)
};

/// Grid-stride over items (b, t, head group, vector column), vector column fastest. kVec divides
/// half and every stride, and both pointers are aligned to a kVec vector. Dynamic shared memory:
/// half RopeTurns.
template <class T, int kVec>
__global__ void __launch_bounds__(kRopeThreads) rope_kernel(const RopeKernelParams<T> kp) {
  using Vec = Pack<T, kVec>;
  const RopeParams<T>& p = kp.op;
  const int64_t vecs = kp.vecs, groups = kp.groups;
  // sTurns [kVec][vecs]: element (k, v) belongs to i = v·kVec + k, so the lanes of a warp
  // (consecutive v) read consecutive entries.
  RopeTurns* sTurns = dynamic_smem<RopeTurns>();
  for (int64_t i = threadIdx.x; i < p.half; i += blockDim.x) {
    const double turns = p.rope.frequency(i, 2 * p.half) / 6.283185307179586476925;
    const float hi = float(turns);
    sTurns[(i % kVec) * vecs + i / kVec] = RopeTurns{hi, float(turns - double(hi))};
  }
  __syncthreads();

  const int64_t items = p.batch * p.seq * groups * vecs;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = item % vecs;
    int64_t rest = item / vecs;
    const int64_t g = rest % groups;
    rest /= groups;
    const int64_t t = rest % p.seq, b = rest / p.seq;

    const float pos = float(p.pos_offset + t);  // exact: positions are below 2^24
    float rCos[kVec], rSin[kVec];               // of this item's kVec angles
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const RopeTurns per_pos = sTurns[k * vecs + v];
      // pos · turns = t_hi + t_lo: t_hi rounded, t_lo its exact error (fma) plus pos · lo.
      const float t_hi = pos * per_pos.hi;
      const float t_lo = fmaf(pos, per_pos.hi, -t_hi) + pos * per_pos.lo;
      // Whole turns dropped from each part (x - rint(x) is exact in float): |turn| <= 1.
      const float turn = (t_hi - rintf(t_hi)) + (t_lo - rintf(t_lo));
      float s, c;
      sincosf(fmaf(turn, kTwoPiHi, turn * kTwoPiLo), &s, &c);
      rCos[k] = c;
      rSin[k] = p.sign * s;
    }

    // x1 = x[i], x2 = x[i + D/2] for this item's kVec values of i.
    const T* gXrow = p.gX + b * p.x_sb + t * p.x_st + v * kVec;
    T* gYrow = p.gY + b * p.y_sb + t * p.y_st + v * kVec;
    for (int64_t h = g; h < p.heads; h += groups) {
      const T* gx = gXrow + h * p.x_sh;
      T* gy = gYrow + h * p.y_sh;
      const Vec x1 = *reinterpret_cast<const Vec*>(gx);
      const Vec x2 = *reinterpret_cast<const Vec*>(gx + p.half);
      Vec y1, y2;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const float first = to_float(x1.v[k]), second = to_float(x2.v[k]);
        y1.v[k] = from_float<T>(first * rCos[k] - second * rSin[k]);
        y2.v[k] = from_float<T>(second * rCos[k] + first * rSin[k]);
      }
      *reinterpret_cast<Vec*>(gy) = y1;
      *reinterpret_cast<Vec*>(gy + p.half) = y2;
    }
  }
}

}  // namespace nuri::kernels
