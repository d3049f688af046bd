#!/usr/bin/env bash
# Preemption (issue #10): a 2-rank nuri-train job (started torchrun-style) gets SIGTERM on rank 1
# mid-run; both ranks stop at the same step boundary, write one checkpoint together and exit with
# 75 ("checkpointed, requeue me"); the next start resumes it and ends with the same training and
# validation loss as the job never interrupted. Then the wall-clock limit: a run with
# --time-limit stops the same way before the limit; and Ctrl-C, which stops it with status 130.
#   preempt.sh TORCHRUN_SH NURI_TRAIN_BINARY
set -uo pipefail
launcher=$1 bin=$2
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$dir"' EXIT
export OMP_NUM_THREADS=1
args=(--model gpt2-tiny --steps 60 --seq-len 64 --micro-batch 2 --max-new-tokens 0 --eval-every 0 --log-every 1)
summary() {
  printf '%s %s' "$(grep -oP 'step +60/60 \| loss \K[0-9.]+' <<<"$1")" \
    "$(grep -oP 'done in .*: val loss \K[0-9.]+' <<<"$1")"
}
fail() { echo "FAIL: $*"; exit 1; }

ref=$(bash "$launcher" -np 2 "$bin" "${args[@]}" 2>&1) || { echo "$ref"; fail "reference run"; }
want=$(summary "$ref")
echo "uninterrupted 2-rank run: final loss, val loss = $want"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
for r in 0 1; do
  RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    "$bin" "${args[@]}" --ckpt-dir "$dir/ck" >"$dir/out$r" 2>&1 &
  pids+=($!)
done
for ((i = 0; i < 600; ++i)); do  # until rank 0 has logged step 10 (at most 60 s)
  grep -q 'step    10/60' "$dir/out0" && break
  sleep 0.1
done
grep -q 'step    10/60' "$dir/out0" || { cat "$dir/out0"; fail "the job did not reach step 10"; }
kill -TERM "${pids[1]}"
wait "${pids[0]}"; rc0=$?
wait "${pids[1]}"; rc1=$?
pids=()
out0=$(cat "$dir/out0")
stopped=$(grep -oP 'stopped at step \K[0-9]+' <<<"$out0")
echo "SIGTERM to rank 1 after step 10: ranks exited $rc0 and $rc1, stopped at step $stopped"
((rc0 == 75 && rc1 == 75)) || { echo "$out0"; cat "$dir/out1"; fail "expected exit status 75 on both ranks"; }
grep -q "stopped at step $stopped (another rank was signalled): checkpointed" <<<"$out0" ||
  { echo "$out0"; fail "rank 0 did not say why it stopped"; }
((stopped >= 10 && stopped < 60)) || fail "stopped at step '$stopped'"

# The resumed job also saves asynchronously every 10 steps (the commit waits for both ranks).
out=$(bash "$launcher" -np 2 "$bin" "${args[@]}" --ckpt-dir "$dir/ck" --save-every 10 \
      --async-save 2>&1) ||
  { echo "$out"; fail "the resumed job failed"; }
grep -q "resumed from $dir/ck/step-$(printf '%08d' "$stopped"): step $stopped" <<<"$out" ||
  { echo "$out"; fail "the next start did not resume step $stopped"; }
got=$(summary "$out")
echo "resumed job: final loss, val loss = $got; $(grep -c 'committed' <<<"$out") checkpoints committed"
[[ "$got" == "$want" ]] || fail "resumed job ends at '$got', the uninterrupted one at '$want'"

# The wall-clock limit: one process, far more steps than fit in 3 s.
out=$("$bin" "${args[@]}" --steps 100000 --ckpt-dir "$dir/tl" --time-limit 3 2>&1)
rc=$?
((rc == 75)) && grep -q 'stopped at step [0-9]* (time limit): checkpointed' <<<"$out" ||
  { echo "$out" | tail -n 5; fail "--time-limit 3: exit $rc"; }
echo "--time-limit 3: $(grep -oP 'stopped at step [0-9]+ \(time limit\)' <<<"$out"), exit 75"
# The limit counts from the run's start: one its startup alone passes stops the run before
# its first step, and the checkpoint it resumed stays the newest; not with 75 ("requeue me"),
# since every allocation would stop there again, but as a failure saying to raise the limit.
tl_step=$(grep -oP 'stopped at step \K[0-9]+' <<<"$out")
out=$("$bin" "${args[@]}" --steps 100000 --ckpt-dir "$dir/tl" --time-limit 0.01 2>&1)
rc=$?
((rc == 1)) && grep -q "the time limit (0 s) leaves no step: the startup took .*raise --time-limit, since every allocation would stop here again; the checkpoint it resumed (step $tl_step) stays the newest" <<<"$out" ||
  { echo "$out" | tail -n 5; fail "--time-limit 0.01: exit $rc"; }
echo "--time-limit 0.01: stopped before its first step, exit 1 (raise the limit)"

# Ctrl-C (SIGINT; the process started with job control, so a background job not ignoring it):
# the run stops at the next step boundary, checkpointed, with exit status 130.
set -m
"$bin" "${args[@]}" --steps 100000 --ckpt-dir "$dir/int" >"$dir/int.out" 2>&1 &
pids=($!)
set +m
for ((i = 0; i < 600; ++i)); do
  grep -qE 'step +5/100000' "$dir/int.out" && break
  sleep 0.1
done
kill -INT "${pids[0]}"
wait "${pids[0]}"; rc=$?
pids=()
int_step=$(grep -oP 'interrupted at step \K[0-9]+' "$dir/int.out")
((rc == 130)) &&
  grep -q "interrupted at step $int_step/100000 after .*: checkpointed" "$dir/int.out" &&
  [[ $(cat "$dir/int/latest") == "step-$(printf '%08d' "$int_step")" ]] ||
  { tail -n 5 "$dir/int.out"; fail "Ctrl-C: exit $rc"; }
echo "Ctrl-C after step 5: interrupted at step $int_step, checkpointed, exit 130"

# Two ranks with --ckpt-dir ck, rank 0 started in $dir and rank 1 in $dir/elsewhere: both must
# stop with the settings' error status before a step, each naming what differs (`want`).
apart() {  # apart NAME WANT WHAT
  local name=$1 want=$2 what=$3 port r
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  for r in 0 1; do
    (cd "$dir" && [[ $r == 1 ]] && cd elsewhere
     RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
       exec "$bin" "${args[@]}" --ckpt-dir ck >"$dir/$name$r" 2>&1) &
    pids+=($!)
  done
  wait "${pids[0]}"; rc0=$?
  wait "${pids[1]}"; rc1=$?
  pids=()
  for r in 0 1; do
    grep -qF "$want" "$dir/$name$r" && ! grep -q 'step  *1/60' "$dir/$name$r" ||
      { cat "$dir/$name$r"; echo "want: $want"; fail "rank $r: no error naming $what"; }
  done
  ((rc0 == 2 && rc1 == 2)) || fail "$what: ranks exited $rc0 and $rc1, not 2"
}

# A checkpoint directory the ranks do not share (a relative --ckpt-dir, each rank started in
# another directory): rank 0 finds the checkpoints above, rank 1 none. Both stop before a
# step, naming the ranks, instead of training other weights.
mkdir -p "$dir/elsewhere"
apart unshared "checkpoint.dir ck: rank 0 found a checkpoint to resume and rank 1 found none" \
  "the unshared checkpoint directory"
echo "a checkpoint directory only rank 0 sees: both ranks exit 2 before a step, naming the ranks"

# Each rank sees checkpoints, but rank 1 another newest one (here the time-limit run's, as a
# stale listing could show): both stop before a step, naming each rank's step.
rm -rf "$dir/elsewhere/ck" && cp -r "$dir/tl" "$dir/elsewhere/ck"
ours=$(basename "$(ls -d "$dir"/ck/step-* | tail -n 1)")
theirs=$(basename "$(ls -d "$dir"/elsewhere/ck/step-* | tail -n 1)")
apart stale "checkpoint.dir ck: the ranks found other newest checkpoints (steps \
$((10#${ours#step-})), $((10#${theirs#step-})), by rank)" "the steps"
echo "ranks that find other newest checkpoints: both exit 2 before a step, naming the steps"
echo PASS
