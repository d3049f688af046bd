"""Training throughput: nuri against PyTorch eager, same model, init, batch (and threads).

For each configuration it starts bench_train (nuri's side, a C++ process holding the model),
builds the same model in PyTorch from the f32 weights bench_train dumped, then alternates one
training step of each (forward, backward, clip to 1.0, AdamW) after a warm-up, and prints one JSON
object per configuration (BENCHMARKS.md). FLOPs per step = model_flops_per_token × tokens, the
README's MFU definition (bench_train's `flops`: 6 × the weights of every product, the LM head
included and the input embedding not, plus attention's two products halved for the causal mask).

--device cpu (default): gpt2-124M at B=4, T=64 and B=4, T=256 on the CPU backend against PyTorch
eager on the CPU, same threads:
  ratio            nuri tokens/s over PyTorch's
  ceiling_fraction nuri's achieved FLOP/s over a 2048^3 sgemm measured in the same run

--device cuda: gpt2-124M at B=8, T=1024 and llama-1B at B=4, T=2048 (--quick: gpt2-124M B=4,
T=256, 2 reps) on the CUDA backend (bf16 compute, f32 master weights, gradients and AdamW state)
against PyTorch eager on the same GPU in bf16 autocast (f32 master parameters, fused AdamW where
torch has it, clip 1.0, SDPA attention where torch has it). Each step ends with a synchronize.
  ratio            nuri tokens/s over PyTorch's
  ratio_compiled   with --compile: the same over PyTorch's step under torch.compile, a third
                   contender in the alternation (peer_compiled; same parameters and optimizer)
  mfu              achieved FLOP/s over the device's dense bf16 tensor-core peak (bench_train's
                   `peak` table; null for a device not in it)
  peak_bytes       nuri: its device allocator's peak; PyTorch: torch.cuda.max_memory_allocated
Without torch with CUDA, or without a device, it says why and exits 77.

  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train_throughput.py [--reps 5] [--quick]
  python3 benchmarks/train_throughput.py --device cuda [--reps 5] [--quick] [--compile] [--json FILE]
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_util import reexec_with_cuda_torch

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # --device cuda may find a torch with CUDA under another Python (below)
    torch = F = None

ROOT = Path(__file__).resolve().parents[1]
EXIT_SKIP = 77


def attend(q, k, v, fused):
    """Causal attention of q, k, v [B, H, T, D]; fused: torch's SDPA (torch >= 2.0)."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T, D = q.shape[-2], q.shape[-1]
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    return s.masked_fill(~mask, float("-inf")).softmax(-1) @ v


def gpt2_forward(p, cfg, tokens, targets, fused_attn=False):
    """GPT-2 in plain PyTorch ops, parameters named as nuri (and Hugging Face) name them."""
    B, T = tokens.shape
    C, H, L = cfg["d_model"], cfg["n_head"], cfg["n_layer"]
    D = C // H
    x = p["wte.weight"][tokens] + p["wpe.weight"][:T]
    for l in range(L):
        pre = f"h.{l}."
        a = F.layer_norm(x, (C,), p[pre + "ln_1.weight"], p[pre + "ln_1.bias"], cfg["norm_eps"])
        q, k, v = F.linear(a, p[pre + "attn.c_attn.weight"], p[pre + "attn.c_attn.bias"]).split(C, -1)
        q, k, v = (z.view(B, T, H, D).transpose(1, 2) for z in (q, k, v))
        y = attend(q, k, v, fused_attn).transpose(1, 2).reshape(B, T, C)
        x = x + F.linear(y, p[pre + "attn.c_proj.weight"], p[pre + "attn.c_proj.bias"])
        m = F.layer_norm(x, (C,), p[pre + "ln_2.weight"], p[pre + "ln_2.bias"], cfg["norm_eps"])
        h = F.gelu(F.linear(m, p[pre + "mlp.c_fc.weight"], p[pre + "mlp.c_fc.bias"]), approximate="tanh")
        x = x + F.linear(h, p[pre + "mlp.c_proj.weight"], p[pre + "mlp.c_proj.bias"])
    x = F.layer_norm(x, (C,), p["ln_f.weight"], p["ln_f.bias"], cfg["norm_eps"])
    logits = x @ p["wte.weight"].T
    V = cfg["vocab_size"]
    return F.cross_entropy(logits[..., :V].reshape(-1, V), targets.reshape(-1))


def rms_norm(x, w, eps):
    """RMSNorm in f32 (as autocast runs layer_norm), weight applied after the normalization."""
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w


_ROPE_CACHE = {}


def rope(x, theta):
    """Rotary embedding, rotate-half convention (pairs (i, i + D/2)), x [B, H, T, D]. The cos/sin
    table is built once per (T, D, theta, device, dtype), angles in float64 as nuri's CPU op."""
    T, D = x.shape[-2], x.shape[-1]
    key = (T, D, theta, x.device, x.dtype)
    if key not in _ROPE_CACHE:
        inv = theta ** (-torch.arange(0, D // 2, dtype=torch.float64, device=x.device) * 2 / D)
        ang = torch.arange(T, dtype=torch.float64, device=x.device)[:, None] * inv[None, :]
        _ROPE_CACHE[key] = (ang.cos().to(x.dtype), ang.sin().to(x.dtype))
    cos, sin = _ROPE_CACHE[key]
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1)


def llama_forward(p, cfg, tokens, targets, fused_attn=False):
    """Llama (RMSNorm, RoPE, grouped-query attention, SwiGLU, untied head) in plain PyTorch ops,
    parameters named as nuri's layout (and Hugging Face) name them."""
    B, T = tokens.shape
    C, H, KV, L = cfg["d_model"], cfg["n_head"], cfg["n_kv_head"], cfg["n_layer"]
    D, eps, theta = C // H, cfg["norm_eps"], cfg["rope_theta"]
    x = p["model.embed_tokens.weight"][tokens]
    for l in range(L):
        pre = f"model.layers.{l}."
        a = rms_norm(x, p[pre + "input_layernorm.weight"], eps)
        q = F.linear(a, p[pre + "self_attn.q_proj.weight"]).view(B, T, H, D).transpose(1, 2)
        k = F.linear(a, p[pre + "self_attn.k_proj.weight"]).view(B, T, KV, D).transpose(1, 2)
        v = F.linear(a, p[pre + "self_attn.v_proj.weight"]).view(B, T, KV, D).transpose(1, 2)
        q, k = rope(q, theta), rope(k, theta)
        if KV != H:  # query head h reads kv head h // (H / KV)
            k, v = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
        y = attend(q, k, v, fused_attn).transpose(1, 2).reshape(B, T, C)
        x = x + F.linear(y, p[pre + "self_attn.o_proj.weight"])
        m = rms_norm(x, p[pre + "post_attention_layernorm.weight"], eps)
        h = F.silu(F.linear(m, p[pre + "mlp.gate_proj.weight"])) * F.linear(m, p[pre + "mlp.up_proj.weight"])
        x = x + F.linear(h, p[pre + "mlp.down_proj.weight"])
    x = rms_norm(x, p["model.norm.weight"], eps)
    logits = F.linear(x, p["lm_head.weight"])
    V = cfg["vocab_size"]
    return F.cross_entropy(logits[..., :V].reshape(-1, V).float(), targets.reshape(-1))


class TorchSide:
    """The peer. cpu: f32 eager. cuda: f32 master parameters on the GPU, forward and backward in
    bf16 autocast, SDPA attention and fused AdamW where this torch has them."""

    def __init__(self, dump, device="cpu", compile_peer=False):
        layout = json.loads((dump / "layout.json").read_text())
        cfg = dict(kv.split("=") for kv in layout["summary"].split())
        self.cfg = {k: int(v) if v.isdigit() else v for k, v in cfg.items()}
        self.cfg["norm_eps"] = layout["norm_eps"]
        self.cfg["rope_theta"] = layout.get("rope_theta", 10000.0)
        self.cfg["num_params"] = layout["num_params"]  # logical: padded vocab rows not counted
        self.device = device
        self.cuda = device == "cuda"
        self.forward = llama_forward if self.cfg["mlp"] == "swiglu" else gpt2_forward
        self.fused_attn = self.cuda and hasattr(F, "scaled_dot_product_attention")
        flat = np.fromfile(dump / "params.bin", dtype=np.float32)
        self.params = {}
        for e in layout["params"]:
            n = int(np.prod(e["shape"]))
            t = torch.from_numpy(flat[e["offset"] : e["offset"] + n].copy()).view(*e["shape"])
            self.params[e["name"]] = t.to(device).requires_grad_(True)
        del flat
        decay = [t for t in self.params.values() if t.dim() >= 2]
        rest = [t for t in self.params.values() if t.dim() < 2]
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
        hp = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
        self.opt_kind = "AdamW"
        if self.cuda:
            try:
                self.opt = torch.optim.AdamW(groups, fused=True, **hp)
                self.opt_kind = "AdamW fused"
            except (TypeError, RuntimeError):  # torch < 2.0: no fused AdamW
                self.opt = torch.optim.AdamW(groups, **hp)
        else:
            self.opt = torch.optim.AdamW(groups, **hp)
        window = np.fromfile(dump / "tokens.bin", dtype=np.int32).astype(np.int64)
        self.window = torch.from_numpy(window).to(device)
        # The same forward through torch.compile (default mode), sharing parameters and
        # optimizer: the second peer of a GPU step (BENCHMARKS.md); compiled on its first call.
        self.compiled = torch.compile(self.forward) if compile_peer else None

    def step(self, B, T, compiled=False):
        w = self.window.view(B, T + 1)
        forward = self.compiled if compiled else self.forward
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=False)
        if self.cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = forward(self.params, self.cfg, w[:, :-1], w[:, 1:], self.fused_attn)
        else:
            loss = self.forward(self.params, self.cfg, w[:, :-1], w[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), 1.0)
        self.opt.step()
        if self.cuda:
            torch.cuda.synchronize()
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
        flops = nuri_call(proc, "flops")["model_flops_per_token"] * B * T
        peak, peak_rss = r["peak_bytes"], r["peak_rss_bytes"]
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait()
    tokens = B * T
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
        "flops_formula": "model_flops_per_token * tokens (README: MFU)",
        "first_step_loss": {"nuri": nuri_first["loss"], "peer": torch_first},
    }


class Skip(Exception):
    """No CUDA device for nuri or torch: the run is skipped (exit 77)."""


def start_nuri(bin_path, model, B, T, d, backend):
    cmd = [str(bin_path), "--model", model, "--B", str(B), "--T", str(T), "--dump", d, "--backend", backend]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        rc = proc.wait()
        if rc == EXIT_SKIP:
            raise Skip("bench_train found no CUDA device (or was built without the CUDA backend)")
        raise RuntimeError(f"bench_train did not start (exit {rc}): {' '.join(cmd)}")
    return proc


def run_gpu(model, B, T, reps, bin_path, warmup, compile_peer):
    """One configuration on the GPU: nuri (--backend cuda) and PyTorch bf16 autocast (eager, and
    with compile_peer the same under torch.compile too), alternating."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as d:
        dump = Path(d)
        proc = start_nuri(bin_path, model, B, T, d, "cuda")
        try:
            peak_info = nuri_call(proc, "peak")
            flops = nuri_call(proc, "flops")["model_flops_per_token"] * B * T
            peer = TorchSide(dump, "cuda", compile_peer)
            nuri_first = nuri_call(proc, "step")          # warm-up, and the loss check
            _, torch_first = peer.step(B, T)
            compiled_first = peer.step(B, T, True)[1] if compile_peer else None  # compiles
            for _ in range(warmup - 1):
                nuri_call(proc, "step")
                peer.step(B, T)
                if compile_peer:
                    peer.step(B, T, True)
            nuri_s, torch_s, compiled_s = [], [], []
            for _ in range(reps):                          # A B (C) A B (C) ...
                r = nuri_call(proc, "step")
                nuri_s.append(r["seconds"])
                torch_s.append(peer.step(B, T)[0])
                if compile_peer:
                    compiled_s.append(peer.step(B, T, True)[0])
            phases = [nuri_call(proc, "phases") for _ in range(3)]
            proc.stdin.write("quit\n")
            proc.stdin.flush()
        finally:
            proc.stdin.close()
            proc.wait()
    tokens = B * T
    peak_tflops = peak_info.get("peak_bf16_tflops")
    n, p = summary(nuri_s), summary(torch_s)
    pc = summary(compiled_s) if compile_peer else None
    for side in (n, p, pc) if compile_peer else (n, p):
        side["tokens_per_s"] = tokens / side["median_s"]
        side["tflops"] = flops / side["median_s"] / 1e12
        side["mfu"] = side["tflops"] / peak_tflops if peak_tflops else None
    n["peak_bytes"] = r["peak_bytes"]                  # nuri's device allocator
    n["reserved_bytes"] = r.get("reserved_bytes")      # held from cudaMalloc: in use + cached
    # Where a step's time goes: 3 extra steps, the device drained after each phase (medians).
    n["phases_s"] = {k: statistics.median(ph[k] for ph in phases) for k in phases[0]}
    p["name"] = f"pytorch-cuda {torch.__version__} eager bf16 autocast" \
        + (", SDPA" if peer.fused_attn else ", matmul attention") + f", {peer.opt_kind}"
    p["peak_bytes"] = torch.cuda.max_memory_allocated()
    p["reserved_bytes"] = torch.cuda.max_memory_reserved()
    extra = {}
    if compile_peer:
        # Peak memory is not split between the two peers (one process, shared parameters).
        pc["name"] = p["name"].replace("eager", "torch.compile (default mode)")
        p["peak_note"] = "peak and reserved bytes are over the eager and compiled steps together"
        extra = {"peer_compiled": pc, "ratio_compiled": n["tokens_per_s"] / pc["tokens_per_s"],
                 "first_step_loss_compiled": compiled_first}
    del peer
    return {
        "bench": "train_step_gpu",
        "config": {"model": model, "B": B, "T": T, "reps": reps, "warmup": warmup,
                   "device": peak_info.get("device"), "sm": peak_info.get("sm"),
                   "precision": "bf16 compute, f32 master weights, gradients and AdamW state"},
        "nuri": n, "peer": p,
        "ratio": n["tokens_per_s"] / p["tokens_per_s"],
        "peak_bf16_tflops": peak_tflops, "peak_source": peak_info.get("source"),
        "flops_per_step": flops,
        "flops_formula": "model_flops_per_token * tokens (README: MFU)",
        "first_step_loss": {"nuri": nuri_first["loss"], "peer": torch_first},
        **extra,
    }


def find_cuda_torch():
    """None when this Python's torch can use a GPU; else the reason. Re-executes under another
    Python (the repo's venv, /usr/bin/python3) whose torch has CUDA, as attention_gpu.py does."""
    if torch is not None and torch.cuda.is_available():
        return None
    reexec_with_cuda_torch(ROOT, "NURI_TRAIN_REEXEC", "numpy, torch")
    if torch is None:
        return "no torch in this Python (nor one with CUDA in .venv or /usr/bin/python3)"
    if not torch.backends.cuda.is_built():
        return f"torch {torch.__version__} is built without CUDA"
    return "torch sees no CUDA device"


def main_gpu(args):
    reason = find_cuda_torch()
    if reason:
        print(f"train_throughput.py: --device cuda skipped: {reason}", file=sys.stderr)
        return EXIT_SKIP
    configs = [("gpt2-124M", 4, 256)] if args.quick else [("gpt2-124M", 8, 1024), ("llama-1B", 4, 2048)]
    configs = args.config or configs
    reps = 2 if args.quick else args.reps
    warmup = 1 if args.quick else 2
    out = []
    try:
        for model, B, T in configs:
            r = run_gpu(model, B, T, reps, args.bin, warmup, args.compile)
            print(json.dumps(r), flush=True)
            out.append(r)
    except Skip as e:
        print(f"train_throughput.py: --device cuda skipped: {e}", file=sys.stderr)
        return EXIT_SKIP
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in out))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=str(ROOT / "build" / "benchmarks" / "bench_train"))
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true",
                    help="a smoke test, 2 reps: gpt2-tiny B=4 T=64 (cpu), gpt2-124M B=4 T=256 (cuda)")
    ap.add_argument("--config", action="append", metavar="MODEL,B,T",
                    help="measure this configuration instead of the defaults (repeatable), "
                         "e.g. llama-tiny,4,64")
    ap.add_argument("--json", help="also write the JSON lines here")
    ap.add_argument("--compile", action="store_true",
                    help="cuda: also time the PyTorch step under torch.compile (a second peer, "
                         "peer_compiled; compiling takes a minute or more per configuration)")
    args = ap.parse_args()
    if args.config:
        args.config = [(m, int(b), int(t)) for m, b, t in (c.split(",") for c in args.config)]
    if args.device == "cuda":
        return main_gpu(args)
    if torch is None:
        sys.exit("train_throughput.py: needs torch (Debian's python3-torch: .venv/bin/python has it)")
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count()))
    torch.set_num_threads(threads)
    configs = [("gpt2-tiny", 4, 64)] if args.quick else [("gpt2-124M", 4, 64), ("gpt2-124M", 4, 256)]
    configs = args.config or configs
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
