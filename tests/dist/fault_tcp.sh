#!/usr/bin/env bash
# A torchrun-style job (TCP communicator) with a broken peer ends, with the failed operation
# named, within the timeout (issue #9).
#   fault_tcp.sh TORCHRUN_SH MPI_FAULT_BINARY hang|kill
#   hang  rank 1 sleeps instead of joining the second all_reduce: ranks 0 and 2 time out after 2 s
#         naming the all_reduce and exit with status 3
#   kill  rank 1 dies of SIGKILL: ranks 0 and 2 see its (or each other's) connection close at
#         once, name the all_reduce and exit with status 3
#   pp-hang, pp-kill  the same for a pipeline of 3 stages (issue #23): stages 0 and 2 name the
#         transfer from stage 1 they waited for, and exit with status 3
#   mismatch  rank 1 all_reduces 512 elements where ranks 0 and 2 all_reduce 1024: rank 1 (which
#         receives rank 0's frame) and rank 2 (rank 1's) name both sides at once; all exit 3
#   order  rank 1 calls broadcast where the others all_reduce: rank 1 names both; all exit 3
#   interrupt  rank 1 sleeps as in hang, the timeout is 60 s, and half a second into the wait
#         ranks 0 and 2 have their wait-interrupt flag set (Python's Ctrl-C handler's): they stop
#         at once saying so, and exit with status 3
set -uo pipefail
launcher=$1 bin=$2 mode=$3
limit=2
[[ $mode == interrupt ]] && limit=60
start=$(date +%s%N)
out=$(timeout 60 bash "$launcher" -np 3 "$bin" "$mode" "$limit" 2>&1)
rc=$?
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
fail() { printf 'FAIL (%s): %s\n--- output ---\n%s\n' "$mode" "$*" "$out"; exit 1; }
echo "$out" | grep -v Killed
printf '%s: launcher exit %d after %d ms\n' "$mode" "$rc" "$elapsed_ms"
((rc != 124)) || fail "the job hung (killed by timeout 60)"
((elapsed_ms < 20000)) || fail "took ${elapsed_ms} ms; the timeout is 2 s"
# hang: the survivors time out at about the same moment; the first to give up closes its
# connections, so the other may report that instead of its own timeout (both name the
# all_reduce). At least one must have seen the timeout, and neither may blame the hung rank 1
# for closing a connection it never closed.
case $mode in
  hang) why="(did not complete within 2 s|failed: rank [02] closed the connection)" ;;
  kill) why="failed: rank [0-9] closed the connection" ;;
  pp-hang) why="did not complete within 2 s" ;;
  pp-kill) why="failed: (rank 1 closed the connection|(receiving from|sending to) rank 1 failed: (Connection reset by peer|Broken pipe))" ;;
  mismatch | order) why= ;;
  interrupt) why="(failed: interrupted|failed: rank [02] closed the connection)" ;;
  *) echo "unknown mode $mode"; exit 2 ;;
esac
if [[ $mode == mismatch || $mode == order ]]; then
  # Well before the 2 s timeout: the frames are compared as they arrive.
  ((elapsed_ms < 10000)) || fail "took ${elapsed_ms} ms"
  for r in 0 1 2; do
    grep -q "^rank $r exited 3$" <<<"$out" || fail "rank $r did not exit with status 3"
  done
  ours="all_reduce #3 \(f32, 1024 elements, sum\)"
  if [[ $mode == mismatch ]]; then
    theirs="all_reduce #3 \(f32, 512 elements, sum\)"
    grep -Eq "rank 1: all_reduce \(f32, 512 elements, sum\) on rank 1 of 3 \(tcp\) failed with rank 0: it sent $ours where this rank is in $theirs: the ranks called different operations" <<<"$out" ||
      fail "rank 1 did not name both all_reduces"
    grep -Eq "rank 2: all_reduce \(f32, 1024 elements, sum\) on rank 2 of 3 \(tcp\) failed with rank 1: it sent $theirs where this rank is in $ours" <<<"$out" ||
      fail "rank 2 did not name both all_reduces"
  else
    grep -Eq "rank 1: broadcast \(f32, 1024 elements\) on rank 1 of 3 \(tcp\) failed with rank 0: it sent $ours where this rank is in broadcast #3 \(f32, 1024 elements\)" <<<"$out" ||
      fail "rank 1 did not name the all_reduce and its broadcast"
  fi
  echo PASS
  exit 0
fi
if [[ $mode == pp-* ]]; then
  # Each survivor names its transfer with stage 1: a receive, or (stage 0 running ahead in 1F1B)
  # the send of a later micro-batch's activations when stage 1 died first.
  transfer="(receiving micro-batch [0-9]+'s (gradient|activations) from|sending micro-batch [0-9]+'s (gradient|activations) to) stage 1 \(pipeline rank 1\) failed: (recv|send) \(f32, [0-9]+ elements, peer 1\)"
  for r in 0 2; do
    grep -Eq "rank $r: pipeline stage $r \(pipeline rank $r\): $transfer on rank $r of 3 \(tcp\) $why" <<<"$out" ||
      fail "stage $r did not report the transfer from stage 1 ($why)"
    grep -q "^rank $r exited 3$" <<<"$out" || fail "rank $r did not exit with status 3"
  done
  echo PASS
  exit 0
fi
for r in 0 2; do
  grep -Eq "rank $r: all_reduce \(f32, 1024 elements, sum\) on rank $r of 3 \(tcp\) $why" <<<"$out" ||
    fail "rank $r did not report the all_reduce ($why)"
  grep -q "^rank $r exited 3$" <<<"$out" || fail "rank $r did not exit with status 3"
done
if [[ $mode == hang ]]; then
  grep -q "did not complete within 2 s" <<<"$out" || fail "no rank reported the timeout"
fi
if [[ $mode == interrupt ]]; then
  ((elapsed_ms < 15000)) || fail "took ${elapsed_ms} ms to stop after the interrupt"
  grep -q "failed: interrupted" <<<"$out" || fail "no rank reported the interrupt"
fi
echo PASS
