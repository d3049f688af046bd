"""A short training run on the GPU from Python (label gpu): nuri.run with backend cuda on the
package this tree built; the first step's loss agrees with the CPU's within bf16 rounding and
the loss falls. Then a model file on the GPU and back: nuri.load(backend="cuda") gives the CPU
model's logits within bf16 rounding, and nuri.save of the GPU model writes the same weights.
Exit 77 (skipped) without a CUDA device."""
import io
import os
import sys
import tempfile

import numpy as np

import nuri

if not nuri.build_info()["cuda_devices"]:
    print("no CUDA device: skipped")
    sys.exit(77)
runs = {}
for backend in ("cpu", "cuda"):
    cfg = nuri.config_from_dict({
        "model": "gpt2-tiny", "backend": backend, "log_every": 5,
        "train": {"steps": 30, "micro_batch": 8, "seq_len": 64, "eval_every": 0},
        "sample": {"max_new_tokens": 0}})
    out = io.StringIO()
    result = nuri.run(cfg, stream=out)
    assert result["status"] == 0, out.getvalue()
    runs[backend] = (result, out.getvalue())
cpu, gpu = runs["cpu"][0], runs["cuda"][0]
first = {b: float(r[1].split("step     1/30 | loss ")[1][:6]) for b, r in runs.items()}
assert abs(first["cuda"] - first["cpu"]) < 2e-2, first
assert gpu["final_loss"] < first["cuda"] - 1.0, (gpu, first)
print(f"PASS: gpt2-tiny on cuda from Python: loss {first['cuda']:.4f} -> {gpu['final_loss']:.4f} "
      f"(cpu {first['cpu']:.4f} -> {cpu['final_loss']:.4f}), val {gpu['val_loss']:.4f}")

with tempfile.TemporaryDirectory() as tmp:
    src = nuri.Model("gpt2-tiny", "cpu", 5)
    nuri.save(src, os.path.join(tmp, "a.safetensors"))
    dev = nuri.load(os.path.join(tmp, "a.safetensors"), backend="cuda")
    tokens = (np.arange(128, dtype=np.int32) % 257).reshape(2, 64)
    want, got = np.asarray(src.logits(tokens)), np.asarray(dev.logits(tokens))
    err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    assert err < 3e-2, err
    nuri.save(dev, os.path.join(tmp, "b.safetensors"))
    back = nuri.load(os.path.join(tmp, "b.safetensors"))
    for name, a in src.parameters().items():
        np.testing.assert_array_equal(back.parameters()[name], a, err_msg=name)
print(f"PASS: a model file loaded on cuda (logits within {err:.2g} of the CPU's) and saved back")
