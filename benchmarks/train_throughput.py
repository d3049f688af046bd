"""Training throughput on the CPU: nuri against PyTorch eager, same model, init, batch and threads.

For each configuration (gpt2-124M at B=4, T=64 and B=4, T=256) it starts bench_train (nuri's
side, a C++ process holding the model), builds the same model in PyTorch from the weights
bench_train dumped, then alternates one training step of each (forward, backward, clip to 1.0,
AdamW) after a warm-up, and prints one JSON object per configuration (BENCHMARKS.md):
  ratio            nuri tokens/s over PyTorch's
  ceiling_fraction nuri's achieved FLOP/s over a 2048^3 sgemm measured in the same run
FLOPs per step = 6·N·tokens + 12·L·T·d·tokens (N = all parameters; the attention term is the
forward+backward of the score and value products, not halved for the causal mask).

  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train_throughput.py [--reps 5] [--quick]
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def gpt2_forward(p, cfg, tokens, targets):
    """GPT-2 in plain PyTorch ops, parameters named as nuri (and Hugging Face) name them."""
    B, T = tokens.shape
    C, H, L = cfg["d_model"], cfg["n_head"], cfg["n_layer"]
    D = C // H
    x = p["wte.weight"][tokens] + p["wpe.weight"][:T]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for l in range(L):
        pre = f"h.{l}."
        a = F.layer_norm(x, (C,), p[pre + "ln_1.weight"], p[pre + "ln_1.bias"], cfg["norm_eps"])
        q, k, v = F.linear(a, p[pre + "attn.c_attn.weight"], p[pre + "attn.c_attn.bias"]).split(C, -1)
        q, k, v = (z.view(B, T, H, D).transpose(1, 2) for z in (q, k, v))
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        y = s.masked_fill(~mask, float("-inf")).softmax(-1) @ v
        y = y.transpose(1, 2).reshape(B, T, C)
        x = x + F.linear(y, p[pre + "attn.c_proj.weight"], p[pre + "attn.c_proj.bias"])
        m = F.layer_norm(x, (C,), p[pre + "ln_2.weight"], p[pre + "ln_2.bias"], cfg["norm_eps"])
        h = F.gelu(F.linear(m, p[pre + "mlp.c_fc.weight"], p[pre + "mlp.c_fc.bias"]), approximate="tanh")
        x = x + F.linear(h, p[pre + "mlp.c_proj.weight"], p[pre + "mlp.c_proj.bias"])
    x = F.layer_norm(x, (C,), p["ln_f.weight"], p["ln_f.bias"], cfg["norm_eps"])
    logits = x @ p["wte.weight"].T
    V = cfg["vocab_size"]
    return F.cross_entropy(logits[..., :V].reshape(-1, V), targets.reshape(-1))


class TorchSide:
    def __init__(self, dump):
        layout = json.loads((dump / "layout.json").read_text())
        cfg = dict(kv.split("=") for kv in layout["summary"].split())
        self.cfg = {k: int(v) if v.isdigit() else v for k, v in cfg.items()}
        self.cfg["norm_eps"] = layout["norm_eps"]
        self.cfg["num_params"] = layout["num_params"]  # logical: padded vocab rows not counted
        flat = np.fromfile(dump / "params.bin", dtype=np.float32)
        self.params = {}
        for e in layout["params"]:
            n = int(np.prod(e["shape"]))
            t = torch.from_numpy(flat[e["offset"] : e["offset"] + n].copy()).view(*e["shape"])
            self.params[e["name"]] = t.requires_grad_(True)
        decay = [t for t in self.params.values() if t.dim() >= 2]
        rest = [t for t in self.params.values() if t.dim() < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                      {"params": rest, "weight_decay": 0.0}],
                                     lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
        self.window = torch.from_numpy(np.fromfile(dump / "tokens.bin", dtype=np.int32).astype(np.int64))

    def step(self, B, T):
        w = self.window.view(B, T + 1)
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=False)
        loss = gpt2_forward(self.params, self.cfg, w[:, :-1], w[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), 1.0)
        self.opt.step()
        return time.perf_counter() - t0, loss.item()


def nuri_call(proc, cmd):
    proc.stdin.write(cmd + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def summary(xs):
    return {"median_s": float(np.median(xs)), "min_s": float(np.min(xs)), "max_s": float(np.max(xs))}


def run(model, B, T, reps, bin_path, threads):
    with tempfile.TemporaryDirectory() as d:
        dump = Path(d)
        proc = subprocess.Popen([str(bin_path), "--model", model, "--B", str(B), "--T", str(T), "--dump", d],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready", "bench_train did not start"
        peer = TorchSide(dump)
        nuri_first = nuri_call(proc, "step")          # warm-up, and the loss check
        _, torch_first = peer.step(B, T)
        nuri_s, torch_s = [], []
        for _ in range(reps):                          # A B A B ...
            r = nuri_call(proc, "step")
            nuri_s.append(r["seconds"])
            torch_s.append(peer.step(B, T)[0])
        ceiling = nuri_call(proc, "ceiling")["gflops"]
        peak, peak_rss = r["peak_bytes"], r["peak_rss_bytes"]
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait()
    cfg = peer.cfg
    tokens = B * T
    flops = 6 * cfg["num_params"] * tokens \
        + 12 * cfg["n_layer"] * T * cfg["d_model"] * tokens
    n, p = summary(nuri_s), summary(torch_s)
    n["tokens_per_s"] = tokens / n["median_s"]
    n["gflops"] = flops / n["median_s"] / 1e9
    n["peak_bytes"] = peak          # nuri's allocator
    n["peak_rss_bytes"] = peak_rss  # the bench_train process
    p["tokens_per_s"] = tokens / p["median_s"]
    p["name"] = f"pytorch-cpu {torch.__version__} eager"
    # This Python process (cumulative over configurations: ru_maxrss is a high-water mark).
    p["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "bench": "train_step_cpu",
        "config": {"model": model, "B": B, "T": T, "threads": threads, "reps": reps},
        "nuri": n, "peer": p,
        "ratio": n["tokens_per_s"] / p["tokens_per_s"],
        "ceiling_gflops": ceiling, "ceiling_fraction": n["gflops"] / ceiling,
        "flops_formula": "6*N*tokens + 12*L*T*d*tokens, N = parameters (padded vocab rows not counted)",
        "first_step_loss": {"nuri": nuri_first["loss"], "peer": torch_first},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=str(ROOT / "build" / "benchmarks" / "bench_train"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="gpt2-tiny, 2 reps: a smoke test")
    ap.add_argument("--json", help="also write the JSON lines here")
    args = ap.parse_args()
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count()))
    torch.set_num_threads(threads)
    configs = [("gpt2-tiny", 4, 64)] if args.quick else [("gpt2-124M", 4, 64), ("gpt2-124M", 4, 256)]
    reps = 2 if args.quick else args.reps
    out = []
    for model, B, T in configs:
        r = run(model, B, T, reps, args.bin, threads)
        print(json.dumps(r), flush=True)
        out.append(r)
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in out))


if __name__ == "__main__":
    sys.exit(main())
