"""The planner's step time against measured, one CPU process (issue #24): `nuri calibrate`
measures this machine (products by width, attention by head dim, each kind of elementwise
work), then each configuration trains a few steps through nuri.Trainer and its median step time
(after warm-up) is set beside nuri.estimate_step_time's prediction from that profile; this is
done in rounds (see main). One JSON object per configuration and round, then per configuration
over the rounds (BENCHMARKS.md), then the largest error. Not a timed test: a benchmark.

  OMP_NUM_THREADS=2 PYTHONPATH=build/python .venv/bin/python benchmarks/plan_accuracy.py \\
      [--steps 6] [--rounds 3] [--json FILE]
"""
import argparse
import json
import statistics
import sys
import time

import nuri

# (name, preset, overrides, micro_batch, seq_len, recompute)
CONFIGS = [
    ("gpt2 d128 L4", "gpt2-tiny", dict(d_model=128, n_layer=4, n_head=4, n_kv_head=4, d_ff=512), 8, 128, "none"),
    ("demo d256 L4", "demo", {}, 8, 128, "none"),
    ("demo d256 L4, full recompute", "demo", {}, 8, 128, "full"),
    ("gpt2 d384 L6", "gpt2-tiny", dict(d_model=384, n_layer=6, n_head=6, n_kv_head=6, d_ff=1536), 4, 256, "none"),
    ("llama d512 L6", "llama-tiny", dict(d_model=512, n_layer=6, n_head=8, n_kv_head=4, d_ff=1408), 4, 256, "selective"),
    ("gpt2 d768 L4", "gpt2-tiny", dict(d_model=768, n_layer=4, n_head=12, n_kv_head=12, d_ff=3072), 4, 256, "none"),
]


def measure(name, preset, over, b, t, recompute, steps, prof):
    cfg = nuri.ModelConfig.preset(preset)
    for k, v in over.items():
        setattr(cfg, k, v)
    cfg.max_seq_len = max(cfg.max_seq_len, t)
    cfg.vocab_size = 257
    model = nuri.Model(cfg, seed=1)
    tc = nuri.TrainConfig(steps=steps + 2, micro_batch=b, seq_len=t, lr=1e-3, warmup_steps=1,
                          recompute=recompute)
    data = nuri.TokenFile.from_array([(i * 7 + i // 13) % 257 for i in range(200_000)],
                                     vocab_size=257)
    trainer = nuri.Trainer(model, tc, data)
    times = [trainer.step()["step_seconds"] for _ in range(steps + 2)][2:]
    layout = {"micro_batch": b, "grad_accum": 1, "recompute": recompute}
    pred = nuri.estimate_step_time(cfg, layout, t, prof)
    return cfg.num_params(), statistics.median(times), pred


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6, help="measured steps (after 2 of warm-up)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of calibrate-then-measure-every-configuration (medians reported)")
    ap.add_argument("--json", help="also write the records to this file")
    args = ap.parse_args()
    # This machine is shared: its speed drifts by tens of percent within minutes. Each round
    # calibrates and then measures every configuration right after, so the two see the same
    # machine; a configuration's error is that of the medians over the rounds.
    rounds, profiles = [], []
    for r in range(args.rounds):
        t0 = time.time()
        prof = nuri.calibrate("cpu", seconds_per_probe=0.5)
        profiles.append(prof)
        print(json.dumps({"round": r, "calibrated": prof, "seconds": round(time.time() - t0, 1)}),
              flush=True)
        got = {}
        for name, preset, over, b, t, recompute in CONFIGS:
            params, measured, pred = measure(name, preset, over, b, t, recompute, args.steps, prof)
            got[name] = (params, measured, pred)
            print(json.dumps({"round": r, "config": name, "measured_s": round(measured, 4),
                              "predicted_s": round(pred["total"], 4),
                              "error": round(pred["total"] / measured - 1, 3)}), flush=True)
        rounds.append(got)
    records = []
    for name, preset, over, b, t, recompute in CONFIGS:
        measured = statistics.median(g[name][1] for g in rounds)
        predicted = statistics.median(g[name][2]["total"] for g in rounds)
        parts = {k: round(statistics.median(g[name][2][k] for g in rounds), 4)
                 for k in rounds[0][name][2] if k != "total"}
        rec = {"benchmark": "plan_accuracy", "config": name, "params": rounds[0][name][0],
               "batch": [b, t], "recompute": recompute, "rounds": len(rounds),
               "measured_s": round(measured, 4), "predicted_s": round(predicted, 4),
               "error": round(predicted / measured - 1, 3),
               "round_errors": [round(g[name][2]["total"] / g[name][1] - 1, 3) for g in rounds],
               "predicted_parts": {k: v for k, v in parts.items() if v}}
        records.append(rec)
        print(json.dumps(rec), flush=True)
    worst = max(abs(r["error"]) for r in records)
    print(json.dumps({"benchmark": "plan_accuracy", "configs": len(records),
                      "largest_error": worst}))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"profiles": profiles, "records": records, "largest_error": worst}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
