"""Helpers shared by the Python benchmark drivers (ops.py, attention_gpu.py)."""
import json
import math
import statistics


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
