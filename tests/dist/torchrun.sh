#!/usr/bin/env bash
# Starts a job the way torchrun does, without torchrun: NP copies of a program on this host, each
# with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1 and a free
# MASTER_PORT, so nuri's ranks meet over TCP (no MPI involved). Same shape as mpirun:
#   torchrun.sh -np NP PROGRAM [ARGS...]
# Rank 0's output goes to stdout, the other ranks' to stderr with a "[rank r]" prefix; the exit
# status is the status of the first rank to fail (the others are then ended, as torchrun does), 0
# when all succeed. Each rank's exit status is printed last, on stderr.
# TORCHRUN_ENV=hydra gives each rank the variables of Hydra's mpiexec (MPICH, Intel MPI) inside a
# one-node Slurm allocation instead: PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS, the
# Slurm step of Hydra's one proxy (SLURM_PROCID 0 of SLURM_STEP_NUM_TASKS 1), and the
# MASTER_ADDR/MASTER_PORT the job exports.
set -uo pipefail
[[ ${1:-} == -np && $# -ge 3 ]] || { echo "usage: torchrun.sh -np NP PROGRAM [ARGS...]" >&2; exit 2; }
np=$2
shift 2
# One start of the job; sets status. The port is free when chosen, but another process can take
# it (or the kernel still hold it from a closed connection) before rank 0 listens: then the job
# starts once more.
run_job() {
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  dir=$(mktemp -d)
  pids=()
  for ((r = 0; r < np; ++r)); do
    if [[ ${TORCHRUN_ENV:-} == hydra ]]; then
      launcher=(env PMI_RANK=$r PMI_SIZE=$np MPI_LOCALRANKID=$r MPI_LOCALNRANKS=$np
                SLURM_PROCID=0 SLURM_STEP_NUM_TASKS=1 SLURM_LOCALID=0)
    else
      launcher=(env RANK=$r WORLD_SIZE=$np LOCAL_RANK=$r LOCAL_WORLD_SIZE=$np)
    fi
    MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "${launcher[@]}" "$@" >"$dir/out.$r" 2>&1 &
    pids+=($!)
  done
  # As torchrun does: when a rank fails, the others are ended (SIGTERM, after TORCHRUN_GRACE_S
  # seconds, default 5, to fail on their own) so nothing is left hanging.
  grace=${TORCHRUN_GRACE_S:-5}
  unset rank_of
  declare -gA rank_of
  for ((r = 0; r < np; ++r)); do rank_of[${pids[$r]}]=$r; done
  status=0
  live=("${pids[@]}")
  while ((${#live[@]} > 0)); do
    done_pid=
    wait -n -p done_pid "${live[@]}" 2>/dev/null
    rc=$?
    if [[ -z ${done_pid:-} ]]; then
      # bash can reap a rank on its own (a SIGKILLed one, while the reaper below runs), and
      # wait -n then calls it no job: take the one that is gone, with the status bash kept.
      for p in "${live[@]}"; do
        if ! kill -0 "$p" 2>/dev/null; then
          done_pid=$p
          wait "$p" 2>/dev/null
          rc=$?
          break
        fi
      done
      [[ -n $done_pid ]] || break
    fi
    r=${rank_of[$done_pid]}
    printf '%s\n' "rank $r exited $rc" >"$dir/rc.$r"
    rest=()
    for p in "${live[@]}"; do [[ $p == "$done_pid" ]] || rest+=("$p"); done
    live=("${rest[@]}")
    if ((rc != 0 && status == 0)); then
      status=$rc
      ((${#live[@]} > 0)) && { sleep "$grace"; kill -TERM "${live[@]}"; } >/dev/null 2>&1 &
      reaper=$!
    fi
  done
  [[ -n ${reaper:-} ]] && kill "$reaper" 2>/dev/null
  reaper=
}
dir=
run_job "$@"
if ((status != 0)) && grep -qs "cannot listen on MASTER_PORT" "$dir"/out.*; then
  echo "torchrun.sh: port $port was taken before rank 0 listened on it; starting again" >&2
  rm -rf "$dir"
  run_job "$@"
fi
cat "$dir/out.0"
for ((r = 1; r < np; ++r)); do sed "s/^/[rank $r] /" "$dir/out.$r" >&2; done
for ((r = 0; r < np; ++r)); do cat "$dir/rc.$r" >&2 2>/dev/null; done
rm -rf "$dir"
exit $status
