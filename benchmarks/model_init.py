"""Building a model whose weights are read next: nuri.Model(cfg, init="zeros") (what nuri.load,
nuri.import_hf and a resuming run do) against init="random" (the weights drawn from the seed).

Each sample builds the model in a fresh process (so both pay the same first-touch page faults),
alternating random and zeros after one warm-up of each; the child reports its wall time and the
user and system CPU time of the construction alone. Prints one JSON object (BENCHMARKS.md shape)
with the medians, minima and maxima and the ratios random / zeros.

    PYTHONPATH=build/python python3 benchmarks/model_init.py [--model gpt2-350M] [--reps 5]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_util import JsonLines, stats  # noqa: E402

CHILD = r"""
import json, resource, sys, time
import nuri
cfg = nuri.ModelConfig.preset(sys.argv[1])
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
model = nuri.Model(cfg, init=sys.argv[2])
t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_s": t1 - t0, "user_s": r1.ru_utime - r0.ru_utime,
                  "sys_s": r1.ru_stime - r0.ru_stime, "params": cfg.num_params()}))
"""


def sample(model, init):
    out = subprocess.run([sys.executable, "-c", CHILD, model, init], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2-350M", help="a preset (default gpt2-350M)")
    ap.add_argument("--reps", type=int, default=5, help="samples of each (default 5)")
    ap.add_argument("--json", help="also write the JSON line here")
    args = ap.parse_args()
    emit = JsonLines(args.json)
    runs = {"random": [], "zeros": []}
    for init in runs:  # warm-up: the page cache holds the library and Python's modules
        sample(args.model, init)
    for _ in range(args.reps):
        for init in runs:
            runs[init].append(sample(args.model, init))

    def summary(init):
        rs = runs[init]
        out = stats([r["wall_s"] for r in rs])
        for key in ("user_s", "sys_s"):
            out["median_" + key] = statistics.median(r[key] for r in rs)
            out["min_" + key] = min(r[key] for r in rs)
            out["max_" + key] = max(r[key] for r in rs)
        return out

    zeros, random = summary("zeros"), summary("random")
    emit({"bench": "model_init", "config": {"model": args.model, "params": runs["zeros"][0]["params"],
                                            "reps": args.reps,
                                            "threads": os.environ.get("OMP_NUM_THREADS", "all"),
                                            "cpus": os.cpu_count(), "machine": platform.machine()},
          "nuri": {"name": "init=zeros", **zeros},
          "peer": {"name": "init=random", **random},
          "ratio": random["median_s"] / zeros["median_s"],
          "user_time_ratio": random["median_user_s"] / max(zeros["median_user_s"], 1e-9)})
    emit.close()


if __name__ == "__main__":
    main()
