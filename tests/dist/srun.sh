#!/usr/bin/env bash
# srun in mpirun's shape, for the tests of label `slurm` (SLURM_CONF points at the cluster of
# scripts/slurm_local.sh):
#   srun.sh [--tcp] -np NP PROGRAM [ARGS...]
# Without --tcp the tasks meet over MPI through srun's PMIx plugin (srun --mpi=pmix), as on a
# cluster whose Open MPI was built for it; with --tcp srun wires up nothing (--mpi=none) and the
# tasks meet over TCP at MASTER_ADDR=127.0.0.1 and a free MASTER_PORT. The exit status is srun's.
set -uo pipefail
mpi=pmix
if [[ ${1:-} == --tcp ]]; then
  mpi=none
  export MASTER_ADDR=127.0.0.1
  MASTER_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  export MASTER_PORT
  shift
fi
[[ ${1:-} == -np && $# -ge 3 ]] || { echo "usage: srun.sh [--tcp] -np NP PROGRAM [ARGS...]" >&2; exit 2; }
[[ -n ${SLURM_CONF:-} ]] || { echo "srun.sh: SLURM_CONF is not set (scripts/slurm_local.sh start DIR)" >&2; exit 2; }
np=$2
shift 2
exec srun --mpi="$mpi" --ntasks="$np" --time=5 --quiet "$@"
