"""Two builds of nuri's training step against each other, in one run: bench_train of build A
and of build B hold the same model and batch, and their steps alternate (A B A B ...) after a
warm-up; prints the median step time of each with min and max, the ratio B/A, and whether the
first steps' losses are the same bits (the same init and batch must give the same loss when
the arithmetic did not change). For "did this change cost speed?":
    git worktree add /tmp/old HEAD~1 && cmake -S /tmp/old -B /tmp/old/build ... --target bench_train
    python3 benchmarks/compare_builds.py --a /tmp/old/build/benchmarks/bench_train \\
        --b build/benchmarks/bench_train --model gpt2-124M --B 4 --T 64
One JSON object on stdout (and in --json FILE)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile


def start(binary: str, args: argparse.Namespace, dump: str) -> subprocess.Popen:
    p = subprocess.Popen([binary, "--model", args.model, "--B", str(args.B), "--T", str(args.T),
                          "--dump", dump, "--backend", args.backend],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if line != "ready":
        sys.exit(f"{binary} did not start: {line!r}")
    return p


def step(p: subprocess.Popen) -> dict:
    p.stdin.write("step\n")
    p.stdin.flush()
    return json.loads(p.stdout.readline())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="bench_train of build A (the baseline)")
    ap.add_argument("--b", required=True, help="bench_train of build B")
    ap.add_argument("--model", default="gpt2-124M")
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--T", type=int, default=64)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as da, tempfile.TemporaryDirectory() as db:
        procs = {"a": start(args.a, args, da), "b": start(args.b, args, db)}
        first = {k: step(p)["loss"] for k, p in procs.items()}
        for _ in range(args.warmup - 1):
            for p in procs.values():
                step(p)
        times: dict[str, list[float]] = {"a": [], "b": []}
        for _ in range(args.reps):
            for k, p in procs.items():
                times[k].append(step(p)["seconds"])
        for p in procs.values():
            p.stdin.write("quit\n")
            p.stdin.flush()
            p.wait()
    out = {"bench": "compare_builds", "config": {"model": args.model, "B": args.B, "T": args.T,
                                                 "backend": args.backend, "reps": args.reps}}
    for k in ("a", "b"):
        out[k] = {"binary": getattr(args, k), "median_s": statistics.median(times[k]),
                  "min_s": min(times[k]), "max_s": max(times[k]), "first_loss": first[k]}
    out["ratio_b_over_a"] = out["b"]["median_s"] / out["a"]["median_s"]
    out["same_first_loss"] = first["a"] == first["b"]
    text = json.dumps(out)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
