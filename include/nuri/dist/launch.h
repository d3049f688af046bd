// Launcher detection (DESIGN.md, "Distributed"): which launcher started this process and where it
// sits in the job, read from the environment each launcher sets.
//
//   torchrun-style  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (also what a test or a
//                   hand-written script sets; LOCAL_WORLD_SIZE when present)
//   mpirun (Open MPI)  OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE
//   srun (Slurm)    SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID (SLURM_STEP_TASKS_PER_NODE,
//                   else SLURM_NTASKS_PER_NODE, when every node has the same count: "8",
//                   "8(x4)"); an allocation's shell (sbatch, salloc: SLURM_PROCID
//                   without the step's SLURM_STEP_NUM_TASKS) is a single process. With
//                   MASTER_ADDR and MASTER_PORT the ranks meet over TCP as
//                   torchrun-style ones do, else over MPI, which needs srun's PMIx plugin
//                   (`srun --mpi=pmix`; PMI-2 where the site's MPI was built for it)
//   mpiexec (PMI)   PMI_RANK, PMI_SIZE and the local rank: MPI_LOCALRANKID and MPI_LOCALNRANKS
//                   (Hydra: MPICH, Intel MPI), else PMI_LOCAL_RANK and PMI_LOCAL_SIZE (Cray
//                   PALS). nuri's MPI is Open MPI, which cannot join these ranks, so they meet
//                   over TCP at MASTER_ADDR:MASTER_PORT, which the job must export
//   none of them    a single process: rank 0 of 1
//
// In that order: a torchrun-style RANK wins over the others (a script may set it inside any
// allocation), and Open MPI's variables win over Slurm's, since mpirun inside a Slurm job leaves
// the Slurm variables of the allocation's first task in every rank. An mpiexec's win over
// Slurm's for the same reason (inside an allocation Hydra starts one proxy a node with srun, so
// its ranks carry that step's SLURM_PROCID and SLURM_STEP_NUM_TASKS: the node's index and the
// node count): its PMI_RANK and PMI_SIZE are told from those of `srun --mpi=pmi2` by a local
// rank only the mpiexecs set, or by differing from SLURM_PROCID and SLURM_STEP_NUM_TASKS. A
// partial or inconsistent set (RANK without WORLD_SIZE, PMI_SIZE without PMI_RANK, a rank
// outside the world, a number that does not parse) is an error that names the variable;
// nothing is guessed.
#pragma once

#include <functional>
#include <string>

namespace nuri {

enum class Launcher { single, torchrun, mpirun, srun, mpiexec };
const char* launcher_name(Launcher l);

struct LaunchInfo {
  Launcher launcher = Launcher::single;
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;        ///< rank among the processes of this node
  int local_world_size = 1;  ///< processes on this node; 0 when the launcher does not say
  std::string master_addr;   ///< the TCP rendezvous host (torchrun-style; srun or mpiexec with
                             ///< MASTER_ADDR)
  int master_port = 0;       ///< its port; 0 when the ranks do not meet over TCP
  bool srun_pmi = false;     ///< srun set up PMIx or PMI-2 for this task (PMIX_RANK or PMI_RANK)
};

/// Reads the launcher's variables through `getenv` (a name -> value or nullptr; the process
/// environment by default, a map in tests). Throws nuri::Error naming the variable on bad input.
LaunchInfo detect_launch(const std::function<const char*(const char*)>& getenv = nullptr);
/// Slurm's tasks per node ("8", "8(x4)", "8(x3),4") as one count where every node has the same,
/// else 0 (unknown; also for null, empty or malformed text).
int slurm_uniform_tasks_per_node(const char* value);

/// The device of this process: its local rank, which must be below `device_count` (one process
/// per device; an error says how many processes the node may start otherwise). A process that
/// sees one device uses it whatever its local rank: a launcher that binds a GPU to each task
/// (`srun --gpus-per-task=1`, a per-rank CUDA_VISIBLE_DEVICES) leaves each one device 0; ranks
/// that really share one GPU are refused by NCCL, which names the duplicate.
int device_for_local_rank(const LaunchInfo& info, int device_count);

/// The backend name this process should pass to make_backend: "cuda" becomes "cuda:<its device>"
/// (device_for_local_rank over the devices it sees); "cpu", an explicit "cuda:N", and the
/// emulated "cuda-emu" (each process has its own emulated device) are returned as they are.
std::string backend_for_rank(const std::string& backend, const LaunchInfo& info);

}  // namespace nuri
