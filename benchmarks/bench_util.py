"""Helpers shared by the Python benchmark drivers (ops.py, attention_gpu.py)."""
import json
import math
import os
import statistics
import subprocess
import sys


def stats(samples):
    """Median, min and max of a list of per-call times, in the BENCHMARKS.md JSON shape."""
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples)}


def iters_for(t_one, target_s):
    """Back-to-back calls that make one sample last about target_s, given one call's time."""
    if not t_one or t_one <= 0:
        return 1
    return int(min(max(math.ceil(target_s / t_one), 1), 100000))


def geomean(v):
    """Geometric mean of positive ratios, or None for an empty list."""
    return math.exp(sum(map(math.log, v)) / len(v)) if v else None


class JsonLines:
    """emit(obj): one JSON object per line on stdout, and in `path` too when it is given."""

    def __init__(self, path):
        self.out = open(path, "w") if path else None

    def __call__(self, obj):
        s = json.dumps(obj)
        print(s, flush=True)
        if self.out:
            self.out.write(s + "\n")
            self.out.flush()

    def close(self):
        if self.out:
            self.out.close()


def reexec_with_cuda_torch(root, flag, probe_imports="torch"):
    """Re-executes this script under another Python (the repo's .venv, /usr/bin/python3) whose
    torch sees a CUDA device, once (the environment variable `flag` marks the second run);
    returns when there is none, so the caller reports why."""
    if os.environ.get(flag):
        return
    for cand in (os.path.join(str(root), ".venv", "bin", "python"), "/usr/bin/python3"):
        if not os.path.exists(cand) or os.path.realpath(cand) == os.path.realpath(sys.executable):
            continue
        probe = f"import sys, {probe_imports}; sys.exit(0 if torch.cuda.is_available() else 1)"
        if subprocess.run([cand, "-c", probe], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0:
            os.environ[flag] = "1"
            os.execv(cand, [cand] + sys.argv)
