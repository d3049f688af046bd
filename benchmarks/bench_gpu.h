// Shared helpers of the GPU benchmarks (bench_attention_gpu, bench_matmul_gpu): host tensors of
// random normal values in the benchmark's dtype, element access for the float64 checks, and the
// device description that also decides "no device: exit 77, ctest Skipped".
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "bench_common.h"
#include "nuri/core/dtype.h"
#include "nuri/core/rng.h"
#include "nuri/core/tensor.h"

namespace bench {

constexpr int kExitSkip = 77;  // ctest SKIP_RETURN_CODE

/// Element i of a contiguous host tensor (f32, bf16 or f16) set to x, rounded to its dtype.
inline void store(const nuri::Tensor& t, int64_t i, float x) {
  switch (t.dtype()) {
    case nuri::DType::bf16:
      static_cast<nuri::bf16_t*>(t.raw())[i] = nuri::f32_to_bf16(x);
      break;
    case nuri::DType::f16:
      static_cast<nuri::f16_t*>(t.raw())[i] = nuri::f32_to_f16(x);
      break;
    default:
      static_cast<float*>(t.raw())[i] = x;
      break;
  }
}

/// Element i of a contiguous host tensor (f32, bf16 or f16) as a double.
inline double load(const nuri::Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case nuri::DType::bf16:
      return nuri::bf16_to_f32(static_cast<const nuri::bf16_t*>(t.raw())[i]);
    case nuri::DType::f16:
      return nuri::f16_to_f32(static_cast<const nuri::f16_t*>(t.raw())[i]);
    default:
      return static_cast<const float*>(t.raw())[i];
  }
}

/// scale · standard normal values from nuri's Philox (element i is normal(i) of `stream`: the
/// same values for any thread count), never zero.
inline void fill_normal(const nuri::Tensor& t, uint64_t seed, uint64_t stream, float scale = 1.f) {
  const nuri::Philox rng(seed, stream);
  const int64_t n = t.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    store(t, i, scale * rng.normal(uint64_t(i)));
    if (load(t, i) == 0.0) store(t, i, 1e-3f);  // non-zero data
  }
}

/// The device's name, compute capability, SM count and memory ({"name": backend} for a non-CUDA
/// backend). Without a CUDA device, `program` says so and the process exits 77 (skipped).
inline Json device_json(const char* program, const std::string& backend) {
  Json j;
  if (backend != "cuda") return j.kv("name", backend);
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    std::fprintf(stderr, "%s: no CUDA device (%s): nothing to measure; exit %d (skipped)\n",
                 program, err == cudaSuccess ? "0 devices" : cudaGetErrorString(err), kExitSkip);
    std::exit(kExitSkip);
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
    j.kv("name", prop.name)
        .kv("cc", std::to_string(prop.major) + "." + std::to_string(prop.minor))
        .kv("sms", prop.multiProcessorCount)
        .kv("mem_gib", double(prop.totalGlobalMem) / (1 << 30));
  }
  return j;
}

}  // namespace bench
