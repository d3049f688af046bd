// AdamW and the global gradient norm over many tensors, each in ONE launch: a device array of
// per-tensor descriptors and a prefix table (the first block of each tensor) map every block to a
// (tensor, chunk) pair by binary search, so ~150 parameter tensors cost one launch, not 150.
// Each thread owns 4 consecutive elements per step (one float4 when aligned; one Philox block of
// random bits for the stochastic rounding of the bf16 copy).
//
// The bf16 copy: round to nearest even, or stochastic rounding, which adds 16 random bits to the
// f32 bits before truncating. The bits come from Philox4x32-10 with nuri's convention
// (include/nuri/core/rng.h): key = seed, counter = (element / 4, tensor index, step), word
// element % 4, low 16 bits. The CPU backend does exactly the same, so copies agree bit for bit.
//
// The norm is deterministic: per-block partial sums of squares, then one block sums them in a
// fixed order (in double).
#pragma once

#include "common.cuh"
#include "optimizer.h"

namespace nuri::kernels {

constexpr int kOptThreads = 256;
constexpr int kOptPerThread = 4;  // consecutive elements per thread and step
constexpr int kOptSteps = 4;      // steps of the block over its chunk
constexpr int64_t kOptChunk = int64_t(kOptThreads) * kOptPerThread * kOptSteps;  // 4096
constexpr int kOptFinalThreads = 256;  // sums ~3e4 partials for 1e8 parameters
static_assert(kOptThreads % kWarpSize == 0 && kOptFinalThreads % kWarpSize == 0,
              "block reductions need whole warps");

struct AdamWKernelParams {
  const AdamWTensorDesc* g_tensors;  // [T]
  const int64_t* g_chunk_begin;      // [T + 1]: first block of tensor t; [T] = grid size
  int32_t num_tensors;
  AdamWStep hp;
};

struct NormPartialParams {
  const NormTensorDesc* g_tensors;  // [T]
  const int64_t* g_chunk_begin;     // [T + 1]
  int32_t num_tensors;
  double* g_partials;  // [blocks]: Σ g² of each block's chunk
};

struct NormFinalParams {
  const double* g_partials;  // [blocks]
  int64_t blocks;
  float* g_out;  // [1]
};

// ---- helpers ------------------------------------------------------------------------------------

/// The tensor whose chunk range holds `block`: the largest t with chunk_begin[t] <= block (empty
/// tensors own no block and are skipped by taking the largest).
__device__ __forceinline__ int find_tensor(const int64_t* g_chunk_begin, int num_tensors,
                                           int64_t block) {
  int lo = 0, hi = num_tensors;  // chunk_begin[lo] <= block < chunk_begin[hi]
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (g_chunk_begin[mid] <= block) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

/// Philox4x32-10 with the constants of Salmon et al. (as nuri::philox4x32_10 on the host).
__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint32_t k0, uint32_t k1) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(0xD2511F53u) * c.x;
    const uint64_t p1 = uint64_t(0xCD9E8D57u) * c.z;
    c = make_uint4(uint32_t(p1 >> 32) ^ c.y ^ k0, uint32_t(p1), uint32_t(p0 >> 32) ^ c.w ^ k1,
                   uint32_t(p0));
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

/// f32 -> bf16 by adding the low 16 bits of `random` to the bits and truncating: rounds up with
/// probability equal to the dropped fraction (unbiased). NaN stays a quiet NaN with its sign.
__device__ __forceinline__ uint16_t bf16_bits_stochastic(float x, uint32_t random) {
#if defined(NURI_CUDA_EMULATION)
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
#else
  const uint32_t u = __float_as_uint(x);
#endif
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);
  return uint16_t((u + (random & 0xffffu)) >> 16);
}

__device__ __forceinline__ __nv_bfloat16 bf16_from_bits(uint16_t bits) {
  __nv_bfloat16_raw raw;
  raw.x = bits;
  return __nv_bfloat16(raw);
}

/// One AdamW element, the same float operations in the same order as the CPU backend.
__device__ __forceinline__ void adamw_element(const AdamWStep& p, float wd, float g, float& m,
                                              float& v, float& w) {
  const float gi = g * p.grad_scale;
  m = p.beta1 * m + (1.f - p.beta1) * gi;
  v = p.beta2 * v + (1.f - p.beta2) * gi * gi;
  const float update = (m / p.bc1) / (sqrtf(v / p.bc2) + p.eps);
  w -= p.lr * (update + wd * w);
}

struct alignas(8) Bf16x4 {
  __nv_bfloat16 v[4];
};

// ---- kernels ------------------------------------------------------------------------------------

/// grid = Σ_t ceil(n_t / kOptChunk) blocks of kOptThreads; block b updates chunk
/// b - chunk_begin[t] of tensor t.
__global__ void __launch_bounds__(kOptThreads) adamw_multi(AdamWKernelParams p) {
  const int64_t block = blockIdx.x;
  const int t = find_tensor(p.g_chunk_begin, p.num_tensors, block);
  const AdamWTensorDesc d = p.g_tensors[t];
  const int64_t chunk_start = (block - p.g_chunk_begin[t]) * kOptChunk;
  for (int step = 0; step < kOptSteps; ++step) {
    const int64_t i0 = chunk_start + (int64_t(step) * blockDim.x + threadIdx.x) * kOptPerThread;
    if (i0 >= d.n || i0 >= chunk_start + kOptChunk) continue;
    float w[4], g[4], m[4], v[4];
    const bool full = d.vec && i0 + kOptPerThread <= d.n;
    const int count = d.n - i0 < kOptPerThread ? int(d.n - i0) : kOptPerThread;
    if (full) {
      const float4 w4 = *reinterpret_cast<const float4*>(d.param + i0);
      const float4 g4 = *reinterpret_cast<const float4*>(d.grad + i0);
      const float4 m4 = *reinterpret_cast<const float4*>(d.m + i0);
      const float4 v4 = *reinterpret_cast<const float4*>(d.v + i0);
      w[0] = w4.x, w[1] = w4.y, w[2] = w4.z, w[3] = w4.w;
      g[0] = g4.x, g[1] = g4.y, g[2] = g4.z, g[3] = g4.w;
      m[0] = m4.x, m[1] = m4.y, m[2] = m4.z, m[3] = m4.w;
      v[0] = v4.x, v[1] = v4.y, v[2] = v4.z, v[3] = v4.w;
    } else {
#pragma unroll
      for (int e = 0; e < kOptPerThread; ++e) {
        const bool in = e < count;
        w[e] = in ? d.param[i0 + e] : 0.f;
        g[e] = in ? d.grad[i0 + e] : 0.f;
        m[e] = in ? d.m[i0 + e] : 0.f;
        v[e] = in ? d.v[i0 + e] : 0.f;
      }
    }
#pragma unroll
    for (int e = 0; e < kOptPerThread; ++e)
      adamw_element(p.hp, d.weight_decay, g[e], m[e], v[e], w[e]);
    if (full) {
      *reinterpret_cast<float4*>(d.param + i0) = make_float4(w[0], w[1], w[2], w[3]);
      *reinterpret_cast<float4*>(d.m + i0) = make_float4(m[0], m[1], m[2], m[3]);
      *reinterpret_cast<float4*>(d.v + i0) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
#pragma unroll
      for (int e = 0; e < kOptPerThread; ++e) {
        if (e < count) {
          d.param[i0 + e] = w[e];
          d.m[i0 + e] = m[e];
          d.v[i0 + e] = v[e];
        }
      }
    }
    if (d.param_bf16 != nullptr) {
      Bf16x4 r;
      if (p.hp.stochastic_rounding) {
        const uint64_t group = uint64_t(i0) / kOptPerThread;  // i0 is a multiple of 4
        const uint4 rnd = philox4x32_10(
            make_uint4(uint32_t(group), uint32_t(group >> 32), uint32_t(d.index), p.hp.step),
            uint32_t(p.hp.seed), uint32_t(p.hp.seed >> 32));
        r.v[0] = bf16_from_bits(bf16_bits_stochastic(w[0], rnd.x));
        r.v[1] = bf16_from_bits(bf16_bits_stochastic(w[1], rnd.y));
        r.v[2] = bf16_from_bits(bf16_bits_stochastic(w[2], rnd.z));
        r.v[3] = bf16_from_bits(bf16_bits_stochastic(w[3], rnd.w));
      } else {
#pragma unroll
        for (int e = 0; e < kOptPerThread; ++e) r.v[e] = __float2bfloat16_rn(w[e]);
      }
      if (full) {
        *reinterpret_cast<Bf16x4*>(d.param_bf16 + i0) = r;
      } else {
#pragma unroll
        for (int e = 0; e < kOptPerThread; ++e) {
          if (e < count) d.param_bf16[i0 + e] = r.v[e];
        }
      }
    }
  }
}

/// grid = Σ_t ceil(n_t / kOptChunk) blocks of kOptThreads: partials[b] = Σ g² over block b's
/// chunk (a fixed tree, so each partial is deterministic), in double as the CPU backend sums:
/// a gradient past 2^64 has a square past float's range, whose norm is still a float.
__global__ void __launch_bounds__(kOptThreads) global_norm_partials(NormPartialParams p) {
  double* s_red = dynamic_smem<double>();  // [32]
  const int64_t block = blockIdx.x;
  const int t = find_tensor(p.g_chunk_begin, p.num_tensors, block);
  const NormTensorDesc d = p.g_tensors[t];
  const int64_t chunk_start = (block - p.g_chunk_begin[t]) * kOptChunk;
  const int64_t chunk_end = chunk_start + kOptChunk < d.n ? chunk_start + kOptChunk : d.n;
  double acc = 0.0;
  for (int step = 0; step < kOptSteps; ++step) {
    const int64_t i0 = chunk_start + (int64_t(step) * blockDim.x + threadIdx.x) * kOptPerThread;
    if (i0 >= chunk_end) continue;
    if (d.vec && i0 + kOptPerThread <= chunk_end) {
      const float4 g4 = *reinterpret_cast<const float4*>(d.g + i0);
      acc += double(g4.x) * g4.x + double(g4.y) * g4.y + double(g4.z) * g4.z +
             double(g4.w) * g4.w;
    } else {
      for (int64_t i = i0; i < i0 + kOptPerThread && i < chunk_end; ++i) {
        acc += double(d.g[i]) * d.g[i];
      }
    }
  }
  const double total = block_sum(acc, s_red);
  if (threadIdx.x == 0) p.g_partials[block] = total;
}

/// One block: out = sqrt(Σ partials), in double, each thread summing a fixed strided subset in
/// order, then a fixed tree.
__global__ void __launch_bounds__(kOptFinalThreads) global_norm_final(NormFinalParams p) {
  double* s_red = dynamic_smem<double>();  // [32]
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < p.blocks; i += blockDim.x) acc += p.g_partials[i];
  for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_xor_sync(kFullMask, acc, offset);
  if (lane == 0) s_red[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    acc = lane < warps ? s_red[lane] : 0.0;
    for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_xor_sync(kFullMask, acc, offset);
    if (lane == 0) p.g_out[0] = float(sqrt(acc));
  }
}

}  // namespace nuri::kernels
