// Host side of nuri's sm_90a kernels (attention_*_sm90, matmul_sm90.cuh): whether this build
// holds them.
#pragma once

namespace nuri::kernels {

/// Whether this build holds the sm_90a kernels (nvcc with 90a among CMAKE_CUDA_ARCHITECTURES, or
/// the emulator, which runs them everywhere).
bool sm90a_compiled();

}  // namespace nuri::kernels
