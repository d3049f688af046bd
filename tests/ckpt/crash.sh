#!/usr/bin/env bash
# Fault injection (issue #10): nuri-train is killed with SIGKILL at crash points spread over its
# checkpoint writes (NURI_CKPT_CRASH_AT=k: the k-th chunk written, fsync, rename or directory
# sync of the process); every time, the next start resumes from the last committed checkpoint and
# the run ends with the same final training and validation loss as a run never interrupted.
#   crash.sh NURI_TRAIN_BINARY [POINTS (default 24)]
set -uo pipefail
bin=$1 points=${2:-24}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export OMP_NUM_THREADS=1
args=(--model gpt2-tiny --steps 8 --seq-len 64 --micro-batch 2 --max-new-tokens 0 --eval-every 0 --log-every 1
      --save-every 2 --keep 2)
val() { grep -oP 'done in .*: val loss \K[0-9.]+' <<<"$1"; }
last() { grep -oP 'step +8/8 \| loss \K[0-9.]+' <<<"$1"; }

# The uninterrupted run, counting the crash points of its four saves.
ref=$(NURI_CKPT_CRASH_AT=0 "$bin" "${args[@]}" --ckpt-dir "$dir/ref" 2>&1) || { echo "$ref"; exit 1; }
want=$(val "$ref") want_last=$(last "$ref")
total=$(grep -oP 'checkpoint crash points passed: \K[0-9]+' <<<"$ref")
[[ -n $want && -n $want_last && -n $total && $total -ge $points ]] ||
  { echo "$ref"; echo "FAIL: no reference ($want) or too few crash points ($total)"; exit 1; }
echo "reference: step 8 loss $want_last, final val loss $want; $total crash points in 4 saves"

status=0 resumed=0
for ((i = 0; i < points; ++i)); do
  k=$((1 + i * (total - 1) / (points - 1)))  # spread over [1, total]
  run="$dir/run$k"
  out=$(NURI_CKPT_CRASH_AT=$k "$bin" "${args[@]}" --ckpt-dir "$run" 2>&1)
  rc=$?
  if ((rc != 137)); then
    echo "$out" | tail -n 5
    echo "FAIL: crash point $k: exit $rc, expected death by SIGKILL (137)"
    status=1
    continue
  fi
  out=$("$bin" "${args[@]}" --ckpt-dir "$run" 2>&1)
  rc=$?
  from=$(grep -oP 'resumed from \S+/\Kstep-[0-9]+' <<<"$out" || echo "the start")
  [[ $from != "the start" ]] && ((resumed++))
  # The final validation loss always; step 8's training loss when the restart took step 8
  # (a restart from step 8's checkpoint only evaluates).
  got=$(val "$out") got_last=$(last "$out")
  if ((rc != 0)) || [[ "$got" != "$want" ]] || [[ -n $got_last && $got_last != "$want_last" ]] ||
     [[ -z $got_last && $from != step-00000008 ]]; then
    echo "$out" | tail -n 8
    echo "FAIL: killed at crash point $k, restarted from $from: exit $rc, val $got, step 8 $got_last"
    status=1
  else
    echo "killed at crash point $k/$total; restarted from $from; same final losses"
  fi
done
((resumed > 0)) || { echo "FAIL: no restart found a checkpoint to resume"; status=1; }
((status == 0)) && echo "PASS: $points crash points, $resumed restarts resumed from a checkpoint"
exit $status
