#!/usr/bin/env bash
# The run ledger and `nuri report` (issue #24) over one run in five allocations: stopped by its
# time limit, by SIGTERM, killed with SIGKILL between checkpoints, restarted (redoing the steps
# the killed one had not checkpointed), and run to the end. Each allocation's wall time, timed
# here around its process, is the ledger's within 2 %, its parts add up to it within 2 %, and the
# report's tokens are the metrics' (every step's tokens once). (What the ledger cannot see is the
# process's exit after its end record, its libraries' teardown: 13-40 ms here, more on a loaded
# machine, so the allocations run seconds: the last one, what the others left of 500 steps, about
# 4 s; with 400 steps it ran 1.2-1.4 s, where 2 % is 25-28 ms, and failed 3 runs of 7.)
#   ledger.sh NURI_TRAIN_BINARY PYTHON
set -uo pipefail
bin=$1 python=$2
dir=$(mktemp -d)
trap 'kill -9 $pid 2>/dev/null; rm -rf "$dir"' EXIT
pid=
export OMP_NUM_THREADS=1
args=(--model gpt2-tiny --steps 500 --seq-len 128 --micro-batch 8 --max-new-tokens 0 --eval-every 50
      --save-every 5 --ckpt-dir "$dir/ck" --out "$dir/run" --quiet --log-every 1)
fail() { echo "FAIL: $*"; exit 1; }
now() { date +%s.%N; }
walls=()
last_step() { tail -n 1 "$dir/run/metrics.jsonl" 2>/dev/null | grep -oP '"step": \K[0-9]+' || echo 0; }

# 1: the time limit.
t0=$(now); "$bin" "${args[@]}" --time-limit 5 >"$dir/out1" 2>&1; rc=$?; t1=$(now)
((rc == 75)) || { cat "$dir/out1"; fail "allocation 1 ended with $rc, not 75"; }
walls+=("$(python3 -c "print($t1 - $t0)")")
# 2: SIGTERM once it has gone 80 steps further.
t0=$(now); "$bin" "${args[@]}" >"$dir/out2" 2>&1 & pid=$!
from=$(last_step)
while (( $(last_step) < from + 80 )); do sleep 0.05; done
kill -TERM $pid; wait $pid; rc=$?; t1=$(now)
((rc == 75)) || { cat "$dir/out2"; fail "allocation 2 ended with $rc, not 75"; }
walls+=("$(python3 -c "print($t1 - $t0)")")
# 3: SIGKILL past a checkpoint (save_every 5, or where 2 stopped): the steps since are lost.
"$bin" "${args[@]}" >"$dir/out3" 2>&1 & pid=$!
from=$(last_step)
while :; do s=$(last_step); (( s > from && s % 5 == 2 )) && break; sleep 0.01; done
kill -9 $pid; wait $pid 2>/dev/null; pid=
# The last step recorded whole (SIGKILL may cut the last line short; the next start drops it).
killed_at=$(python3 -c '
import json, sys
last = 0
for line in open(sys.argv[1]):
    try:
        last = json.loads(line)["step"]
    except ValueError:
        pass
print(last)' "$dir/run/metrics.jsonl")
# 4: a short time limit again (it redoes the lost steps first), 5: to the end.
for k in 4 5; do
  extra=(); ((k == 4)) && extra=(--time-limit 5)
  t0=$(now); "$bin" "${args[@]}" "${extra[@]}" >"$dir/out$k" 2>&1; rc=$?; t1=$(now)
  want=$((k == 4 ? 75 : 0))
  ((rc == want)) || { cat "$dir/out$k"; fail "allocation $k ended with $rc, not $want"; }
  walls+=("$(python3 -c "print($t1 - $t0)")")
done
echo "killed at step $killed_at; wall times: ${walls[*]}"

"$python" -m nuri report "$dir/ck" >"$dir/report.txt" || fail "nuri report"
cat "$dir/report.txt"
"$python" -m nuri report "$dir/ck" --json >"$dir/report.json" || fail "nuri report --json"
"$python" - "$dir" "$killed_at" "${walls[@]}" <<'PY' || fail "the ledger's checks"
import json, sys
d, killed_at, walls = sys.argv[1], int(sys.argv[2]), [float(w) for w in sys.argv[3:]]
ledger = [json.loads(l) for l in open(f"{d}/ck/ledger.jsonl")]
starts = [r for r in ledger if r["event"] == "start"]
ends = {r["id"]: r for r in ledger if r["event"] == "end"}
assert len(starts) == 5, f"{len(starts)} start records"
finished = [ends.get(s["id"]) for s in starts]
assert finished[2] is None, "the killed allocation has no end record"
ok = True
for wall, end in zip(walls, [e for e in finished if e is not None]):
    parts = end["parts"]
    covered = sum(v for k, v in parts.items() if k != "unaccounted")
    print(f"allocation: timed {wall:.2f} s, ledger {end['wall']:.2f} s, parts {covered:.2f} s, "
          f"unaccounted {parts['unaccounted']:+.3f} s; {end['reason']}")
    ok &= 0 <= wall - end["wall"] <= 0.02 * wall
    ok &= abs(covered - end["wall"]) <= 0.02 * end["wall"]
assert ok, "a wall time is not the ledger's, or its parts do not add up, within 2 %"
# Steps after the last checkpoint (the killed allocation's, or the one before it stopped at)
# were redone by the next one.
lost = killed_at - finished[3]["steps_from"]
assert lost >= 1 and finished[3]["redone_steps"] == lost, (finished[3]["redone_steps"], lost)
assert finished[3]["parts"]["redone"] > 0
# The report's tokens are the metrics' steps, each once.
rep = json.load(open(f"{d}/report.json"))
metrics = [json.loads(l) for l in open(f"{d}/run/metrics.jsonl")]
assert [m["step"] for m in metrics] == list(range(1, 501)), "metrics.jsonl holds every step once"
tokens_per_step = starts[0]["tokens_per_step"]
assert tokens_per_step == 8 * 128, tokens_per_step
assert rep["total"]["tokens"] == len(metrics) * tokens_per_step, (rep["total"], len(metrics))
assert rep["total"]["redone_tokens"] == lost * tokens_per_step
assert rep["total"]["steps"] == 500
assert 0 < rep["total"]["goodput"] < 1 and rep["total"]["mfu"] is not None
print(f"report: {rep['total']['tokens']} tokens = {len(metrics)} steps x {tokens_per_step}; "
      f"goodput {100 * rep['total']['goodput']:.1f}%")
PY
[[ -s $dir/ck/report.png ]] || fail "no report.png"
echo "PASS"
