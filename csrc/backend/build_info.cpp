// What this build contains, for `nuri info`, bug reports and benchmark JSON.
#include "nuri/backend/build_info.h"

#include "nuri/backend/backend.h"
#include "nuri/config.h"

namespace nuri {

BuildInfo build_info() {
  BuildInfo b;
  b.version = NURI_VERSION;
  b.blas = NURI_BLAS_NAME;
  b.cuda = NURI_HAVE_CUDA != 0;
  std::string archs = NURI_CUDA_ARCHITECTURES;
  for (size_t start = 0; start < archs.size();) {
    size_t end = archs.find(';', start);
    if (end == std::string::npos) end = archs.size();
    if (end > start) b.cuda_architectures.push_back(archs.substr(start, end - start));
    start = end + 1;
  }
  b.backends = available_backends();
  b.mpi = NURI_HAVE_MPI != 0;
  b.sanitize = NURI_SANITIZE != 0;
  return b;
}

}  // namespace nuri
