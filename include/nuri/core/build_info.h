// What this build of nuri was configured with.
#pragma once

#include <string>

namespace nuri {

struct BuildInfo {
  std::string version;
  std::string blas;  ///< "openblas" or "eigen": the CPU backend's GEMM
  bool cuda = false; ///< CUDA sources compiled (nvcc found)
  bool mpi = false;
  bool sanitize = false;
};

BuildInfo build_info();

}  // namespace nuri
