"""Helpers shared by the Python benchmark drivers (ops.py, attention_gpu.py)."""
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
