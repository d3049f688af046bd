#!/usr/bin/env bash
# A one-node Slurm cluster on loopback for the tests of label `slurm` (tests/CMakeLists.txt): the
# real slurmctld, slurmd and srun of Debian's packages, with everything they keep (config, state,
# logs, pid files) under DIR, so it touches nothing of the machine's own Slurm setup.
#   slurm_local.sh start DIR   writes DIR/slurm.conf, starts both daemons, waits until the node
#                              is idle; afterwards `SLURM_CONF=DIR/slurm.conf srun ...` runs there
#   slurm_local.sh stop DIR    ends the daemons (and any job step still running)
# The node claims 8 CPUs whatever the machine has (SlurmdParameters=config_overrides), so 4 tasks
# fit on CI's 2 cores; no munge daemon is needed (AuthType=auth/none: loopback, one user).
set -euo pipefail
[[ $# -eq 2 && ($1 == start || $1 == stop) ]] || { echo "usage: slurm_local.sh start|stop DIR" >&2; exit 2; }
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
conf=$dir/slurm.conf
sbin() { command -v "$1" || { [[ -x /usr/sbin/$1 ]] && echo "/usr/sbin/$1"; } || true; }

stop() {
  local f pid
  for f in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    [[ -f $f ]] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
  # slurmstepd of a step that outlived its srun (a test killed by its timeout)
  pkill -KILL -f "slurmstepd.*$dir" 2>/dev/null || true
}

if [[ $action == stop ]]; then
  stop
  echo "slurm_local: stopped the cluster of $dir"
  exit 0
fi

ctld=$(sbin slurmctld) slurmd=$(sbin slurmd)
[[ -n $ctld && -n $slurmd ]] && command -v srun >/dev/null && command -v sinfo >/dev/null || {
  echo "slurm_local: slurmctld, slurmd, srun and sinfo are needed:" \
       "apt-get install slurmctld slurmd slurm-client (scripts/setup.sh --test does)" >&2
  exit 1
}
stop  # leftovers of an earlier run in the same DIR
# One try: fresh ports, the config, both daemons, then up to 20 s for the node to be idle. The
# ports are free when chosen but another process may take one before a daemon binds it: then
# the cluster is stopped and started again on others, up to three times.
start() {
  rm -rf "$dir/state" "$dir/spool" "$dir/log"
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  read -r ctld_port slurmd_port < <(python3 - <<'PY'
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))
PY
  )
  host=$(hostname -s)
  user=$(id -un)
  cat >"$conf" <<EOF
# Written by scripts/slurm_local.sh for nuri's tests; removed with the build tree.
ClusterName=nuri-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/none
CredType=cred/none
SlurmUser=$user
SlurmdUser=$user
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
NodeName=$host NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
  export SLURM_CONF=$conf
  "$ctld" -f "$conf" </dev/null >"$dir/log/slurmctld.out" 2>&1
  "$slurmd" -f "$conf" </dev/null >"$dir/log/slurmd.out" 2>&1
  for _ in $(seq 100); do
    state=$(sinfo -h -o '%T' 2>/dev/null || true)
    [[ $state == idle ]] && { echo "slurm_local: node $host idle (SLURM_CONF=$conf)"; return 0; }
    sleep 0.2
  done
  echo "slurm_local: the node did not come up (sinfo: '${state:-no answer}'); logs:" >&2
  tail -n 20 "$dir"/log/* >&2
  stop
  return 1
}
for try in 1 2 3; do
  start && exit 0
  ((try < 3)) && echo "slurm_local: starting again on other ports (try $((try + 1)) of 3)" >&2
done
exit 1
