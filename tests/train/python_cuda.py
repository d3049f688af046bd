"""A short training run on the GPU from Python (label gpu): nuri.run with backend cuda on the
package this tree built; the first step's loss agrees with the CPU's within bf16 rounding and
the loss falls. Exit 77 (skipped) without a CUDA device."""
import io
import sys

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
