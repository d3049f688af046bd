#!/usr/bin/env bash
# Preemption of a front end's 2-rank job, and its resume on another allocation of 1 rank (issue
# #20): SIGTERM to rank 1 mid-run makes both ranks stop at the same step boundary, commit one
# checkpoint and exit 75; the restart as one process, with the same command (--global-batch 4:
# 1 micro-batch of 2 a rank on 2 ranks, 2 on one), resumes it, and every step's loss and every
# validation loss equal the uninterrupted 2-rank run's: bit for bit up to the checkpoint (the
# same run), within 1e-5 relative after it (one process sums the batch in another order).
# Then a signal to rank 1 during the last step (no stop is polled after it): both ranks agree
# after the final checkpoint, stop with 75 before the model file, and a restart writes it
# without training a step again.
#   preempt_resume.sh TORCHRUN_SH COMMAND...   (COMMAND: nuri-train, or PYTHON -m nuri train)
set -uo pipefail
launcher=$1
shift
cmd=("$@")
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; kill -CONT "${pids[@]}" 2>/dev/null; rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
export OMP_NUM_THREADS=1
args=(--model gpt2-tiny --steps 40 --seq-len 64 --max-new-tokens 0 --eval-every 20 --eval-batches 4
      --log-every 1 --micro-batch 2 --global-batch 4)

bash "$launcher" -np 2 "${cmd[@]}" "${args[@]}" --out "$dir/ref" \
  >"$dir/ref.out" 2>&1 || { cat "$dir/ref.out"; fail "the uninterrupted 2-rank run"; }

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
for r in 0 1; do
  RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    "${cmd[@]}" "${args[@]}" --ckpt-dir "$dir/ck" --out "$dir/run" \
    >"$dir/out$r" 2>&1 &
  pids+=($!)
done
for ((i = 0; i < 1200; ++i)); do  # until rank 0 has logged step 10 (at most 120 s)
  grep -q 'step    10/40' "$dir/out0" && break
  sleep 0.1
done
grep -q 'step    10/40' "$dir/out0" || { cat "$dir/out0"; fail "the job did not reach step 10"; }
kill -TERM "${pids[1]}"
wait "${pids[0]}"; rc0=$?
wait "${pids[1]}"; rc1=$?
pids=()
stopped=$(grep -oP 'stopped at step \K[0-9]+' "$dir/out0")
echo "SIGTERM to rank 1 after step 10: ranks exited $rc0 and $rc1, stopped at step $stopped"
((rc0 == 75 && rc1 == 75)) || { cat "$dir/out0" "$dir/out1"; fail "expected exit status 75 on both ranks"; }
grep -q "stopped at step $stopped (another rank was signalled): checkpointed" "$dir/out0" ||
  { cat "$dir/out0"; fail "rank 0 did not say why it stopped"; }
commits=$(grep -c 'committed' "$dir/out0")
((commits == 1)) || { cat "$dir/out0"; fail "$commits checkpoints committed, expected one"; }
[[ $(cat "$dir/ck/latest") == "step-$(printf '%08d' "$stopped")" ]] || fail "ck/latest is not step $stopped"

"${cmd[@]}" "${args[@]}" --ckpt-dir "$dir/ck" --out "$dir/run" >"$dir/resumed.out" 2>&1 ||
  { cat "$dir/resumed.out"; fail "the resumed one-process run failed"; }
grep -q "resumed from $dir/ck/step-$(printf '%08d' "$stopped"): step $stopped" "$dir/resumed.out" ||
  { cat "$dir/resumed.out"; fail "the one-process restart did not resume step $stopped"; }
grep -q "steps of 2 x 64 tokens (accum 2, from global batch 4)" "$dir/resumed.out" ||
  { cat "$dir/resumed.out"; fail "the one-process restart did not take 2 micro-batches a step"; }

python3 - "$dir" "$stopped" <<'PY' || exit 1
import json, sys
from pathlib import Path
d, stopped = Path(sys.argv[1]), int(sys.argv[2])
def rows(run):
    return [json.loads(l) for l in (d / run / "metrics.jsonl").read_text().splitlines()]
ref, run = rows("ref"), rows("run")
assert [r["step"] for r in run] == list(range(1, 41)), [r["step"] for r in run]
worst = 0.0
for a, b in zip(ref, run):
    for key in ("loss", "val_loss"):
        if key not in a:
            continue
        if a["step"] <= stopped:
            assert a[key] == b[key], (a["step"], key, a[key], b[key])
        else:
            rel = abs(a[key] - b[key]) / abs(a[key])
            worst = max(worst, rel)
            assert rel <= 1e-5, (a["step"], key, a[key], b[key])
print(f"PASS: stopped at step {stopped} on 2 ranks, resumed on 1: steps 1-{stopped} bit for bit, "
      f"{stopped + 1}-40 within {worst:.1e} relative of the uninterrupted run "
      f"(final val loss {run[-1]['val_loss']:.6f} vs {ref[-1]['val_loss']:.6f})")
PY

# The last step: rank 0 stops itself (SIGSTOP, NURI_TEST_STOP_AFTER_STEP) after the stop poll of
# step 5 of 6, to which rank 1 gave its flag (read before the collective) before SIGTERM reaches
# it; rank 1 then waits in step 6's collectives for rank 0. Only the collective check after the
# final checkpoint can see the signal.
args=(--model gpt2-tiny --steps 6 --seq-len 64 --max-new-tokens 0 --eval-every 0 --eval-batches 2
      --log-every 1 --micro-batch 2 --global-batch 4 --ckpt-dir "$dir/ck6" --out "$dir/run6")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
for r in 0 1; do
  env $( ((r == 0)) && echo NURI_TEST_STOP_AFTER_STEP=5) RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r \
    MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "${cmd[@]}" "${args[@]}" >"$dir/last$r" 2>&1 &
  pids+=($!)
done
for ((i = 0; i < 1200; ++i)); do  # until rank 0 has stopped itself (at most 120 s)
  [[ $(awk '{print $3}' "/proc/${pids[0]}/stat" 2>/dev/null) == T ]] && break
  sleep 0.1
done
[[ $(awk '{print $3}' "/proc/${pids[0]}/stat" 2>/dev/null) == T ]] ||
  { cat "$dir/last0"; fail "rank 0 did not stop itself after step 5"; }
kill -TERM "${pids[1]}"
sleep 0.5
kill -CONT "${pids[0]}"
wait "${pids[0]}"; rc0=$?
wait "${pids[1]}"; rc1=$?
pids=()
((rc0 == 75 && rc1 == 75)) ||
  { cat "$dir/last0" "$dir/last1"; fail "last step: exit $rc0 and $rc1, expected 75"; }
grep -q 'stopped at step 6 (another rank was signalled): checkpointed; exit status 75' \
  "$dir/last0" ||
  { cat "$dir/last0"; fail "rank 0 did not stop after the last step's checkpoint"; }
[[ $(cat "$dir/ck6/latest") == step-00000006 && ! -e "$dir/run6/model.safetensors" ]] ||
  fail "expected checkpoint step 6 and no model file after the stop"
"${cmd[@]}" "${args[@]}" >"$dir/last.out" 2>&1 ||
  { cat "$dir/last.out"; fail "the restart failed"; }
grep -q "resumed from $dir/ck6/step-00000006: step 6" "$dir/last.out" &&
  ! grep -q 'step     ./6' "$dir/last.out" ||
  { cat "$dir/last.out"; fail "the restart did not resume step 6 without training"; }
[[ -e "$dir/run6/model.safetensors" ]] || fail "the restart wrote no model file"
echo "PASS: a signal to rank 1 in the last step stopped both ranks with 75 after checkpoint 6," \
  "before the model file; the restart wrote it without a step"
