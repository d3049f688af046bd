// What this build contains, for `nuri info`, bug reports and benchmark JSON.
#include "nuri/core/build_info.h"

#include "nuri/config.h"

namespace nuri {

BuildInfo build_info() {
  BuildInfo b;
  b.version = NURI_VERSION;
  b.blas = NURI_BLAS_NAME;
  b.cuda = NURI_HAVE_CUDA != 0;
  b.mpi = NURI_MPI != 0;
  b.sanitize = NURI_SANITIZE != 0;
  return b;
}

}  // namespace nuri
