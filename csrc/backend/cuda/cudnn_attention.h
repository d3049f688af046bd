// cuDNN's fused attention (the cuDNN frontend's SDPA graphs) as a second implementation of the
// attention ops, beside nuri's kernels (kernels/attention_*.cuh). Real CUDA builds only, and only
// where CMake found the frontend's headers (the PyPI package nvidia-cudnn-frontend, in .venv/):
// NURI_HAVE_CUDNN_FRONTEND. libcudnn is opened at run time, so a machine without it still runs
// nuri's kernels. Which one runs: NURI_ATTENTION (attention.cpp, cuda_backend.h).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <functional>
#include <string>

#include "attention.h"

namespace nuri::cuda {

/// Device memory of at least the given bytes, valid until the call returns (the backend's
/// workspace).
using Workspace = std::function<void*(size_t)>;

/// Whether this build has the cuDNN path at all.
bool cudnn_attention_built();

/// out and lse of p (as kernels::attention_forward takes them) through cuDNN on `stream`.
/// Returns "" when it ran, else why cuDNN did not take the call (libcudnn missing, a shape or
/// layout its engines do not support); nothing is written then. Graphs are built once per
/// shape, layout and options and kept.
template <class T>
std::string cudnn_attention_forward(const kernels::AttentionParams<T>& p, int device,
                                    cudaStream_t stream, const Workspace& workspace);

/// dq, dk, dv of p (as kernels::attention_backward takes them); p.deterministic asks cuDNN for
/// its deterministic backward. Returns as cudnn_attention_forward does.
template <class T>
std::string cudnn_attention_backward(const kernels::AttentionParams<T>& p, int device,
                                     cudaStream_t stream, const Workspace& workspace);

}  // namespace nuri::cuda
