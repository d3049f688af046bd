// A job with a broken peer, for tests/dist/fault.sh: after one healthy all_reduce, rank 1 either
// hangs (sleeps far past the timeout) or kills itself with SIGKILL while the others are in the
// next all_reduce. The others must fail that all_reduce with the communicator's error within the
// timeout and exit with status 3.
// pp-hang, pp-kill: the same in a pipeline of one stage a rank (issue #23): after one healthy
// step, stage 1 hangs or dies, and the other stages' next step must fail within the timeout
// naming the transfer and the stage it waited for.
// mismatch, order (TCP, tests/dist/fault_tcp.sh): after the healthy all_reduce, rank 1 calls the
// next one with half the elements, or calls broadcast instead; the ranks that receive from it or
// send to it must stop at once naming both operations (not read one's bytes as the other's).
// meet (tests/dist/rendezvous_tcp.sh): join the job, all_reduce once, say so, exit 0.
// interrupt: rank 1 hangs as in hang, and half a second into the next all_reduce the other ranks'
// wait-interrupt flag (set_wait_interrupt, what Python's Ctrl-C handler sets) turns true: they
// must stop at once saying so, well before the timeout.
//   mpirun -np N mpi_fault hang|kill|pp-hang|pp-kill|mismatch|order|meet|interrupt TIMEOUT_S
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "nuri/core/error.h"
#include "nuri/dist/communicator.h"
#include "nuri/dist/launch.h"
#include "nuri/parallel/pipeline.h"

namespace {

int pipeline_fault(std::shared_ptr<nuri::Communicator> comm, bool kill) {
  using namespace nuri;
  ModelConfig cfg = model_preset("gpt2-tiny");
  cfg.n_layer = comm->size();
  const int s = comm->rank();
  Transformer stage(cfg, make_backend("cpu"), 1, WeightShard{}, TensorParallelRank{},
                    PipelineStage{s, s + 1});
  Pipeline pipe({&stage}, comm);
  std::vector<Pipeline::MicroBatch> micro;
  for (int k = 0; k < 4; ++k) {
    micro.push_back({Tensor::zeros({2, 8}, DType::i32), Tensor::zeros({2, 8}, DType::i32)});
  }
  pipe.step(micro, 0.25f);  // everyone is there
  if (s == 1) {
    if (kill) std::raise(SIGKILL);
    std::this_thread::sleep_for(std::chrono::seconds(3600));
    return 0;
  }
  try {
    pipe.step(micro, 0.25f);
  } catch (const Error& e) {
    std::fprintf(stderr, "rank %d: %s\n", s, e.what());
    return 3;
  }
  std::fprintf(stderr, "rank %d: the step completed without stage 1\n", s);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace nuri;
  if (argc != 3) {
    std::fprintf(stderr, "usage: mpi_fault hang|kill|pp-hang|pp-kill|mismatch|order|meet|"
                         "interrupt TIMEOUT_S\n");
    return 2;
  }
  const std::string mode = argv[1];
  CommOptions opt;
  opt.timeout_s = std::atof(argv[2]);
  std::shared_ptr<Communicator> comm = make_communicator(detect_launch(), opt);
  if (mode == "pp-hang" || mode == "pp-kill") return pipeline_fault(comm, mode == "pp-kill");
  Tensor t = Tensor::empty({1024}, DType::f32);
  for (int i = 0; i < 1024; ++i) t.data<float>()[i] = float(i);
  comm->all_reduce(t);  // everyone is there
  if (mode == "meet") {
    std::fprintf(stderr, "rank %d: met %d ranks, sum %g\n", comm->rank(), comm->size(),
                 double(t.data<float>()[1]));
    return 0;
  }
  if (mode == "mismatch" || mode == "order") {
    try {
      if (comm->rank() == 1 && mode == "mismatch") {
        comm->all_reduce(t.slice(0, 0, 512));
      } else if (comm->rank() == 1) {
        comm->broadcast(t, 0);
      } else {
        comm->all_reduce(t);
      }
    } catch (const Error& e) {
      std::fprintf(stderr, "rank %d: %s\n", comm->rank(), e.what());
      return 3;
    }
    std::fprintf(stderr, "rank %d: the operations completed\n", comm->rank());
    return 0;
  }
  if (comm->rank() == 1) {
    if (mode == "kill") std::raise(SIGKILL);
    std::this_thread::sleep_for(std::chrono::seconds(3600));
    return 0;
  }
  static std::atomic<bool> pressed{false};
  std::thread presser;
  if (mode == "interrupt") {
    set_wait_interrupt(&pressed);
    presser = std::thread([] {
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      pressed.store(true);
    });
  }
  int status = 0;
  try {
    comm->all_reduce(t);
    std::fprintf(stderr, "rank %d: the all_reduce completed without rank 1\n", comm->rank());
  } catch (const Error& e) {
    std::fprintf(stderr, "rank %d: %s\n", comm->rank(), e.what());
    status = 3;
  }
  if (presser.joinable()) presser.join();
  return status;
}
