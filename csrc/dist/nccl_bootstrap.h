// A raw NCCL communicator over the ranks of a host communicator. Internal: the NCCL communicator
// (nccl_communicator.cpp) is built on it, and benchmarks/bench_comm_gpu.cpp uses it for its raw
// NCCL peer on the same ranks.
#pragma once

#include <nccl.h>

#include <memory>

#include "nuri/dist/communicator.h"

namespace nuri {

/// ncclCommInitRank on every rank of `host` (a collective over it): rank 0's ncclGetUniqueId is
/// broadcast over `host`; in the emulated build the emulated NCCL then carries its operations
/// over `host` itself. The CUDA device must be set first (cudaSetDevice; a CUDA backend's
/// constructor does). Returns NCCL's result; *comm is set on success only.
ncclResult_t nccl_init_over(const std::shared_ptr<Communicator>& host, ncclComm_t* comm);

}  // namespace nuri
