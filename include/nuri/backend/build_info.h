// What this build of nuri was configured with, and the backends it can create (which is why it
// sits with the backends, not in core).
#pragma once

#include <string>
#include <vector>

namespace nuri {

struct BuildInfo {
  std::string version;
  std::string blas;  ///< "openblas" or "eigen": the CPU backend's GEMM
  bool cuda = false; ///< CUDA sources compiled (nvcc found)
  std::vector<std::string> cuda_architectures;  ///< e.g. {"80", "90"}; empty without CUDA
  std::vector<std::string> backends;            ///< what make_backend() can create
  bool mpi = false;
  bool sanitize = false;
};

BuildInfo build_info();

}  // namespace nuri
