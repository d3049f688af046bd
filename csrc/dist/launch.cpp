// Launcher detection: the environment of torchrun, mpirun (Open MPI), srun (Slurm) and the
// mpiexecs that set PMI's variables (MPICH, Intel MPI, Cray PALS).
#include "nuri/dist/launch.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <optional>

#include "nuri/backend/backend.h"
#include "nuri/core/error.h"

namespace nuri {

const char* launcher_name(Launcher l) {
  switch (l) {
    case Launcher::single: return "single process";
    case Launcher::torchrun: return "torchrun-style environment";
    case Launcher::mpirun: return "mpirun (Open MPI)";
    case Launcher::srun: return "srun (Slurm)";
    case Launcher::mpiexec: return "mpiexec (PMI: MPICH, Intel MPI, Cray PALS)";
  }
  return "?";
}

namespace {

using Getenv = std::function<const char*(const char*)>;

/// The variable as a non-negative int, or nullopt when it is unset or empty.
std::optional<int> int_var(const Getenv& env, const char* name, const char* launcher) {
  const char* v = env(name);
  if (!v || !*v) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v, &end, 10);
  NURI_CHECK(*end == '\0' && errno == 0 && x >= 0 && x <= 1 << 30, name, "='", v,
             "' is not a non-negative integer (read as part of the ", launcher,
             "); unset it or give a number");
  return int(x);
}

int required(const Getenv& env, const char* name, const char* launcher, const char* because) {
  const auto v = int_var(env, name, launcher);
  NURI_CHECK(v.has_value(), name, " is not set, but ", because, " (", launcher,
             "): set it, or unset the others");
  return *v;
}

void check_ranks(const LaunchInfo& info, const char* rank_var, const char* size_var,
                 const char* local_var) {
  const char* l = launcher_name(info.launcher);
  NURI_CHECK(info.world_size >= 1, size_var, "=", info.world_size, " (", l,
             "): a job has at least one process");
  NURI_CHECK(info.rank < info.world_size, rank_var, "=", info.rank, " is not below ", size_var,
             "=", info.world_size, " (", l, ")");
  NURI_CHECK(info.local_rank <= info.rank, local_var, "=", info.local_rank, " exceeds ", rank_var,
             "=", info.rank, " (", l, "): a local rank counts processes on one node");
  NURI_CHECK(info.local_world_size == 0 || info.local_rank < info.local_world_size, local_var,
             "=", info.local_rank, " is not below the node's process count ",
             info.local_world_size, " (", l, ")");
}

/// MASTER_ADDR:MASTER_PORT, where the ranks meet over TCP (MASTER_ADDR is set and not empty).
void rendezvous(const Getenv& env, LaunchInfo& info, const char* because) {
  const char* l = launcher_name(info.launcher);
  info.master_addr = env("MASTER_ADDR");
  info.master_port = required(env, "MASTER_PORT", l, because);
  NURI_CHECK(info.master_port >= 1 && info.master_port <= 65535, "MASTER_PORT=",
             info.master_port, " is not a TCP port (1-65535)");
}

/// Whether PMI_RANK and PMI_SIZE (either of them) are an mpiexec's (MPICH's and Intel MPI's
/// Hydra, Cray's PALS) rather than `srun --mpi=pmi2`'s, which equal the step's SLURM_PROCID and
/// SLURM_STEP_NUM_TASKS: a local rank only the mpiexecs set (MPI_LOCALRANKID, PMI_LOCAL_RANK),
/// no Slurm step, or a rank or size the step does not have (inside an allocation Hydra starts
/// a proxy a node with srun, so its ranks carry that step's variables).
bool pmi_mpiexec(const Getenv& env) {
  const auto set = [&](const char* name) {
    const char* v = env(name);
    return v && *v;
  };
  const auto same = [&](const char* a, const char* b) {
    return set(a) && set(b) && std::string(env(a)) == env(b);
  };
  // (PMI_SIZE=1 alone: one process, as it was read before the mpiexecs were)
  if (!set("PMI_RANK") && (!set("PMI_SIZE") || std::string(env("PMI_SIZE")) == "1")) {
    return false;
  }
  if (set("MPI_LOCALRANKID") || set("PMI_LOCAL_RANK") || !set("SLURM_STEP_NUM_TASKS")) {
    return true;
  }
  // (srun's PMI plugins may set PMI_RANK alone: a missing one differs from nothing)
  return (set("PMI_SIZE") && !same("PMI_SIZE", "SLURM_STEP_NUM_TASKS")) ||
         (set("PMI_RANK") && !same("PMI_RANK", "SLURM_PROCID"));
}

}  // namespace

int slurm_uniform_tasks_per_node(const char* value) {
  if (!value || !*value) return 0;
  const std::string text = value;
  int count = 0;
  size_t at = 0;
  while (at <= text.size()) {
    const size_t end = std::min(text.find(',', at), text.size());
    const std::string entry = text.substr(at, end - at);  // "8" or "8(x4)"
    const size_t paren = entry.find('(');
    const std::string n = entry.substr(0, paren);
    if (n.empty() || n.size() > 6 || n.find_first_not_of("0123456789") != std::string::npos) {
      return 0;
    }
    if (paren != std::string::npos) {
      const std::string times = entry.substr(paren);  // "(x4)"
      if (times.size() < 4 || times.compare(0, 2, "(x") != 0 || times.back() != ')' ||
          times.find_first_not_of("0123456789", 2) != times.size() - 1) {
        return 0;
      }
    }
    const int c = std::stoi(n);
    if (c < 1 || (count != 0 && c != count)) return 0;
    count = c;
    at = end + 1;
  }
  return count;
}

LaunchInfo detect_launch(const std::function<const char*(const char*)>& getenv_fn) {
  const Getenv env = getenv_fn ? getenv_fn : Getenv([](const char* n) { return std::getenv(n); });
  LaunchInfo info;
  if (env("RANK") || env("WORLD_SIZE")) {
    info.launcher = Launcher::torchrun;
    const char* l = launcher_name(info.launcher);
    info.rank = required(env, "RANK", l, "WORLD_SIZE is");
    info.world_size = required(env, "WORLD_SIZE", l, "RANK is");
    info.local_rank = info.world_size == 1 && !env("LOCAL_RANK")
                          ? 0
                          : required(env, "LOCAL_RANK", l, "RANK and WORLD_SIZE are");
    info.local_world_size = int_var(env, "LOCAL_WORLD_SIZE", l).value_or(0);
    check_ranks(info, "RANK", "WORLD_SIZE", "LOCAL_RANK");
    if (info.world_size > 1) {
      const char* addr = env("MASTER_ADDR");
      NURI_CHECK(addr && *addr, "MASTER_ADDR is not set (", l, ", WORLD_SIZE=", info.world_size,
                 "): the ranks meet at MASTER_ADDR:MASTER_PORT; set it to rank 0's host");
      rendezvous(env, info, "WORLD_SIZE is above 1");
    }
    return info;
  }
  // mpirun, a PMI mpiexec and srun: the same four facts under each launcher's names (Hydra's
  // local rank and count; Cray PALS's where Hydra's are not there).
  struct Vars {
    Launcher launcher;
    const char *rank, *size, *local, *local_size;
  };
  const auto set = [&](const char* name) {
    const char* v = env(name);
    return v && *v;
  };
  const bool pals = !set("MPI_LOCALRANKID") && set("PMI_LOCAL_RANK");
  for (Vars v : {Vars{Launcher::mpirun, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                      "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"},
                 Vars{Launcher::mpiexec, "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID",
                      "MPI_LOCALNRANKS"},
                 Vars{Launcher::srun, "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID",
                      "SLURM_NTASKS_PER_NODE"}}) {
    const char* rank = env(v.rank);
    if (v.launcher == Launcher::mpiexec) {
      if (!pmi_mpiexec(env)) continue;  // (PMI_SIZE without PMI_RANK too: it is named)
      if (pals) {
        v.local = "PMI_LOCAL_RANK";
        v.local_size = "PMI_LOCAL_SIZE";
      }
    } else if (!rank || !*rank) {
      continue;
    }
    // An allocation's own shell (an sbatch script, salloc) has SLURM_PROCID 0 and the job's
    // SLURM_NTASKS too, but no step: it is one process, not rank 0 of the job's tasks. srun
    // sets SLURM_STEP_NUM_TASKS in every task of the step it starts.
    const char* step = env("SLURM_STEP_NUM_TASKS");
    if (v.launcher == Launcher::srun && (!step || !*step)) continue;
    info.launcher = v.launcher;
    const char* l = launcher_name(info.launcher);
    const std::string because = std::string(v.rank) + " is";
    info.rank = required(env, v.rank, l, rank && *rank ? "it is set" : "PMI_SIZE is");
    info.world_size = required(env, v.size, l, because.c_str());
    // (`mpiexec -n 1` may not say the local rank of its one process)
    info.local_rank = v.launcher == Launcher::mpiexec && info.world_size == 1
                          ? int_var(env, v.local, l).value_or(0)
                          : required(env, v.local, l, because.c_str());
    // srun: the step's tasks per node (SLURM_STEP_TASKS_PER_NODE; the job's
    // SLURM_NTASKS_PER_NODE where a step does not say) in Slurm's form, "8" on one node, "8(x4)"
    // on four, "8(x3),4" where they differ: the count where every node has the same ("8"),
    // else unknown (0), as for an unset variable.
    const char* local_size = v.local_size;
    if (v.launcher == Launcher::srun) {
      const char* step_per_node = env("SLURM_STEP_TASKS_PER_NODE");
      if (step_per_node && *step_per_node) local_size = "SLURM_STEP_TASKS_PER_NODE";
      info.local_world_size = slurm_uniform_tasks_per_node(env(local_size));
    } else {
      info.local_world_size = int_var(env, local_size, l).value_or(0);
    }
    check_ranks(info, v.rank, v.size, v.local);
    if (info.launcher != Launcher::mpirun && info.world_size > 1) {
      // srun and mpiexec start the ranks themselves; MPI can wire srun's up only through its
      // PMI plugin, and an mpiexec's not at all (nuri's MPI is Open MPI). With MASTER_ADDR (and
      // MASTER_PORT) set they meet over TCP instead, as torchrun-style ranks do;
      // make_communicator says what to do where neither is there.
      if (const char* addr = env("MASTER_ADDR"); addr && *addr) {
        rendezvous(env, info, "MASTER_ADDR is");
      }
      const char* pmix = env("PMIX_RANK");
      const char* pmi2 = env("PMI_RANK");
      info.srun_pmi = info.launcher == Launcher::srun && ((pmix && *pmix) || (pmi2 && *pmi2));
    }
    return info;
  }
  return info;
}

int device_for_local_rank(const LaunchInfo& info, int device_count) {
  NURI_CHECK(device_count > 0, "rank ", info.rank, " (", launcher_name(info.launcher),
             ") sees no CUDA device; use the cpu backend, or check CUDA_VISIBLE_DEVICES");
  if (device_count == 1) return 0;
  NURI_CHECK(info.local_rank < device_count, "local rank ", info.local_rank, " of rank ",
             info.rank, " (", launcher_name(info.launcher), ") has no device of its own: ",
             device_count, " visible on this node, one per process; start at most ",
             device_count, " processes per node, or give each its own CUDA_VISIBLE_DEVICES");
  return info.local_rank;
}

std::string backend_for_rank(const std::string& backend, const LaunchInfo& info) {
  if (backend != "cuda") return backend;
  const int device = device_for_local_rank(info, int(cuda_devices().size()));
  return "cuda:" + std::to_string(device);
}

}  // namespace nuri
