"""The planner from Python and the command line (issue #24): plans that list what fits and why
the rest does not, device profiles (shipped, calibrated here, and refused when malformed), a
run with layout = auto, and MFU's FLOPs."""

from __future__ import annotations

import io
import json

import pytest

import nuri
from conftest import run_cli


def test_plan_lists_the_layouts_that_fit_best_first():
    cfg = nuri.ModelConfig.preset("llama-1B")
    result = nuri.plan(cfg, device="rtx-4090", devices_per_node=4, seq_len=2048, global_batch=16)
    fits = [e for e in result.entries if e["fits"]]
    assert fits and len(fits) < len(result.entries)
    assert all(e["fits"] for e in result.entries[:len(fits)]), "those that fit come first"
    speeds = [e["tokens_per_second"] for e in fits]
    assert all(a >= b * 0.998 for a, b in zip(speeds, speeds[1:])), "fastest first"
    usable = 0.9 * nuri.device_profile("rtx-4090")["memory_bytes"]
    for e in result.entries:
        m = e["memory"]
        parts = sum(m[k] for k in ("parameters", "gradients", "optimizer", "activations",
                                   "communication", "workspace"))
        assert m["step"] == parts and m["peak"] == max(parts, m["construction"])
        assert e["fits"] == (m["peak"] <= usable), e["layout"]["summary"]
        layout = e["layout"]
        assert layout["dp"] * layout["tp"] * layout["pp"] == 4
        assert layout["dp"] * layout["micro_batch"] * layout["grad_accum"] == 16
    assert "do not fit" in result.text and " 1. " in result.text
    # One entry again, through estimate_memory (its layout as plan gave it): the same bytes.
    e = fits[0]
    again = nuri.estimate_memory(cfg, e["layout"], 2048, "rtx-4090", stage=e["worst_stage"])
    assert again["peak"] == e["memory"]["peak"]


def test_mfu_flops_are_the_documented_formula():
    cfg = nuri.ModelConfig.preset("gpt2-124M")
    c, L, T, V = cfg.d_model, cfg.n_layer, 1024, (cfg.vocab_size + 63) // 64 * 64
    block = 4 * c * c + 2 * c * cfg.d_ff  # qkv, proj, fc, fc proj
    want = 6 * (L * block + V * c) + L * 6 * 2 * T * c / 2
    assert nuri.model_flops_per_token(cfg, T) == pytest.approx(want, rel=1e-12)


def test_device_profiles_read_back_and_refuse_malformed_files(tmp_path):
    assert {"h100-sxm-80gb", "a100-sxm-80gb", "rtx-4090", "rtx-3090", "cpu"} <= set(
        nuri.device_profile_names())
    h100 = nuri.device_profile("h100-sxm-80gb")
    assert h100["peak_flops"] == pytest.approx(989.4e12) and "datasheet" in h100["source"]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(h100))
    assert nuri.device_profile(str(path)) == h100
    with pytest.raises(nuri.Error, match="unknown device 'h200'.*h100-sxm-80gb"):
        nuri.device_profile("h200")
    bad = dict(h100)
    del bad["matmul_flops"]
    path.write_text(json.dumps(bad))
    with pytest.raises(nuri.Error, match='needs "matmul_flops"'):
        nuri.device_profile(str(path))
    path.write_text("{not json")
    with pytest.raises(nuri.Error, match="not a device profile"):
        nuri.device_profile(str(path))


def test_calibrate_measures_this_machine_into_a_profile_file(tmp_path):
    out = tmp_path / "cpu.json"
    prof = nuri.calibrate("cpu", out=str(out), seconds_per_probe=0.02)
    assert prof["gpu"] is False and "measured by nuri calibrate" in prof["source"]
    assert prof["matmul_flops"] > 1e8 and prof["attention_flops"] > 1e7
    assert prof["memory_bandwidth"] > 1e7 and prof["peak_flops"] == prof["matmul_flops"]
    widths = [k for k, _ in prof["matmul_by_width"]]
    assert widths == sorted(widths) and widths[0] == 64 and widths[-1] == 2048
    assert [d for d, _ in prof["attention_by_head_dim"]] == [32, 64, 128]
    assert [t for t, _ in prof["attention_by_seq_len"]] == [128, 512, 2048]
    assert dict(prof["attention_by_seq_len"])[512] == 1.0
    assert sorted(prof["op_bandwidth"]) == ["adamw", "cross_entropy", "gelu", "layernorm",
                                            "rmsnorm", "rope", "swiglu"]
    assert all(v > 1e6 for v in prof["op_bandwidth"].values())
    assert prof["memory_bandwidth"] == prof["op_bandwidth"]["adamw"]
    assert nuri.device_profile(str(out)) == prof
    # The planner takes the file.
    cfg = nuri.ModelConfig.preset("gpt2-tiny")
    t = nuri.estimate_step_time(cfg, {"micro_batch": 4}, 64, str(out))
    assert t["total"] > 0 and t["compute"] > 0 and t["dp_comm"] == 0


def test_step_time_charges_each_kind_of_work_at_its_own_speed():
    gpt2 = nuri.ModelConfig.preset("gpt2-tiny")
    llama = nuri.ModelConfig.preset("llama-tiny")
    base = nuri.device_profile("cpu")
    layout = {"micro_batch": 4}

    def elementwise(cfg, **rates):
        prof = dict(base, op_bandwidth=dict(rates))
        return nuri.estimate_step_time(cfg, layout, 64, prof)["elementwise"]

    # GELU's share is bytes over its rate: halving the rate doubles it, and nothing else moves.
    # A SwiGLU model does no GELU work.
    fast = elementwise(gpt2, gelu=1e30)
    at = elementwise(gpt2, gelu=1e9)
    half = elementwise(gpt2, gelu=5e8)
    assert at > fast and half - fast == pytest.approx(2 * (at - fast), rel=1e-9)
    assert elementwise(llama, gelu=5e8) == elementwise(llama, gelu=1e30)
    assert elementwise(llama, swiglu=5e8) > elementwise(llama, swiglu=1e30)
    # A kind the profile does not list runs at memory_bandwidth.
    assert elementwise(gpt2) == elementwise(gpt2, gelu=base["memory_bandwidth"])
    # Attention on short sequences at the measured share of its speed at 512.
    slow_short = dict(base, attention_by_seq_len=[[64, 0.5], [512, 1.0]])
    plain = nuri.estimate_step_time(gpt2, layout, 64, base)["compute"]
    slowed = nuri.estimate_step_time(gpt2, layout, 64, slow_short)["compute"]
    assert slowed > plain
    gpt2.max_seq_len = max(gpt2.max_seq_len, 512)
    assert (nuri.estimate_step_time(gpt2, layout, 512, slow_short)["compute"] ==
            nuri.estimate_step_time(gpt2, layout, 512, base)["compute"])
    with pytest.raises(nuri.Error, match='"op_bandwidth" "gelu" must be a positive number'):
        nuri.estimate_step_time(gpt2, layout, 64, dict(base, op_bandwidth={"gelu": -1}))


def test_plan_command_line(tmp_path):
    proc = run_cli("plan", "--preset", "gpt2-350M", "--device", "rtx-3090",
                   "--devices-per-node", "2", "--seq-len", "1024", "--rows", "3", cwd=tmp_path)
    assert "2 x rtx-3090" in proc.stdout and " 1. dp " in proc.stdout
    proc = run_cli("plan", "--preset", "gpt2-350M", "--device", "rtx-3090", "--json",
                   "--devices-per-node", "2", "--seq-len", "1024", "--rows", "2", cwd=tmp_path)
    entries = json.loads(proc.stdout)
    assert len(entries) == 2 and entries[0]["fits"]
    # Nothing fits: exit 3 and say what to change.
    proc = run_cli("plan", "--preset", "llama-1B", "--device", "cpu", "--seq-len", "2048",
                   "--usable", "0.0001", cwd=tmp_path, expect=3)
    assert "nothing fits" in proc.stdout
    proc = run_cli("plan", "--preset", "gpt2-124M", "--device", "nope", cwd=tmp_path, expect=1)
    assert "unknown device 'nope'" in proc.stderr


def test_plan_of_a_run_config_plans_what_its_run_trains(tmp_path):
    # A fine-tuning config: the model is checkpoint.init's (a RoPE model whose max_seq_len grows
    # to the run's 512 tokens), planned at the config's seq_len and global batch.
    file = tmp_path / "llama.safetensors"
    nuri.save(nuri.Model("llama-tiny", "cpu", 1, init="zeros"), file)
    (tmp_path / "run.toml").write_text(
        f'[train]\nseq_len = 512\nglobal_batch = 16\n[checkpoint]\ninit = "{file}"\n')
    model = nuri.ModelConfig.preset("llama-tiny")
    model.max_seq_len = 512
    expected = nuri.plan(model, device="cpu", seq_len=512, global_batch=16, rows=3).entries[:3]
    proc = run_cli("plan", "--config", "run.toml", "--device", "cpu", "--json", "--rows", "3",
                   cwd=tmp_path)
    assert json.loads(proc.stdout) == expected
    assert "sequence 512" in run_cli("plan", "--config", "run.toml", "--device", "cpu",
                                     cwd=tmp_path).stdout
    # Without a global batch: micro_batch x grad_accum a device, as --layout auto keeps it; the
    # flags win over the config.
    (tmp_path / "run.toml").write_text(
        f'[train]\nseq_len = 64\nmicro_batch = 3\ngrad_accum = 2\n'
        f'[checkpoint]\ninit = "{file}"\n')
    model.max_seq_len = 128
    proc = run_cli("plan", "--config", "run.toml", "--device", "cpu", "--devices-per-node", "2",
                   "--json", "--rows", "3", cwd=tmp_path)
    assert json.loads(proc.stdout) == nuri.plan(model, device="cpu", devices_per_node=2,
                                                seq_len=64, global_batch=12, rows=3).entries[:3]
    proc = run_cli("plan", "--config", "run.toml", "--device", "cpu", "--seq-len", "32",
                   "--global-batch", "4", "--json", "--rows", "3", cwd=tmp_path)
    assert json.loads(proc.stdout) == nuri.plan(model, device="cpu", seq_len=32,
                                                global_batch=4, rows=3).entries[:3]


def test_a_run_with_layout_auto_takes_the_plans_first_choice(tmp_path):
    cfg = nuri.RunConfig()
    cfg.preset = "gpt2-tiny"
    cfg.train.steps = 2
    cfg.train.seq_len = 32
    cfg.train.micro_batch = 2
    cfg.train.grad_accum = 2
    cfg.sample.max_new_tokens = 0
    cfg.layout = "auto"
    cfg.out = str(tmp_path / "run")
    out = io.StringIO()
    result = nuri.run(cfg, stream=out, plot=False)
    assert result["status"] == 0
    text = out.getvalue()
    assert "layout auto (cpu): dp 1 x tp 1 x pp 1" in text, text
    ledger = [json.loads(l) for l in (tmp_path / "run" / "ledger.jsonl").read_text().splitlines()]
    assert [r["event"] for r in ledger] == ["start", "end"]
    assert ledger[0]["tokens_per_step"] == 2 * 2 * 32  # the global batch kept
    # train.global_batch is the batch the plan keeps, whatever micro_batch x grad_accum says.
    cfg.train.global_batch = 8
    cfg.out = str(tmp_path / "run8")
    out = io.StringIO()
    assert nuri.run(cfg, stream=out, plot=False)["status"] == 0
    ledger = [json.loads(l) for l in (tmp_path / "run8" / "ledger.jsonl").read_text().splitlines()]
    assert ledger[0]["tokens_per_step"] == 8 * 32, out.getvalue()
    cfg.train.global_batch = 0
    with pytest.raises(nuri.ConfigError, match="layout: 'sideways' is neither manual nor auto"):
        cfg.layout = "sideways"
        cfg.validate()
    cfg.layout = "auto"
    cfg.profile = "h200"
    with pytest.raises(nuri.ConfigError, match="profile: unknown device 'h200'"):
        cfg.validate()
