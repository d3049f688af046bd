// nuri's linear-layer products through cuBLASLt (real CUDA builds only; internal to the CUDA
// backend). The same parameter structs and semantics as kernels/matmul.h, so the backend can pick
// either path per call. The design choice to know: nuri's row-major matrices are handed to
// cuBLASLt as the column-major transposes they already are (no copies), and every (op, dtype,
// shape, epilogue, pointer alignment) keeps its descriptors and heuristic algorithm in a cache,
// so a repeated call costs one hash lookup before cublasLtMatmul. cublaslt.cpp says how each
// product maps.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>

#include "matmul.h"  // kernels/: MatmulParams<T> etc.

namespace nuri::cuda {

/// nuri's linear-layer products through cuBLASLt (real CUDA builds only): the same parameter
/// structs and semantics as kernels/matmul.h, so the backend can pick either path per call.
class CublasLt {
 public:
  /// cublasLtCreate + a 32 MiB device workspace; nuri::Error naming the cublasStatus on failure.
  CublasLt();
  ~CublasLt();
  CublasLt(const CublasLt&) = delete;
  CublasLt& operator=(const CublasLt&) = delete;

  /// Each enqueues the product on `stream` and returns true, or returns false having done
  /// nothing when cuBLASLt cannot run this call (no algorithm from the heuristic for the
  /// layout/alignment/epilogue); errors other than "not supported" throw nuri::Error.
  template <class T>
  bool forward(const kernels::MatmulParams<T>& p, cudaStream_t stream);
  template <class T>
  bool backward_input(const kernels::MatmulBackwardInputParams<T>& p, cudaStream_t stream);
  template <class T>
  bool backward_weight(const kernels::MatmulBackwardWeightParams<T>& p, cudaStream_t stream);
  /// dbias (+)= Σ_m dy as a product dyᵀ·ones (a ones vector kept in device memory); gWork unused.
  template <class T>
  bool backward_bias(const kernels::MatmulBackwardBiasParams<T>& p, cudaStream_t stream);

  /// Products cuBLASLt has run (so tests and benchmarks can see the path was taken).
  int64_t calls() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nuri::cuda
