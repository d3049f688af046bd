#!/usr/bin/env python3
"""nuri's fused attention on the GPU against PyTorch's scaled_dot_product_attention, in one run.

For each configuration (B*T = 16384 tokens, H*D = 2048; T in {1024, 2048, 4096, 8192}, D in
{64, 128}, causal and not) and each pass (fwd; fwd_bwd = forward + backward, nuri's fast
non-deterministic dq; fwd_bwd_det = the same with nuri's deterministic dq), this asks
`bench_attention_gpu --serve` (the nuri side, warm, in its own process) for samples and times
torch.nn.functional.scaled_dot_product_attention in this process on the same shapes and dtype,
alternating nuri and torch samples (A B A B ..., after a warm-up, >= 5 rounds). It prints one
JSON object per (T, D, causal, pass) in the ../../shared/BENCHMARKS.md format:
  nuri, peer: median_s, min_s, max_s, tflops, calls_per_sample
  ratio = nuri speed / peer speed (= peer median time / nuri median time)
  ceiling_tflops: torch.mm at 8192^3 in the same dtype (cuBLAS), measured at the start of the run
then a summary with the geometric-mean ratio per pass.

The peer: q, k, v [B, H, T, D] contiguous with requires_grad (a training forward, which keeps the
log-sum-exp), is_causal, default scale 1/sqrt(D); backward via torch.autograd.grad with a random
dout. Whichever SDPA backend PyTorch picks (flash, mem-efficient, cuDNN, math) is named in the
peer's "name". nuri: q, k, v, out [B, T, H, D] contiguous, lse [B, H, T] f32. For fwd_bwd_det the
peer is PyTorch's default backward (it is not asked to be deterministic).
FLOPs: fwd = 4*B*H*T^2*D, halved when causal; fwd+bwd = 3.5 * fwd.

Without torch, or torch without CUDA or without SDPA (torch < 2.0), nuri runs alone and every row
says so: "peer": null, "ratio": null, "peer_missing": the reason. Without a CUDA device it prints
why and exits 77. Exit 1 when a nuri op threw or its output check failed (see bench_attention_gpu).

  python3 benchmarks/attention_gpu.py [--bin build/benchmarks/bench_attention_gpu] [--quick]
      [--rounds N] [--min-sample-s S] [--dtype bf16|f16] [--T 1024,2048] [--D 64,128]
      [--causal 1,0] [--passes fwd,fwd_bwd,fwd_bwd_det] [--json FILE]
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

from bench_util import JsonLines, geomean, iters_for, reexec_with_cuda_torch, stats

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXIT_SKIP = 77
PASSES = ("fwd", "fwd_bwd", "fwd_bwd_det")


def log(msg):
    print("attention_gpu.py: " + msg, file=sys.stderr, flush=True)


def import_torch():
    """torch, or None. When this Python has no torch, re-executes under one that has it with CUDA."""
    try:
        import torch
        return torch
    except ImportError:
        pass
    reexec_with_cuda_torch(ROOT, "NURI_ATTN_REEXEC")
    return None


# ---- the nuri side: bench_attention_gpu --serve -----------------------------------------------------
class NuriDied(RuntimeError):
    pass


class Nuri:
    def __init__(self, cmd):
        self.cmd = cmd
        self.proc = None
        self.err = None

    def start(self):
        """The hello object, or (None, exit code, stderr text) when the process ended first."""
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, bufsize=1)
        line = self.proc.stdout.readline()
        if not line:
            return None, self.proc.wait(), self.stderr()
        return json.loads(line), 0, ""

    def stderr(self):
        self.err.seek(0)
        return self.err.read().strip()

    def ask(self, line):
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass
        reply = self.proc.stdout.readline()
        if not reply:
            rc = self.proc.wait()
            raise NuriDied("bench_attention_gpu died (exit %s): %s" % (rc, self.stderr() or "no output"))
        return json.loads(reply)

    def stop(self):
        if self.proc is None:
            return
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self.err.close()


# ---- the PyTorch side ---------------------------------------------------------------------------------
def peer_missing_reason(torch):
    if torch is None:
        return "torch is not installed for %s (nor in .venv or /usr/bin/python3 with CUDA)" % sys.executable
    if not torch.cuda.is_available():
        return "torch %s has no usable CUDA device (built for CUDA %s)" % (torch.__version__,
                                                                           torch.version.cuda)
    if not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        return "torch %s has no scaled_dot_product_attention (torch >= 2.0)" % torch.__version__
    return None


def torch_dtype(torch, name):
    return {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[name]


def cuda_time_per_call(torch, f, iters):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        f()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def sdpa_backend(torch, f):
    """Which SDPA implementation f runs, from the aten ops the profiler records."""
    try:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            f()
            torch.cuda.synchronize()
        names = " ".join(e.key for e in prof.key_averages())
    except Exception:  # noqa: BLE001 -- a name is nice to have, not needed
        return "backend-unknown"
    for key, label in (("cudnn_attention", "cudnn"), ("flash_attention", "flash"),
                       ("efficient_attention", "mem-efficient"), ("attention_math", "math")):
        if key in names:
            return label
    return "backend-unknown"


def torch_case(torch, cfg):
    """One call of the peer for this configuration: forward, or forward + backward."""
    F = torch.nn.functional
    B, T, H, D = cfg["B"], cfg["T"], cfg["H"], cfg["D"]
    dt = torch_dtype(torch, cfg["dtype"])
    g = torch.Generator(device="cuda").manual_seed(1234)
    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=dt, generator=g).requires_grad_()
               for _ in range(3))
    dout = torch.randn(B, H, T, D, device="cuda", dtype=dt, generator=g)
    causal = bool(cfg["causal"])
    if cfg["pass"] == "fwd":
        def step():
            F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    else:
        def step():
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            torch.autograd.grad(out, (q, k, v), dout)
    return step


def gemm_samples(torch, n, dt, rounds, min_sample_s):
    a = torch.randn(n, n, device="cuda", dtype=dt)
    b = torch.randn(n, n, device="cuda", dtype=dt)

    def f():
        torch.mm(a, b)
    f()
    it = iters_for(cuda_time_per_call(torch, f, 1), min_sample_s)
    return [cuda_time_per_call(torch, f, it) for _ in range(max(rounds, 5))], it


def measure_ceiling(torch, dtype_name, rounds, min_sample_s):
    """The machine's measured ceiling: torch.mm at 8192^3 in the benchmark's dtype (cuBLAS)."""
    n = 8192
    s, it = gemm_samples(torch, n, torch_dtype(torch, dtype_name), rounds, min_sample_s)
    torch.cuda.empty_cache()
    st = stats(s)
    return {"bench": "gemm_ceiling_gpu",
            "config": {"M": n, "N": n, "K": n, "dtype": dtype_name, "device": torch.cuda.get_device_name(),
                       "impl": "torch.mm (cuBLAS)", "torch": torch.__version__},
            "peer": dict(st, tflops=2.0 * n ** 3 / st["median_s"] * 1e-12, calls_per_sample=it)}


# ---- one configuration: nuri against torch, alternating --------------------------------------------------
def run_config(torch, nuri, args, T, D, causal, pss, missing, ceiling):
    ready = nuri.ask("config %d %d %d %s" % (T, D, causal, pss))
    if "error" in ready:
        raise RuntimeError(ready["error"])
    cfg, flops, check = ready["config"], ready["flops"], ready.get("check", {})

    def nuri_sample(iters):
        r = nuri.ask("run %d" % iters)
        if "error" in r:
            raise RuntimeError(r["error"])
        return r["t_s"]

    t_nuri1 = nuri_sample(1)
    it_nuri = iters_for(min(t_nuri1, ready.get("t_one_s", t_nuri1)), args.min_sample_s)
    step = None
    peer_error = None
    if not missing:
        try:
            step = torch_case(torch, cfg)
            step()  # warm-up
            backend = sdpa_backend(torch, step)
            it_torch = iters_for(cuda_time_per_call(torch, step, 1), args.min_sample_s)
        except Exception as e:  # noqa: BLE001 -- e.g. out of memory: report, keep nuri's numbers
            step, peer_error = None, "%s: %s" % (type(e).__name__, e)
    sn, st = [], []
    for _ in range(args.rounds):  # A B A B ...
        sn.append(nuri_sample(it_nuri))
        if step is not None:
            st.append(cuda_time_per_call(torch, step, it_torch))

    row = {"bench": "attention_gpu", "config": dict(cfg, rounds=args.rounds),
           "nuri": dict(stats(sn), calls_per_sample=it_nuri)}
    row["nuri"]["tflops"] = flops / row["nuri"]["median_s"] * 1e-12
    if step is not None:
        peer = {"name": "pytorch-sdpa %s %s" % (torch.__version__.split("+")[0], backend),
                "impl": "F.scaled_dot_product_attention(q, k, v, is_causal=%s), [B,H,T,D] contiguous, %s"
                        % (bool(causal), "training forward" if pss == "fwd"
                           else "+ torch.autograd.grad with a random dout"),
                **stats(st), "calls_per_sample": it_torch}
        peer["tflops"] = flops / peer["median_s"] * 1e-12
        if pss == "fwd_bwd_det":
            peer["note"] = "PyTorch's default SDPA backward (not asked to be deterministic)"
        row["peer"] = peer
        row["ratio"] = peer["median_s"] / row["nuri"]["median_s"]
    else:
        row["peer"], row["ratio"] = None, None
        row["peer_missing"] = missing or ("peer failed: " + peer_error)
    row["flops"] = flops
    row["flops_formula"] = ready.get("flops_formula", "")
    if ceiling:
        row["ceiling_tflops"] = ceiling
        row["ceiling_fraction"] = row["nuri"]["tflops"] / ceiling
    row["check"] = check
    if not check.get("ok", False):
        row["error"] = "check failed: an output of nuri differs from the float64 reference"
    del step
    if torch is not None and not missing:
        torch.cuda.empty_cache()  # leave the memory to the nuri process
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=None,
                    help="bench_attention_gpu binary (default build/benchmarks/bench_attention_gpu)")
    ap.add_argument("--quick", action="store_true", help="smoke run: T=1024 only, 3 rounds")
    ap.add_argument("--rounds", type=int, default=None, help="alternation rounds (default 7, quick 3)")
    ap.add_argument("--min-sample-s", type=float, default=None,
                    help="each timed sample lasts at least this long (default 0.1, quick 0.02)")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "f16"))
    ap.add_argument("--T", default=None,
                    help="comma-separated sequence lengths (default 1024,2048,4096,8192; quick 1024)")
    ap.add_argument("--D", default="64,128", help="comma-separated head dims (H = 2048 / D)")
    ap.add_argument("--causal", default="1,0", help="comma-separated 1 (causal) and/or 0")
    ap.add_argument("--passes", default=",".join(PASSES))
    ap.add_argument("--json", default=None, help="also write the JSON lines to this file")
    ap.add_argument("--nuri-args", default="",
                    help="extra arguments for the binary (testing aid, e.g. '--backend cpu --dtype f32 "
                         "--tokens 1024 --hd 256'; later ones win)")
    args = ap.parse_args()

    if args.bin is None:
        for cand in ("build/benchmarks/bench_attention_gpu",
                     os.path.join(ROOT, "build/benchmarks/bench_attention_gpu")):
            if os.path.exists(cand):
                args.bin = cand
                break
        else:
            sys.exit("attention_gpu.py: bench_attention_gpu not found: build it in a CUDA build "
                     "(cmake --build build --target bench_attention_gpu) or pass --bin")
    elif not os.path.exists(args.bin):
        sys.exit("attention_gpu.py: --bin %s does not exist" % args.bin)
    if args.rounds is None:
        args.rounds = 3 if args.quick else 7
    if args.min_sample_s is None:
        args.min_sample_s = 0.02 if args.quick else 0.1
    Ts = [int(t) for t in (args.T or ("1024" if args.quick else "1024,2048,4096,8192")).split(",")]
    Ds = [int(d) for d in args.D.split(",")]
    causals = [int(c) for c in args.causal.split(",")]
    passes = args.passes.split(",")
    for p in passes:
        if p not in PASSES:
            sys.exit("attention_gpu.py: unknown pass %r (%s)" % (p, ", ".join(PASSES)))

    torch = import_torch()
    missing = peer_missing_reason(torch)

    nuri = Nuri([args.bin, "--serve", "--dtype", args.dtype] + shlex.split(args.nuri_args))
    hello, rc, err = nuri.start()
    if hello is None:
        if err:
            print(err, file=sys.stderr)
        if rc == EXIT_SKIP:
            log("no CUDA device: nothing measured, no numbers reported (exit %d, skipped)" % EXIT_SKIP)
            return EXIT_SKIP
        log("bench_attention_gpu exited with %s before it was ready" % rc)
        return 1
    if missing:
        log("NO PEER: %s. nuri runs alone; every row has \"peer\": null, \"ratio\": null." % missing)

    emit = JsonLines(args.json)

    ceiling = None
    if not missing:
        try:
            c = measure_ceiling(torch, hello.get("dtype", args.dtype), args.rounds, args.min_sample_s)
            emit(c)
            ceiling = c["peer"]["tflops"]
        except Exception as e:  # noqa: BLE001 -- the ceiling is context, not the measurement
            log("no GEMM ceiling: %s: %s" % (type(e).__name__, e))

    ratios, failed = {}, 0
    try:
        for T in Ts:
            for D in Ds:
                for causal in causals:
                    for pss in passes:
                        try:
                            row = run_config(torch, nuri, args, T, D, causal, pss, missing, ceiling)
                        except Exception as e:  # noqa: BLE001 -- report and go on
                            row = {"bench": "attention_gpu",
                                   "config": {"pass": pss, "T": T, "D": D, "causal": bool(causal),
                                              "dtype": hello.get("dtype", args.dtype)},
                                   "error": "%s: %s" % (type(e).__name__, e)}
                            # A CUDA error can leave the process unusable: start a fresh one.
                            nuri.stop()
                            h, rc, err = nuri.start()
                            if h is None:
                                emit(row)
                                log("bench_attention_gpu does not restart (exit %s): %s" % (rc, err))
                                return 1
                        emit(row)
                        if "error" in row:
                            failed += 1
                        elif row.get("ratio"):
                            ratios.setdefault(pss, []).append(row["ratio"])
    finally:
        nuri.stop()

    peer_name = None if missing else "pytorch-sdpa %s" % torch.__version__.split("+")[0]
    emit({"bench": "attention_gpu_summary",
          "config": {"dtype": hello.get("dtype"), "tokens": hello.get("tokens"), "hd": hello.get("hd"),
                     "T": Ts, "D": Ds, "causal": causals, "rounds": args.rounds,
                     "device": hello.get("device")},
          "peer": peer_name, "peer_missing": missing,
          "geomean_ratio_by_pass": {p: geomean(ratios.get(p, [])) for p in passes},
          "ceiling_tflops": ceiling, "failed": failed,
          "ratio_definition": "nuri speed / peer speed = peer median time / nuri median time"})
    emit.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
