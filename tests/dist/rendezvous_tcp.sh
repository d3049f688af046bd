#!/usr/bin/env bash
# The TCP rendezvous turns away what is not a rank of its job and goes on (a port scan, a health
# check, a rank of another job given the same MASTER_PORT), rather than stopping the job.
#   rendezvous_tcp.sh MPI_FAULT_BINARY
# Rank 0 of a 2-rank job (NURI_JOB_ID=a) listens; then its port gets 45 bytes of HTTP, a
# connection closed without a word, one held open without a word (rank 0 gives it 10 s), and
# rank 1 of job b, which must fail saying that rank 0 turned it away as another job's; then job
# a's rank 1 joins and both ranks all_reduce.
set -uo pipefail
bin=$1
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
trap '[[ -n ${KEEP:-} ]] || rm -rf "$dir"' EXIT
fail() {
  printf 'FAIL: %s\n' "$*"
  for f in "$dir"/*; do printf -- '--- %s ---\n' "${f##*/}"; cat "$f"; done
  exit 1
}
export WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port NURI_COMM_TIMEOUT_S=20
RANK=0 LOCAL_RANK=0 NURI_JOB_ID=a timeout 60 "$bin" meet 20 >"$dir/rank0" 2>&1 &
rank0=$!
for ((i = 0; i < 100; ++i)); do
  { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null && break
  kill -0 "$rank0" 2>/dev/null || fail "rank 0 ended before it listened"
  sleep 0.1
done
((i < 100)) || fail "rank 0 did not listen on $port"
printf 'GET / HTTP/1.0\r\nHost: nuri.test\r\nX-Pad: 0\r\n\r\n' >&3
exec 3>&-
exec 3<>"/dev/tcp/127.0.0.1/$port"
exec 3>&-
exec 4<>"/dev/tcp/127.0.0.1/$port"  # silent, held open until the end
start=$(date +%s%N)
RANK=1 LOCAL_RANK=1 NURI_JOB_ID=b timeout 60 "$bin" meet 20 >"$dir/intruder" 2>&1
rc=$?
ms=$((($(date +%s%N) - start) / 1000000))
((rc != 0 && rc != 124)) || fail "job b's rank 1 exited $rc"
((ms < 15000)) || fail "job b's rank 1 took $ms ms to be turned away (10 s of them the silent one's)"
grep -q "tcp rendezvous: rank 0 at 127.0.0.1:$port turned this rank away as a rank of another job" "$dir/intruder" ||
  fail "job b's rank 1 did not say it was turned away"
RANK=1 LOCAL_RANK=1 NURI_JOB_ID=a timeout 60 "$bin" meet 20 >"$dir/rank1" 2>&1
rc1=$?
wait "$rank0"
rc0=$?
exec 4>&-
((rc0 == 0 && rc1 == 0)) || fail "job a's ranks exited $rc0 and $rc1"
# The all_reduce summed element 1 (1.0) over both ranks.
for r in 0 1; do
  grep -q "rank $r: met 2 ranks, sum 2" "$dir/rank$r" || fail "rank $r did not complete the all_reduce"
done
n_scan=$(grep -c "turned away a connection to 127.0.0.1:$port from 127.0.0.1: it did not say it was a nuri rank" "$dir/rank0")
n_job=$(grep -c "turned away a connection to 127.0.0.1:$port from 127.0.0.1: a rank of another job" "$dir/rank0")
((n_scan == 3 && n_job == 1)) || fail "rank 0 warned of $n_scan strays and $n_job other ranks (want 3 and 1)"
grep -q "a rank of another job (its NURI_JOB_ID differs" "$dir/rank0" || fail "rank 0 did not name NURI_JOB_ID"
echo PASS
