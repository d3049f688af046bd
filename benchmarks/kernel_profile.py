#!/usr/bin/env python3
"""Sums an Nsight Compute kernel log by kernel: where the GPU time of a training step goes.

Input: the output of `ncu --metrics gpu__time_duration.sum --csv --page raw PROGRAM` (what
scripts/gpu-check.sh writes to profile.csv with NURI_GPU_PROFILE=1: two training steps of
bench_train). Lines before the CSV header (the program's own output, ncu's ==PROF== notes) are
skipped. Prints one row per kernel name (names cut to 90 characters): launches
and milliseconds per step (the totals divided by --steps) and the share of all kernel time, the
largest first; with --json, the same as one JSON object.

  python3 benchmarks/kernel_profile.py --steps 2 profile.csv [--json FILE] [--top 30]
"""
import argparse
import csv
import json
import re
import sys
from collections import defaultdict


def short_name(name):
    """The kernel's name without its argument list and with template arguments cut to 90 chars."""
    name = re.sub(r"\(.*\)$", "", name.strip())
    name = re.sub(r"^void ", "", name)
    return name if len(name) <= 90 else name[:87] + "..."


def read_rows(path):
    lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    for i, line in enumerate(lines):
        if line.startswith('"ID"'):
            return list(csv.DictReader(lines[i:]))
    sys.exit(f"kernel_profile.py: {path} has no ncu CSV header (a line starting with \"ID\")")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--steps", type=float, default=1.0, help="steps the log covers (divides totals)")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = read_rows(args.csv)
    total_ns = defaultdict(float)
    count = defaultdict(int)
    unit = None
    for r in rows:
        v = r.get("gpu__time_duration.sum", "")
        try:
            t = float(v.replace(",", ""))
        except ValueError:
            unit = unit or v  # the units row that follows the header ("nsecond", "usecond", ...)
            continue
        name = short_name(r.get("Kernel Name", "?"))
        total_ns[name] += t
        count[name] += 1
    scale = {"nsecond": 1e-6, "usecond": 1e-3, "msecond": 1.0, "second": 1e3}.get(unit, 1e-6)
    all_ms = sum(total_ns.values()) * scale / args.steps
    table = sorted(((t * scale / args.steps, count[n] / args.steps, n) for n, t in total_ns.items()),
                   reverse=True)
    print(f"{'ms/step':>9} {'share':>6} {'launches':>8}  kernel  (all kernels: {all_ms:.3f} ms/step, "
          f"{sum(count.values()) / args.steps:.0f} launches)")
    for ms, n, name in table[: args.top]:
        print(f"{ms:9.3f} {ms / all_ms:6.1%} {n:8.1f}  {name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bench": "kernel_profile", "source": args.csv, "steps": args.steps,
                       "kernel_ms_per_step": all_ms,
                       "kernels": [{"name": n, "ms_per_step": ms, "launches_per_step": c}
                                   for ms, c, n in table]}, f)
            f.write("\n")


if __name__ == "__main__":
    main()
