"""PyTorch parity: the same model built in PyTorch (float64, CPU) from nuri's initial weights and
batch must give nuri's logits, loss, every parameter gradient, and the losses of 10 AdamW steps.

nuri computes in float32; the reference runs in float64, so the differences measured here are
nuri's own rounding error. Bounds (max |nuri - torch| / max |torch| per tensor), about 8x the
largest error measured (2026-11-22: logits 3.2e-7, gradients 6.4e-7, AdamW losses 6.8e-8):
  logits, loss            2e-6
  each gradient           5e-6
  AdamW losses (10 steps) 5e-7 relative each
The dump comes from tests/parity/parity_dump (built by CMake), found through NURI_BUILD_DIR.
"""
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("NURI_BUILD_DIR", ROOT / "build"))
LOGITS_TOL, GRAD_TOL, ADAMW_TOL = 2e-6, 5e-6, 5e-7


def load_dump(preset, tmp_path):
    exe = BUILD / "tests" / "parity_dump"
    assert exe.exists(), f"{exe} not built; run scripts/test.sh or set NURI_BUILD_DIR"
    subprocess.run([str(exe), preset, str(tmp_path), "2", "32"], check=True)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    dtypes = {"f32": np.float32, "i32": np.int32}
    tensors = {}
    for t in manifest["tensors"]:
        arr = np.fromfile(tmp_path / t["file"], dtype=dtypes[t["dtype"]])
        tensors[t["name"]] = arr.reshape(t["shape"])
    cfg = dict(kv.split("=") for kv in manifest["config"]["summary"].split())
    cfg = {k: (int(v) if v.lstrip("-").isdigit() else v) for k, v in cfg.items()}
    cfg["norm_eps"] = manifest["config"]["norm_eps"]
    cfg["rope_theta"] = manifest["config"]["rope_theta"]
    cfg["padded_vocab"] = manifest["config"]["padded_vocab"]
    return cfg, tensors, manifest["adamw"]


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def rotate_half(x, theta):
    """Rotary embedding, rotate-half convention, x [B, T, H, D]."""
    t, d = x.shape[1], x.shape[3]
    inv = theta ** (-torch.arange(0, d // 2, dtype=torch.float64) * 2 / d)
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv[None, :]  # [T, D/2]
    cos = torch.cat([ang.cos(), ang.cos()], -1)[None, :, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], -1)[None, :, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def forward(cfg, p, tokens, targets):
    """The reference transformer, written out; p maps nuri's parameter names to tensors."""
    gpt2 = cfg["mlp"] == "gelu"
    B, T = tokens.shape
    C, H, KV = cfg["d_model"], cfg["n_head"], cfg["n_kv_head"]
    D = C // H

    def norm(x, prefix):
        if cfg["norm"] == "layernorm":
            return F.layer_norm(x, (C,), p[prefix + ".weight"], p.get(prefix + ".bias"), cfg["norm_eps"])
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + cfg["norm_eps"]) * p[prefix + ".weight"]

    def linear(x, name):
        return F.linear(x, p[name + ".weight"], p.get(name + ".bias"))

    wte = p["wte.weight" if gpt2 else "model.embed_tokens.weight"]
    x = wte[tokens]
    if cfg["position"] == "learned":
        x = x + p["wpe.weight" if gpt2 else "model.embed_positions.weight"][:T]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for l in range(cfg["n_layer"]):
        pre = f"h.{l}." if gpt2 else f"model.layers.{l}."
        a = norm(x, pre + ("ln_1" if gpt2 else "input_layernorm"))
        if gpt2:
            qkv = linear(a, pre + "attn.c_attn")
            q, k, v = qkv.split([H * D, KV * D, KV * D], -1)
        else:
            q, k, v = (linear(a, pre + f"self_attn.{n}_proj") for n in "qkv")
        q, k, v = q.view(B, T, H, D), k.view(B, T, KV, D), v.view(B, T, KV, D)
        if cfg["position"] == "rope":
            q, k = rotate_half(q, cfg["rope_theta"]), rotate_half(k, cfg["rope_theta"])
        k, v = k.repeat_interleave(H // KV, dim=2), v.repeat_interleave(H // KV, dim=2)
        s = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D)
        s = s.masked_fill(~mask, float("-inf"))
        y = torch.einsum("bhts,bshd->bthd", s.softmax(-1), v).reshape(B, T, H * D)
        x = x + linear(y, pre + ("attn.c_proj" if gpt2 else "self_attn.o_proj"))
        m = norm(x, pre + ("ln_2" if gpt2 else "post_attention_layernorm"))
        if gpt2:
            h = F.gelu(linear(m, pre + "mlp.c_fc"), approximate="tanh")
            x = x + linear(h, pre + "mlp.c_proj")
        else:
            h = F.silu(linear(m, pre + "mlp.gate_proj")) * linear(m, pre + "mlp.up_proj")
            x = x + linear(h, pre + "mlp.down_proj")
    x = norm(x, "ln_f" if gpt2 else "model.norm")
    head = wte if cfg["tied"] == "true" else p["lm_head.weight"]
    logits = x @ head.T  # [B, T, Vp]
    V = cfg["vocab_size"]
    loss = F.cross_entropy(logits[..., :V].reshape(-1, V), targets.reshape(-1), ignore_index=-100)
    return logits, loss


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_matches_pytorch(preset, tmp_path):
    cfg, t, hp = load_dump(preset, tmp_path)
    names = [n[len("param."):] for n in t if n.startswith("param.")]
    params = {n: torch.tensor(t["param." + n], dtype=torch.float64, requires_grad=True) for n in names}
    tokens = torch.tensor(t["tokens"], dtype=torch.long)
    targets = torch.tensor(t["targets"], dtype=torch.long)

    logits, loss = forward(cfg, params, tokens, targets)
    e_logits, e_loss = rel_err(t["logits"], logits.detach()), rel_err(t["loss"], loss.detach().reshape(1))
    print(preset, f"logits error {e_logits:.2e}, loss error {e_loss:.2e}")
    assert e_logits <= LOGITS_TOL and e_loss <= LOGITS_TOL
    loss.backward()
    worst = {n: rel_err(t["grad." + n], params[n].grad) for n in names}
    print(preset, "worst gradient error:", max(worst.items(), key=lambda kv: kv[1]))
    bad = {n: e for n, e in worst.items() if e > GRAD_TOL}
    assert not bad, f"gradients beyond {GRAD_TOL}: {bad}"

    # 10 AdamW steps on the same batch, weight decay on matrices only (as nuri does).
    for prm in params.values():
        prm.grad = None
    groups = [
        {"params": [params[n] for n in names if params[n].dim() >= 2], "weight_decay": hp["weight_decay"]},
        {"params": [params[n] for n in names if params[n].dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"])
    losses = []
    for step in range(10):
        opt.zero_grad()
        _, l = forward(cfg, params, tokens, targets)
        l.backward()
        opt.step()
        with torch.no_grad():
            losses.append(forward(cfg, params, tokens, targets)[1].item())
    # nuri's dump holds the loss after each of the 10 updates (last entry: after update 10).
    nuri_losses = t["adamw_losses"]
    print(preset, "losses nuri:", np.round(nuri_losses, 5), "torch:", np.round(losses, 5))
    print(preset, "AdamW loss errors:", max(abs(a - b) / abs(b) for a, b in zip(nuri_losses, losses)))
    for i, (a, b) in enumerate(zip(nuri_losses, losses)):
        assert abs(a - b) / abs(b) <= ADAMW_TOL, f"step {i + 1}: nuri {a}, torch {b}"
    assert losses[-1] < losses[0] < float(loss), "AdamW on one batch must lower its loss"
