"""``python -m nuri`` end to end in subprocesses: a training run and its directory, losses equal
to the C++ nuri-train's for the same settings, generate, info, and one-line errors."""

from __future__ import annotations

import io
import json
import re
import subprocess

import pytest

import nuri
from conftest import nuri_train_binary, run_cli
from nuri.cli import Progress

METRIC_FIELDS = {"step", "loss", "lr", "grad_norm", "tokens_per_s", "peak_bytes"}


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except Exception:
        return False
    return True


def test_train_writes_the_run_directory(tmp_path, tiny_config):
    proc = run_cli("train", "--config", str(tiny_config), "--out", "run", "train.lr=2e-3",
                   cwd=tmp_path)
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "model.safetensors", "sample.txt"):
        assert (run / name).is_file(), name
    if matplotlib_available():
        assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert not (run / "loss.png").exists() and "loss plot skipped" in proc.stderr

    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == list(range(1, 11))
    assert all(METRIC_FIELDS <= set(m) for m in metrics)
    assert [m["step"] for m in metrics if "val_loss" in m] == [5, 10]  # eval_every 5, and the end
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.5
    assert all(m["peak_bytes"] > 0 and m["tokens_per_s"] > 0 for m in metrics)

    # config.json is the resolved config, override included, and reads back to the same config.
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["train"]["lr"] == 0.002 and resolved["out"] == "run"
    expected = nuri.apply_overrides(nuri.load_config(tiny_config), ["train.lr=2e-3", "out=run"])
    assert nuri.config_from_dict(resolved) == expected
    assert nuri.load_config(run / "config.json") == expected

    # Plain progress lines (not a terminal, log_every 1), validation lines, sample, summary.
    out = proc.stdout
    assert re.search(r"step +10/10 \| loss \d+\.\d{4} \| lr .* tok/s \| eta", out)
    assert len(re.findall(r"step +\d+/10 \| loss", out)) == 10
    assert re.search(r"step +0 \| val loss \d", out) and re.search(r"step +10 \| val loss", out)
    assert "---- sample" in out and "the " in (run / "sample.txt").read_text()
    last_val = metrics[-1]["val_loss"]
    assert re.search(rf"done in .*val loss {last_val:.4f}; 0 skipped steps", out)

    model = nuri.load(run / "model.safetensors")
    assert model.config.to_dict() == nuri.ModelConfig.preset("gpt2-tiny").to_dict()

    # generate from the run directory: the prompt, then a continuation; the same for a seed.
    gen = ["generate", "--run", "run", "--prompt", "the GPU ", "--max-new-tokens", "24",
           "--seed", "4"]
    first = run_cli(*gen, cwd=tmp_path).stdout
    assert first.startswith("the GPU ") and len(first) > len("the GPU ")
    assert run_cli(*gen, cwd=tmp_path).stdout == first
    greedy = run_cli("generate", "--model", "run/model.safetensors", "--prompt", "a",
                     "--temperature", "0", "--max-new-tokens", "8", cwd=tmp_path).stdout
    assert greedy.startswith("a")


def test_quiet_json_config_prints_only_the_summary(tmp_path, corpus):
    config = {"model": "llama-tiny", "train": {"steps": 3, "micro_batch": 2, "seq_len": 16,
                                                "eval_every": 0, "eval_batches": 1},
              "sample": {"max_new_tokens": 8}}
    (tmp_path / "run.json").write_text(json.dumps(config))
    proc = run_cli("train", "--config", "run.json", "--data", "corpus.txt", "--out", "q",
                   "--quiet", cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("done in "), proc.stdout
    assert [m["step"] for m in read_metrics(tmp_path / "q")] == [1, 2, 3]
    assert [("val_loss" in m) for m in read_metrics(tmp_path / "q")] == [False, False, True]


def test_without_matplotlib_the_plot_is_skipped_with_the_reason(tmp_path, tiny_config):
    blocker = tmp_path / "no_matplotlib" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('blocked for this test')\n")
    proc = run_cli("train", "--config", str(tiny_config), "--out", "run", "--quiet",
                   "train.steps=2", cwd=tmp_path, path_first=(str(blocker.parent),))
    assert "nuri: loss plot skipped: matplotlib cannot be imported (ImportError: blocked for " \
           "this test)" in proc.stderr
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert not (tmp_path / "run" / "loss.png").exists()


def test_progress_rewrites_one_line_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    progress = Progress(total=3, log_every=10, quiet=False, stream=out)
    stats = {"loss": 2.5, "lr": 1e-3, "grad_norm": 0.5, "skipped": False}
    for n in (1, 2):
        progress.step({**stats, "step": n}, tok_per_s=1000.0, elapsed=float(n))
    progress.line("step     2 | val loss 2.4000")
    progress.step({**stats, "step": 3, "skipped": True}, tok_per_s=1000.0, elapsed=3.0)
    progress.close()
    text = out.getvalue()
    assert text.count("\r") == 3 and text.count("\n") == 3
    assert "\rstep     2/3 | loss 2.5000 | lr 1.00e-03 | norm  0.500 |    1000 tok/s | eta 0m01s" \
        in text
    assert "\x1b[K\nstep     2 | val loss 2.4000\n\rstep     3/3" in text
    assert text.endswith("SKIPPED (non-finite)\x1b[K\n")


def test_losses_equal_the_cpp_nuri_train_for_the_same_settings(tmp_path, tiny_config):
    binary = nuri_train_binary()
    flags = ["--model", "gpt2-tiny", "--steps", "10", "--batch", "4", "--seq", "32",
             "--accum", "2", "--lr", "3e-3", "--warmup", "2", "--min-lr-ratio", "0.1",
             "--weight-decay", "0.1", "--clip", "1.0", "--eval-every", "5",
             "--eval-batches", "2", "--seed", "7", "--log-every", "1", "--sample", "0"]
    cpp = subprocess.run([str(binary), "--data", "corpus.txt", *flags], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert cpp.returncode == 0, cpp.stderr
    cpp_losses = re.findall(r"step +\d+/10 \| loss (\d+\.\d{4})", cpp.stdout)
    cpp_val = re.findall(r"step +(\d+) \| val loss (\d+\.\d{4})", cpp.stdout)
    assert len(cpp_losses) == 10 and len(cpp_val) == 3, cpp.stdout

    run_cli("train", "--config", str(tiny_config), "--out", "py", "--quiet", cwd=tmp_path)
    metrics = read_metrics(tmp_path / "py")
    assert [f"{m['loss']:.4f}" for m in metrics] == cpp_losses
    py_val = [(str(m["step"]), f"{m['val_loss']:.4f}") for m in metrics if "val_loss" in m]
    assert py_val == cpp_val[1:]  # the C++ program also evaluates before step 1


def test_info_prints_the_build():
    proc = run_cli("info", cwd=".")
    info = nuri.build_info()
    assert proc.stdout.startswith(f"nuri {info['version']}\n")
    assert f"BLAS:       {info['blas']}" in proc.stdout
    assert "backends:   " + ", ".join(info["backends"]) in proc.stdout
    assert "CUDA:" in proc.stdout and "MPI:" in proc.stdout


def test_info_lists_cuda_devices_and_architectures():
    proc = run_cli("info", cwd=".")
    info = nuri.build_info()
    devices, archs = info["cuda_devices"], info["cuda_architectures"]
    assert isinstance(devices, list) and isinstance(archs, list)
    if "cuda" not in info["backends"] and "cuda-emu" not in info["backends"]:
        # The wheel builds CPU-only (pyproject sets NURI_CUDA=OFF): no devices, no architectures.
        assert devices == [] and archs == []
        assert "\n  cuda archs: none (CPU-only build)\n" in proc.stdout
        assert "\n  cuda devices: none\n" in proc.stdout
    else:  # a CUDA or emulated build: one line per device, named as the runtime names it
        assert f"  cuda devices: {len(devices) or 'none'}\n" in proc.stdout
        for d in devices:
            assert f"cuda:{d['index']}  {d['name']}, sm_{d['major']}{d['minor']}, " in proc.stdout
            assert f"{d['sms']} SMs" in proc.stdout
        for a in archs:
            assert f"sm_{a}" in proc.stdout


@pytest.mark.parametrize("args, status, message", [
    (["train", "--config", "tiny.toml", "train.lr=fast"], 2,
     "nuri: train.lr: expected a number, got 'fast'"),
    (["train", "--config", "tiny.toml", "model.colour=red"], 2,
     "nuri: model.colour: unknown key; known keys: bias"),
    (["train", "--config", "missing.toml"], 2, "nuri: cannot read config missing.toml"),
    (["train", "--config", "tiny.toml", "--data", "nothing.txt"], 1,
     "nuri: cannot open data file nothing.txt"),
    (["train", "--config", "tiny.toml", "model.vocab_size=100"], 1,
     "nuri: corpus.txt: token id"),
    (["train", "--config", "tiny.toml", "train.micro_batch=100"], 1, "fewer than one global batch"),
    (["generate", "--model", "nothing.safetensors"], 1, "nuri: cannot open model file"),
])
def test_errors_are_one_line_without_traceback(tmp_path, tiny_config, args, status, message):
    proc = run_cli(*args, "--out", "r", cwd=tmp_path, expect=status) if args[0] == "train" \
        else run_cli(*args, cwd=tmp_path, expect=status)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # no run directory for a run that could not start


def test_usage_errors_exit_2(tmp_path):
    assert "required" in run_cli("train", cwd=tmp_path, expect=2).stderr
    assert "invalid choice" in run_cli("fly", cwd=tmp_path, expect=2).stderr
    assert "unrecognized arguments: --fast" in run_cli(
        "train", "--config", "x.toml", "--fast", cwd=tmp_path, expect=2).stderr
