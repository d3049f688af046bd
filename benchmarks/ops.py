#!/usr/bin/env python3
"""nuri's CPU ops against PyTorch's, at GPT-2 small training shapes, in one run.

For each op (attention, layernorm, cross-entropy; forward + backward) and each T in {64, 256}
(B=4), this starts `bench_ops --op OP --T T --serve` (the nuri side, warm, in its own process)
and times the PyTorch op in this process with the same shapes and the same thread count,
alternating nuri and torch samples (A B A B ..., after a warm-up, >= 5 rounds). It prints one
JSON object per op in the ../../shared/BENCHMARKS.md format, ratio = nuri speed / peer speed
(= peer median time / nuri median time), then a summary.

Peers (torch 1.13 has no scaled_dot_product_attention):
  attention      softmax(q·kᵀ·scale + causal mask)·v on [B, H, T, D] tensors, autograd backward
  layernorm      torch.nn.functional.layer_norm over C=768 with weight and bias, autograd backward
  cross_entropy  torch.nn.functional.cross_entropy on [N, 50257] logits (nuri: 50257 real columns
                 of a [N, 50304] padded buffer), mean over rows, autograd backward

Run with a Python that has torch (Debian's python3-torch): /usr/bin/python3 or .venv/bin/python
(this script re-executes itself under one of them when `import torch` fails).

  /usr/bin/python3 benchmarks/ops.py [--bin build/benchmarks/bench_ops] [--quick] [--rounds N]
                                     [--json FILE] [--ops attention,layernorm,cross_entropy]
  threads: OMP_NUM_THREADS (default: all cores), for bench_ops and torch.set_num_threads alike.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

from bench_util import JsonLines, geomean, iters_for, stats

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def import_torch():
    try:
        import torch  # noqa: F401
        return torch
    except ImportError:
        for cand in (os.path.join(ROOT, ".venv", "bin", "python"), "/usr/bin/python3"):
            if os.path.exists(cand) and os.path.realpath(cand) != os.path.realpath(sys.executable) \
                    and not os.environ.get("NURI_OPS_REEXEC"):
                os.environ["NURI_OPS_REEXEC"] = "1"
                os.execv(cand, [cand] + sys.argv)
        sys.exit("ops.py needs torch: run it with /usr/bin/python3 or .venv/bin/python")


# ---- the PyTorch peers ---------------------------------------------------------------------------
def torch_case(torch, op, B, T):
    F = torch.nn.functional
    g = torch.Generator().manual_seed(1234)
    if op == "attention":
        H, D = 12, 64
        q, k, v = (torch.randn(B, H, T, D, generator=g).requires_grad_() for _ in range(3))
        dout = torch.randn(B, H, T, D, generator=g)
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        scale = 1.0 / math.sqrt(D)

        def step():
            q.grad = k.grad = v.grad = None
            att = (q @ k.transpose(-2, -1)) * scale
            att = att.masked_fill(~mask, float("-inf"))
            att = F.softmax(att, dim=-1)
            y = att @ v
            y.backward(dout)
        impl = "softmax(q@k^T*scale masked_fill causal)@v, [B,H,T,D], autograd"
    elif op == "layernorm":
        C = 768
        M = B * T
        x = torch.randn(M, C, generator=g).requires_grad_()
        w = (torch.randn(C, generator=g) * 0.1).requires_grad_()
        b = (torch.randn(C, generator=g) * 0.1).requires_grad_()
        dy = torch.randn(M, C, generator=g)

        def step():
            x.grad = w.grad = b.grad = None
            y = F.layer_norm(x, (C,), w, b, 1e-5)
            y.backward(dy)
        impl = "torch.nn.functional.layer_norm, autograd"
    elif op == "cross_entropy":
        V = 50257
        N = B * T
        logits = torch.randn(N, V, generator=g).requires_grad_()
        targets = torch.randint(0, V, (N,), generator=g)

        def step():
            logits.grad = None
            loss = F.cross_entropy(logits, targets)
            loss.backward()
        impl = "torch.nn.functional.cross_entropy on [N,50257], mean, autograd"
    else:
        raise ValueError(op)
    return step, impl


def time_per_call(f, iters):
    t0 = time.perf_counter()
    for _ in range(iters):
        f()
    return (time.perf_counter() - t0) / iters


# ---- one op config: nuri (bench_ops --serve) against torch, alternating ---------------------------
def run_pair(torch, args, op, B, T, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [args.bin, "--op", op, "--B", str(B), "--T", str(T), "--serve"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, bufsize=1)
    try:
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read().strip()
            return {"bench": "op_cpu", "config": {"op": op, "B": B, "T": T, "threads": threads},
                    "error": "bench_ops failed: " + (err or "no output")}
        ready = json.loads(line)
        cfg = ready["config"]
        flops = ready.get("flops", 0.0)

        def nuri_sample(iters):
            proc.stdin.write("run %d\n" % iters)
            proc.stdin.flush()
            reply = proc.stdout.readline()
            if not reply:
                raise RuntimeError("bench_ops died: " + proc.stderr.read().strip())
            return json.loads(reply)["t_s"]

        step, impl = torch_case(torch, op, B, T)
        step()  # warm-up
        t_torch1 = time_per_call(step, 1)
        t_nuri1 = nuri_sample(1)  # second warm-up call of the nuri side
        it_nuri = iters_for(min(t_nuri1, ready.get("t_one_s", t_nuri1)), args.min_sample_s)
        it_torch = iters_for(t_torch1, args.min_sample_s)

        sn, st = [], []
        for _ in range(args.rounds):  # A B A B ...
            sn.append(nuri_sample(it_nuri))
            st.append(time_per_call(step, it_torch))
        proc.stdin.write("quit\n")
        proc.stdin.flush()
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
        proc.wait(timeout=60)

    rows = B * T
    nuri, peer = stats(sn), stats(st)
    nuri["calls_per_sample"] = it_nuri
    peer = {"name": "pytorch-cpu %s eager" % torch.__version__.split("+")[0], "impl": impl,
            **peer, "calls_per_sample": it_torch}
    for d in (nuri, peer):
        if flops:
            d["gflops"] = flops / d["median_s"] * 1e-9
        d["rows_per_s"] = rows / d["median_s"]
    cfg = dict(cfg, rounds=args.rounds)
    row = {"bench": "op_cpu", "config": cfg, "nuri": nuri, "peer": peer,
           "ratio": peer["median_s"] / nuri["median_s"]}
    if flops:
        row["flops_formula"] = ready.get("flops_formula", "")
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=None, help="bench_ops binary (default build/benchmarks/bench_ops)")
    ap.add_argument("--quick", action="store_true", help="smoke run: T=64 only, 3 rounds")
    ap.add_argument("--rounds", type=int, default=None, help="alternation rounds (default 7, quick 3)")
    ap.add_argument("--min-sample-s", type=float, default=None,
                    help="each timed sample lasts at least this long (default 0.1, quick 0.02)")
    ap.add_argument("--ops", default="attention,layernorm,cross_entropy")
    ap.add_argument("--T", default=None, help="comma-separated sequence lengths (default 64,256)")
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--json", default=None, help="also write the JSON lines to this file")
    args = ap.parse_args()

    threads = int(os.environ.get("OMP_NUM_THREADS", "0").split(",")[0] or 0) or os.cpu_count()
    os.environ["OMP_NUM_THREADS"] = str(threads)  # before torch starts its pool
    torch = import_torch()
    torch.set_num_threads(threads)

    if args.bin is None:
        for cand in ("build/benchmarks/bench_ops", os.path.join(ROOT, "build/benchmarks/bench_ops")):
            if os.path.exists(cand):
                args.bin = cand
                break
        else:
            sys.exit("bench_ops not found: build it (cmake --build build --target bench_ops) or pass --bin")
    if args.rounds is None:
        args.rounds = 3 if args.quick else 7
    if args.min_sample_s is None:
        args.min_sample_s = 0.02 if args.quick else 0.1
    Ts = [int(t) for t in args.T.split(",")] if args.T else ([64] if args.quick else [64, 256])

    emit = JsonLines(args.json)

    ratios = {}
    failed = False
    for op in args.ops.split(","):
        for T in Ts:
            try:
                row = run_pair(torch, args, op, args.B, T, threads)
            except Exception as e:  # noqa: BLE001 -- report and go on with the other ops
                row = {"bench": "op_cpu", "config": {"op": op, "B": args.B, "T": T, "threads": threads},
                       "error": "%s: %s" % (type(e).__name__, e)}
            emit(row)
            if "ratio" in row:
                ratios.setdefault(op, []).append(row["ratio"])
            else:
                failed = True
    all_r = [r for v in ratios.values() for r in v]
    emit({"bench": "op_cpu_summary",
          "config": {"threads": threads, "B": args.B, "T": Ts, "rounds": args.rounds},
          "peer": "pytorch-cpu %s eager" % torch.__version__.split("+")[0],
          "geomean_ratio": geomean(all_r), "geomean_ratio_by_op": {k: geomean(v) for k, v in ratios.items()},
          "ratio_definition": "nuri speed / peer speed = peer median time / nuri median time"})
    emit.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
