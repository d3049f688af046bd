// Launcher detection from a given environment, the communicator timeout, and the process
// grid's groups.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <limits>
#include <map>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "nuri/backend/backend.h"
#include "nuri/core/error.h"
#include "nuri/dist/communicator.h"
#include "nuri/dist/grid.h"
#include "nuri/dist/launch.h"

namespace nuri {
namespace {

using Env = std::map<std::string, std::string>;

LaunchInfo launch(const Env& env) {
  return detect_launch([&env](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

std::string error_of(const Env& env) {
  try {
    launch(env);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Launch, NothingSetIsOneProcess) {
  const LaunchInfo i = launch({{"HOME", "/root"}});
  EXPECT_EQ(i.launcher, Launcher::single);
  EXPECT_EQ(i.rank, 0);
  EXPECT_EQ(i.world_size, 1);
  EXPECT_EQ(i.local_rank, 0);
}

TEST(Launch, TorchrunStyle) {
  const LaunchInfo i = launch({{"RANK", "5"},
                               {"WORLD_SIZE", "8"},
                               {"LOCAL_RANK", "1"},
                               {"LOCAL_WORLD_SIZE", "4"},
                               {"MASTER_ADDR", "node07"},
                               {"MASTER_PORT", "29500"}});
  EXPECT_EQ(i.launcher, Launcher::torchrun);
  EXPECT_EQ(i.rank, 5);
  EXPECT_EQ(i.world_size, 8);
  EXPECT_EQ(i.local_rank, 1);
  EXPECT_EQ(i.local_world_size, 4);
  EXPECT_EQ(i.master_addr, "node07");
  EXPECT_EQ(i.master_port, 29500);
  // One process needs no rendezvous, and LOCAL_RANK defaults to 0 then.
  const LaunchInfo one = launch({{"RANK", "0"}, {"WORLD_SIZE", "1"}});
  EXPECT_EQ(one.launcher, Launcher::torchrun);
  EXPECT_EQ(one.world_size, 1);
  EXPECT_EQ(one.local_rank, 0);
}

TEST(Launch, OpenMpi) {
  const LaunchInfo i = launch({{"OMPI_COMM_WORLD_RANK", "3"},
                               {"OMPI_COMM_WORLD_SIZE", "4"},
                               {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                               {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
  EXPECT_EQ(i.launcher, Launcher::mpirun);
  EXPECT_EQ(i.rank, 3);
  EXPECT_EQ(i.world_size, 4);
  EXPECT_EQ(i.local_rank, 1);
  EXPECT_EQ(i.local_world_size, 2);
}

TEST(Launch, Slurm) {
  const LaunchInfo i = launch({{"SLURM_PROCID", "6"},
                               {"SLURM_STEP_NUM_TASKS", "16"},
                               {"SLURM_LOCALID", "2"},
                               {"SLURM_NTASKS_PER_NODE", "8"}});
  EXPECT_EQ(i.launcher, Launcher::srun);
  EXPECT_EQ(i.rank, 6);
  EXPECT_EQ(i.world_size, 16);
  EXPECT_EQ(i.local_rank, 2);
  EXPECT_EQ(i.local_world_size, 8);
  // A heterogeneous job's per-node count is not one number: unknown, not misread.
  EXPECT_EQ(launch({{"SLURM_PROCID", "0"},
                    {"SLURM_STEP_NUM_TASKS", "5"},
                    {"SLURM_LOCALID", "0"},
                    {"SLURM_NTASKS_PER_NODE", "2(x2),1"}})
                .local_world_size,
            0);
  // A step of 2 in an allocation of 4 a node: the step's count per node, not the job's.
  EXPECT_EQ(launch({{"SLURM_PROCID", "1"},
                    {"SLURM_STEP_NUM_TASKS", "2"},
                    {"SLURM_LOCALID", "1"},
                    {"SLURM_NTASKS_PER_NODE", "4"},
                    {"SLURM_STEP_TASKS_PER_NODE", "2"}})
                .local_world_size,
            2);
  // A step over four nodes of 8 tasks each: Slurm writes "8(x4)", one count for every node.
  EXPECT_EQ(launch({{"SLURM_PROCID", "9"},
                    {"SLURM_STEP_NUM_TASKS", "32"},
                    {"SLURM_LOCALID", "1"},
                    {"SLURM_STEP_TASKS_PER_NODE", "8(x4)"}})
                .local_world_size,
            8);
  EXPECT_EQ(slurm_uniform_tasks_per_node("8(x3),8"), 8);
  EXPECT_EQ(slurm_uniform_tasks_per_node("8(x3),4"), 0);
  for (const char* bad : {"", "x", "8(4)", "8(x)", "8(x4", "8,", "-8", "0", "8(x4)x"}) {
    EXPECT_EQ(slurm_uniform_tasks_per_node(bad), 0) << bad;
  }
  EXPECT_EQ(slurm_uniform_tasks_per_node(nullptr), 0);
  // An allocation's own shell (an sbatch script, salloc) carries SLURM_PROCID 0 and the job's
  // SLURM_NTASKS but no step: one process, not rank 0 of 4 waiting for 3 that never come.
  const LaunchInfo batch = launch({{"SLURM_PROCID", "0"},
                                   {"SLURM_NTASKS", "4"},
                                   {"SLURM_LOCALID", "0"},
                                   {"SLURM_NTASKS_PER_NODE", "4"},
                                   {"MASTER_ADDR", "node01"},
                                   {"MASTER_PORT", "29500"}});
  EXPECT_EQ(batch.launcher, Launcher::single);
  EXPECT_EQ(batch.rank, 0);
  EXPECT_EQ(batch.world_size, 1);
}

TEST(Launch, SlurmMeetsOverMpiThroughPmiOrOverTcpWithMasterAddr) {
  const Env two = {
      {"SLURM_PROCID", "1"}, {"SLURM_STEP_NUM_TASKS", "2"}, {"SLURM_LOCALID", "1"}};
  // `srun --mpi=none` (many sites' default): no PMI, no rendezvous.
  const LaunchInfo bare = launch(two);
  EXPECT_FALSE(bare.srun_pmi);
  EXPECT_TRUE(bare.master_addr.empty());
  EXPECT_EQ(bare.master_port, 0);
  // `srun --mpi=pmix` sets PMIX_RANK, `--mpi=pmi2` PMI_RANK.
  for (const char* var : {"PMIX_RANK", "PMI_RANK"}) {
    Env e = two;
    e[var] = "1";
    EXPECT_TRUE(launch(e).srun_pmi) << var;
  }
  Env tcp = two;
  tcp.insert({{"MASTER_ADDR", "node01"}, {"MASTER_PORT", "29400"}});
  const LaunchInfo t = launch(tcp);
  EXPECT_EQ(t.launcher, Launcher::srun);
  EXPECT_EQ(t.rank, 1);
  EXPECT_EQ(t.master_addr, "node01");
  EXPECT_EQ(t.master_port, 29400);
  tcp.erase("MASTER_PORT");
  EXPECT_NE(error_of(tcp).find("MASTER_PORT is not set, but MASTER_ADDR is (srun (Slurm))"),
            std::string::npos)
      << error_of(tcp);
  // One task needs neither.
  const Env one = {{"SLURM_PROCID", "0"}, {"SLURM_STEP_NUM_TASKS", "1"}, {"SLURM_LOCALID", "0"},
                   {"MASTER_ADDR", "node01"}};
  EXPECT_TRUE(launch(one).master_addr.empty());
}

TEST(Launch, PmiMpiexecsInAndOutsideSlurm) {
  // MPICH's or Intel MPI's mpiexec on its own: PMI_RANK, PMI_SIZE and the local rank.
  const Env hydra = {{"PMI_RANK", "5"},       {"PMI_SIZE", "8"},         {"MPI_LOCALRANKID", "1"},
                     {"MPI_LOCALNRANKS", "4"}, {"MASTER_ADDR", "node01"}, {"MASTER_PORT", "29400"}};
  LaunchInfo i = launch(hydra);
  EXPECT_EQ(i.launcher, Launcher::mpiexec);
  EXPECT_EQ(i.rank, 5);
  EXPECT_EQ(i.world_size, 8);
  EXPECT_EQ(i.local_rank, 1);
  EXPECT_EQ(i.local_world_size, 4);
  EXPECT_EQ(i.master_addr, "node01");
  EXPECT_EQ(i.master_port, 29400);
  EXPECT_FALSE(i.srun_pmi);
  // Inside an allocation Hydra starts a proxy a node with srun: every rank on the second of two
  // nodes carries SLURM_PROCID 1 of a step of 2 tasks. Read as srun, each node's 4 ranks would
  // all have been rank 1 of 2 (the node's index and count); read as the mpiexec's, rank 5 of 8.
  Env in_slurm = hydra;
  in_slurm.insert({{"SLURM_PROCID", "1"},
                   {"SLURM_STEP_NUM_TASKS", "2"},
                   {"SLURM_LOCALID", "0"},
                   {"SLURM_STEP_TASKS_PER_NODE", "1(x2)"}});
  i = launch(in_slurm);
  EXPECT_EQ(i.launcher, Launcher::mpiexec);
  EXPECT_EQ(i.rank, 5);
  EXPECT_EQ(i.world_size, 8);
  EXPECT_EQ(i.local_rank, 1);
  // Without MPI_LOCALRANKID, a rank or size the step does not have still says mpiexec, and the
  // missing local rank is named.
  Env no_local = in_slurm;
  no_local.erase("MPI_LOCALRANKID");
  EXPECT_NE(error_of(no_local).find("MPI_LOCALRANKID is not set, but PMI_RANK is (mpiexec "
                                    "(PMI: MPICH, Intel MPI, Cray PALS))"),
            std::string::npos)
      << error_of(no_local);
  // Cray PALS: PMI_LOCAL_RANK and PMI_LOCAL_SIZE where Hydra's are not.
  const LaunchInfo pals = launch({{"PMI_RANK", "6"},
                                  {"PMI_SIZE", "8"},
                                  {"PMI_LOCAL_RANK", "2"},
                                  {"PMI_LOCAL_SIZE", "4"},
                                  {"MASTER_ADDR", "x1000c0s0b0n0"},
                                  {"MASTER_PORT", "29400"}});
  EXPECT_EQ(pals.launcher, Launcher::mpiexec);
  EXPECT_EQ(pals.rank, 6);
  EXPECT_EQ(pals.local_rank, 2);
  EXPECT_EQ(pals.local_world_size, 4);
  // Half of the pair is named, not read as one process; PMI_SIZE=1 alone is one process.
  EXPECT_NE(error_of({{"PMI_SIZE", "4"}, {"MPI_LOCALRANKID", "0"}})
                .find("PMI_RANK is not set, but PMI_SIZE is"),
            std::string::npos);
  EXPECT_NE(error_of({{"PMI_RANK", "3"}, {"MPI_LOCALRANKID", "0"}})
                .find("PMI_SIZE is not set, but PMI_RANK is"),
            std::string::npos);
  EXPECT_EQ(launch({{"PMI_SIZE", "1"}}).launcher, Launcher::single);
  // `srun --mpi=pmi2`'s PMI_RANK and PMI_SIZE are the step's own: srun, with its PMI plugin.
  const LaunchInfo pmi2 = launch({{"SLURM_PROCID", "1"},
                                  {"SLURM_STEP_NUM_TASKS", "2"},
                                  {"SLURM_LOCALID", "1"},
                                  {"PMI_RANK", "1"},
                                  {"PMI_SIZE", "2"}});
  EXPECT_EQ(pmi2.launcher, Launcher::srun);
  EXPECT_EQ(pmi2.rank, 1);
  EXPECT_TRUE(pmi2.srun_pmi);
  // `mpiexec -n 1`: one process, whether or not the local rank is given.
  EXPECT_EQ(launch({{"PMI_RANK", "0"}, {"PMI_SIZE", "1"}}).world_size, 1);
  // Malformed numbers are named as for every launcher.
  EXPECT_NE(error_of({{"PMI_RANK", "4"}, {"PMI_SIZE", "4"}, {"MPI_LOCALRANKID", "0"}})
                .find("PMI_RANK=4 is not below PMI_SIZE=4"),
            std::string::npos);
  // Without MASTER_ADDR the ranks have nowhere to meet (Open MPI cannot join them): the
  // communicator says what to export, before any socket or MPI call.
  Env no_addr = hydra;
  no_addr.erase("MASTER_ADDR");
  no_addr.erase("MASTER_PORT");
  i = launch(no_addr);
  EXPECT_EQ(i.launcher, Launcher::mpiexec);
  EXPECT_TRUE(i.master_addr.empty());
  try {
    make_communicator(i);
    FAIL() << "a communicator was made for an mpiexec's ranks without a rendezvous";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("rank 5 of 8 started by an mpiexec of MPICH, Intel MPI or Cray PALS"),
              std::string::npos) << m;
    EXPECT_NE(m.find("export MASTER_ADDR"), std::string::npos) << m;
  }
}

TEST(Launch, SrunWithoutPmiOrMasterAddrSaysHowToStartTheJob) {
  LaunchInfo i;
  i.launcher = Launcher::srun;
  i.rank = 0, i.world_size = 2;
  try {
    make_communicator(i);
    FAIL() << "a communicator was made for srun ranks that cannot meet";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("rank 0 of 2 started by srun without a PMI plugin"), std::string::npos) << m;
    EXPECT_NE(m.find("srun --mpi=pmix"), std::string::npos) << m;
    EXPECT_NE(m.find("export MASTER_ADDR"), std::string::npos) << m;
  }
}

TEST(Launch, PrecedenceTorchrunThenOpenMpiThenSlurm) {
  // mpirun inside a Slurm allocation: every rank inherits the first task's SLURM_PROCID.
  const Env slurm = {
      {"SLURM_PROCID", "0"}, {"SLURM_STEP_NUM_TASKS", "1"}, {"SLURM_LOCALID", "0"}};
  Env mpi = slurm;
  mpi.insert({{"OMPI_COMM_WORLD_RANK", "2"},
              {"OMPI_COMM_WORLD_SIZE", "4"},
              {"OMPI_COMM_WORLD_LOCAL_RANK", "2"}});
  EXPECT_EQ(launch(mpi).launcher, Launcher::mpirun);
  EXPECT_EQ(launch(mpi).rank, 2);
  Env torch = mpi;
  torch.insert({{"RANK", "1"},
                {"WORLD_SIZE", "2"},
                {"LOCAL_RANK", "1"},
                {"MASTER_ADDR", "127.0.0.1"},
                {"MASTER_PORT", "1234"}});
  EXPECT_EQ(launch(torch).launcher, Launcher::torchrun);
  EXPECT_EQ(launch(torch).rank, 1);
}

TEST(Launch, BadEnvironmentsNameTheVariable) {
  EXPECT_NE(error_of({{"RANK", "0"}}).find("WORLD_SIZE is not set"), std::string::npos);
  EXPECT_NE(error_of({{"WORLD_SIZE", "2"}}).find("RANK is not set"), std::string::npos);
  EXPECT_NE(error_of({{"RANK", "one"}, {"WORLD_SIZE", "2"}})
                .find("RANK='one' is not a non-negative integer"),
            std::string::npos);
  EXPECT_NE(error_of({{"RANK", "-1"}, {"WORLD_SIZE", "2"}}).find("RANK='-1'"), std::string::npos);
  EXPECT_NE(error_of({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"}})
                .find("RANK=2 is not below WORLD_SIZE=2"),
            std::string::npos);
  EXPECT_NE(error_of({{"RANK", "1"}, {"WORLD_SIZE", "2"}}).find("LOCAL_RANK is not set"),
            std::string::npos);
  EXPECT_NE(error_of({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"}})
                .find("MASTER_ADDR is not set"),
            std::string::npos);
  EXPECT_NE(error_of({{"RANK", "1"},
                      {"WORLD_SIZE", "2"},
                      {"LOCAL_RANK", "0"},
                      {"MASTER_ADDR", "h"},
                      {"MASTER_PORT", "70000"}})
                .find("MASTER_PORT=70000 is not a TCP port"),
            std::string::npos);
  EXPECT_NE(error_of({{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "3"},
                      {"LOCAL_WORLD_SIZE", "4"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}})
                .find("LOCAL_RANK=3 exceeds RANK=1"),
            std::string::npos);
  EXPECT_NE(error_of({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "0"}})
                .find("OMPI_COMM_WORLD_SIZE is not set"),
            std::string::npos);
  EXPECT_NE(error_of({{"SLURM_PROCID", "3"}, {"SLURM_STEP_NUM_TASKS", "2"},
                      {"SLURM_LOCALID", "0"}})
                .find("SLURM_PROCID=3 is not below SLURM_STEP_NUM_TASKS=2"),
            std::string::npos);
}

TEST(Launch, LocalRankPicksTheDevice) {
  LaunchInfo i;
  i.launcher = Launcher::mpirun;
  i.rank = 6, i.world_size = 8, i.local_rank = 2;
  EXPECT_EQ(device_for_local_rank(i, 4), 2);
  i.local_rank = 4;
  try {
    device_for_local_rank(i, 4);
    FAIL() << "local rank 4 of 4 devices accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("start at most 4 processes per node"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(device_for_local_rank(i, 0), Error);
  // One visible device (a GPU bound to each task by the launcher): that one, whatever the rank.
  EXPECT_EQ(device_for_local_rank(i, 1), 0);
}

TEST(Launch, BackendForRankNamesTheLocalDevice) {
  LaunchInfo i;
  i.launcher = Launcher::srun;
  i.rank = 3, i.world_size = 4, i.local_rank = 1;
  EXPECT_EQ(backend_for_rank("cpu", i), "cpu");
  EXPECT_EQ(backend_for_rank("cuda:5", i), "cuda:5");        // the user's choice stands
  EXPECT_EQ(backend_for_rank("cuda-emu", i), "cuda-emu");    // one emulated device per process
  const int devices = int(cuda_devices().size());
  if (devices == 0) {  // this machine, or a build without CUDA: the rank is told it has none
    try {
      backend_for_rank("cuda", i);
      FAIL() << "a CUDA backend name for a process that sees no device";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("rank 3 (srun (Slurm)) sees no CUDA device"),
                std::string::npos)
          << e.what();
    }
  } else {
    EXPECT_EQ(backend_for_rank("cuda", i), devices == 1 ? "cuda:0" : "cuda:1");
  }
}

// A timeout too long for a clock's nanoseconds (inf meaning "none", or 1e10 s) is taken as the
// longest one, kMaxCommTimeout: the deadline once overflowed into the past, and the TCP ranks'
// first wait failed at once. Two TCP ranks in two threads of this process meet and reduce.
TEST(Communicator, ATimeoutBeyondTheClockIsTheLongestOne) {
  EXPECT_EQ(make_communicator(LaunchInfo{}, CommOptions{1e10})->timeout_s(), kMaxCommTimeout);
  EXPECT_EQ(make_communicator(LaunchInfo{}, CommOptions{30})->timeout_s(), 30);
  int port = 0;
  {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
    ::close(fd);
  }
  float sums[2] = {0, 0};
  double timeouts[2] = {0, 0};
  std::string errors[2];
  auto rank = [&](int r) {
    try {
      LaunchInfo info;
      info.launcher = Launcher::torchrun;
      info.rank = r;
      info.world_size = 2;
      info.master_addr = "127.0.0.1";
      info.master_port = port;
      auto comm = make_communicator(info, CommOptions{std::numeric_limits<double>::infinity()});
      timeouts[r] = comm->timeout_s();
      Tensor t = Tensor::empty({1}, DType::f32);
      t.data<float>()[0] = float(r + 1);
      comm->all_reduce(t, ReduceOp::sum);
      sums[r] = t.data<float>()[0];
    } catch (const std::exception& e) {
      errors[r] = e.what();
    }
  };
  std::thread other(rank, 1);
  rank(0);
  other.join();
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(errors[r], "") << "rank " << r;
    EXPECT_EQ(sums[r], 3.f) << "rank " << r;
    EXPECT_EQ(timeouts[r], kMaxCommTimeout) << "rank " << r;
  }
}

TEST(Grid, CoordinatesRoundTripWithTensorParallelFastest) {
  const ProcessGrid g(24, 3, 2, 4);  // dp 3, tp 2, pp 4
  EXPECT_EQ(g.world_size(), 24);
  for (int r = 0; r < 24; ++r) {
    const GridCoord c = g.coord(r);
    EXPECT_EQ(g.rank(c), r);
    EXPECT_EQ(c.tp, r % 2);
    EXPECT_EQ(c.dp, r / 2 % 3);
    EXPECT_EQ(c.pp, r / 6);
  }
  EXPECT_EQ(g.str(), "dp=3 tp=2 pp=4 (24 ranks)");
}

TEST(Grid, GroupsPartitionTheWorld) {
  const ProcessGrid g(8, 2, 2, 2);
  // rank 5 = tp 1, dp 0, pp 1
  EXPECT_EQ(g.tp_group(5), (std::vector<int>{4, 5}));
  EXPECT_EQ(g.dp_group(5), (std::vector<int>{5, 7}));
  EXPECT_EQ(g.pp_group(5), (std::vector<int>{1, 5}));
  EXPECT_EQ(g.pp_prev(5), 1);
  EXPECT_EQ(g.pp_next(5), -1);
  EXPECT_EQ(g.pp_next(1), 5);
  EXPECT_EQ(g.pp_prev(1), -1);
  // Every rank is in exactly one group of each kind, and each group agrees on its members.
  for (auto group_of : {&ProcessGrid::dp_group, &ProcessGrid::tp_group, &ProcessGrid::pp_group}) {
    std::vector<int> seen(8, 0);
    for (int r = 0; r < 8; ++r) {
      const std::vector<int> mine = (g.*group_of)(r);
      for (int m : mine) EXPECT_EQ((g.*group_of)(m), mine);
      seen[size_t(r)] += int(std::count(mine.begin(), mine.end(), r));
    }
    EXPECT_EQ(seen, std::vector<int>(8, 1));
  }
  // Pure data parallelism: one group of everyone.
  EXPECT_EQ(ProcessGrid(4, 4).dp_group(2), (std::vector<int>{0, 1, 2, 3}));
}

TEST(Grid, SizesMustMultiplyToTheWorld) {
  try {
    ProcessGrid(6, 2, 2, 1);
    FAIL() << "dp 2 · tp 2 accepted for 6 ranks";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs 4 ranks, but the job has 6"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(ProcessGrid(0, 0, 1, 1), Error);
  EXPECT_THROW(ProcessGrid(4, 4).coord(4), Error);
  EXPECT_THROW(ProcessGrid(4, 2, 2).rank({2, 0, 0}), Error);
}

}  // namespace
}  // namespace nuri
