// A job with a broken peer, for tests/dist/fault.sh: after one healthy all_reduce, rank 1 either
// hangs (sleeps far past the timeout) or kills itself with SIGKILL while the others are in the
// next all_reduce. The others must fail that all_reduce with the communicator's error within the
// timeout and exit with status 3.
//   mpirun -np N mpi_fault hang|kill TIMEOUT_S
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "nuri/core/error.h"
#include "nuri/dist/communicator.h"
#include "nuri/dist/launch.h"

int main(int argc, char** argv) {
  using namespace nuri;
  if (argc != 3) {
    std::fprintf(stderr, "usage: mpi_fault hang|kill TIMEOUT_S\n");
    return 2;
  }
  const std::string mode = argv[1];
  CommOptions opt;
  opt.timeout_s = std::atof(argv[2]);
  std::unique_ptr<Communicator> comm = make_communicator(detect_launch(), opt);
  Tensor t = Tensor::empty({1024}, DType::f32);
  for (int i = 0; i < 1024; ++i) t.data<float>()[i] = float(i);
  comm->all_reduce(t);  // everyone is there
  if (comm->rank() == 1) {
    if (mode == "kill") std::raise(SIGKILL);
    std::this_thread::sleep_for(std::chrono::seconds(3600));
    return 0;
  }
  try {
    comm->all_reduce(t);
  } catch (const Error& e) {
    std::fprintf(stderr, "rank %d: %s\n", comm->rank(), e.what());
    return 3;
  }
  std::fprintf(stderr, "rank %d: the all_reduce completed without rank 1\n", comm->rank());
  return 0;
}
