// NURI_CUDA_CHECK for host code (csrc/backend/cuda/*.cpp and the launch helper): a failed CUDA
// runtime call throws nuri::Error naming the call. No device code, so g++ can include it in the
// real build too.
#pragma once

#include <cuda_runtime.h>

#include "nuri/core/error.h"

/// Wraps a CUDA runtime call: a failure throws nuri::Error with the call, file and line.
#define NURI_CUDA_CHECK(call)                                                                   \
  do {                                                                                          \
    const cudaError_t nuri_err_ = (call);                                                       \
    NURI_CHECK(nuri_err_ == cudaSuccess, "CUDA error ", cudaGetErrorName(nuri_err_), " (",     \
               cudaGetErrorString(nuri_err_), ") in ", #call);                                 \
  } while (0)
