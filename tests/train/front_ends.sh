#!/usr/bin/env bash
# One run config, three front ends (issue #20): nuri-train --config, python -m nuri train --config
# and a hand-written loop over nuri.Trainer (api_run.py) give the same run bit for bit: every
# step's loss, gradient norm, learning rate and validation loss equal, the same output line for
# line (timings aside), the same model.safetensors and sample. Under any launcher, data-parallel
# (ZeRO 1, several gradient buckets, accumulation 2).
#   front_ends.sh [LAUNCHER ARGS...] -- NURI_TRAIN PYTHON     (no launcher: one process)
# PYTHON must import this tree's nuri (PYTHONPATH=build/python, or the installed package).
set -uo pipefail
launcher=()
while [[ $1 != -- ]]; do launcher+=("$1"); shift; done
bin=$2 python=$3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
cat >"$dir/run.toml" <<TOML
model = "gpt2-tiny"
log_every = 1
[train]
steps = 6
micro_batch = 2
seq_len = 32
grad_accum = 2
eval_every = 3
eval_batches = 2
seed = 5
[parallel]
zero_stage = 1
bucket_mb = 0.05
[sample]
max_new_tokens = 16
TOML
export OMP_NUM_THREADS=1
"${launcher[@]}" "$bin" --config "$dir/run.toml" --out "$dir/cpp" >"$dir/cpp.out" 2>&1 ||
  { cat "$dir/cpp.out"; fail "nuri-train"; }
"${launcher[@]}" "$python" -m nuri train --config "$dir/run.toml" --out "$dir/py" \
  >"$dir/py.out" 2>&1 || { cat "$dir/py.out"; fail "python -m nuri train"; }
"${launcher[@]}" "$python" "$here/api_run.py" "$dir/run.toml" "$dir/api.json" >"$dir/api.out" 2>&1 ||
  { cat "$dir/api.out"; fail "the loop over nuri.Trainer"; }
"$python" - "$dir" <<'PY' || exit 1
import json, re, sys
from pathlib import Path
d = Path(sys.argv[1])
def metrics(run):
    rows = [json.loads(l) for l in (d / run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "step_seconds")} for r in rows]
cpp, py = metrics("cpp"), metrics("py")
assert [r["step"] for r in cpp] == list(range(1, 7)), cpp
assert cpp == py, f"metrics differ:\n{cpp}\n{py}"
api = json.loads((d / "api.json").read_text())
mine = [{k: r[k] for k in ("step", "loss", "lr", "grad_norm", "val_loss") if k in r} for r in cpp]
assert mine == api["steps"], f"the loop over nuri.Trainer differs:\n{mine}\n{api['steps']}"
timing = re.compile(r" *\d+ tok/s|eta \d+m\d\ds|done in \d+m\d\ds|\d+\.\d MiB")
out = {run: timing.sub("T", (d / f"{run}.out").read_text()).replace(str(d / run), "DIR")
       for run in ("cpp", "py")}
assert out["cpp"] == out["py"], f"outputs differ:\n{out['cpp']}\n----\n{out['py']}"
for name in ("model.safetensors", "sample.txt", "config.json"):
    a, b = (d / "cpp" / name).read_bytes(), (d / "py" / name).read_bytes()
    if name == "config.json":
        a, b = a.replace(str(d / "cpp").encode(), b"DIR"), b.replace(str(d / "py").encode(), b"DIR")
    assert a == b, name
world = api["world_size"]
assert world == 1 or f"data parallel: {world} ranks" in out["cpp"], out["cpp"]
print(f"PASS: {world} rank(s): nuri-train, python -m nuri train and nuri.Trainer agree bit for "
      f"bit over {len(cpp)} steps (final loss {cpp[-1]['loss']:.6f}, val "
      f"{cpp[-1]['val_loss']:.6f})")
PY
