"""``python -m nuri`` end to end in subprocesses: a training run and its directory, the same run
as the C++ nuri-train and as a loop over nuri.Trainer (bit for bit), progress on a terminal and
off it, generate, info, and one-line errors that nuri-train prints alike."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nuri
from conftest import cli_env, nuri_train_binary, run_cli

METRIC_FIELDS = {"step", "loss", "lr", "grad_norm", "tokens_per_s", "step_seconds", "peak_bytes",
                 "skipped"}
TIMING = re.compile(r" *\d+ tok/s|eta \d+m\d\ds|done in \d+m\d\ds|\d+\.\d MiB")


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

    # config.json is the resolved config, overrides included, and reads back to the same config.
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["train"]["lr"] == 0.002 and resolved["out"] == "run"
    expected = nuri.apply_overrides(nuri.load_config(tiny_config), ["train.lr=2e-3", "out=run"])
    assert nuri.config_from_dict(resolved) == expected
    assert nuri.load_config(run / "config.json") == expected

    # Plain progress lines (not a terminal, log_every 1), validation lines, sample, summary.
    out = proc.stdout
    assert re.search(r"step +10/10 \| loss \d+\.\d{4} \| lr .* tok/s \| eta", out)
    assert len(re.findall(r"step +\d+/10 \| loss", out)) == 10
    assert re.search(r"step +0 \| val loss \d", out)
    assert re.search(r"step +10 \| val loss \d\.\d{4} \(unigram baseline", out)
    assert "---- sample" in out and "the " in (run / "sample.txt").read_text()
    last_val = metrics[-1]["val_loss"]
    assert re.search(rf"done in .*: val loss {last_val:.4f} vs unigram baseline .*; 0 skipped",
                     out)

    model = nuri.load(run / "model.safetensors")
    assert model.config == nuri.ModelConfig.preset("gpt2-tiny")

    # generate from the run directory: the prompt, then a continuation; the same for a seed.
    gen = ["generate", "--run", "run", "--prompt", "the GPU ", "--max-new-tokens", "24",
           "--seed", "4"]
    first = run_cli(*gen, cwd=tmp_path).stdout
    assert first.startswith("the GPU ") and len(first) > len("the GPU ")
    assert run_cli(*gen, cwd=tmp_path).stdout == first
    greedy = run_cli("generate", "--model", "run/model.safetensors", "--prompt", "a",
                     "--temperature", "0", "--max-new-tokens", "8", cwd=tmp_path).stdout
    assert greedy.startswith("a")


def test_progress_rewrites_one_line_on_a_terminal_and_quiet_prints_lines(tmp_path, corpus):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    cfg = nuri.config_from_dict({"model": "gpt2-tiny", "data": {"train": str(corpus)},
                                 "train": {"steps": 3, "micro_batch": 2, "seq_len": 16,
                                           "eval_every": 2, "eval_batches": 1},
                                 "sample": {"max_new_tokens": 0}, "log_every": 10})
    out = Terminal()
    assert nuri.run(cfg, stream=out)["status"] == 0
    text = out.getvalue()
    # Step 1 is shown; step 2 may be skipped (at most ten updates a second); the last is shown.
    assert "\rstep     1/3 | loss" in text and "\rstep     3/3 | loss" in text
    assert "\x1b[K\nstep     2 | val loss" in text  # the progress line is ended before a line
    assert "\n" not in text[text.index("\rstep     1/3"):text.index("\x1b[K")]
    quiet = Terminal()
    cfg.quiet = True
    assert nuri.run(cfg, stream=quiet)["status"] == 0
    lines = quiet.getvalue()
    assert "\r" not in lines and "\x1b" not in lines
    assert re.findall(r"step +(\d)/3 \| loss", lines) == ["1", "3"]  # log_every 10: first, last


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


def api_losses(cfg: nuri.RunConfig) -> list[tuple[float, float, float | None]]:
    """The run of cfg written by hand over nuri.Trainer: (loss, grad_norm, val_loss) per step."""
    data = nuri.read_data(cfg.data.train, cfg.model.vocab_size)
    train, val = nuri.split_validation(data)
    model = nuri.Model(cfg.model, cfg.backend, cfg.train.seed)
    trainer = nuri.Trainer(model, cfg.train, train, val, parallel=cfg.parallel)
    out = []
    for _ in range(cfg.train.steps):
        st = trainer.step()
        evaluate = st["step"] % cfg.train.eval_every == 0 or st["step"] == cfg.train.steps
        out.append((st["loss"], st["grad_norm"], trainer.evaluate() if evaluate else None))
    return out


def test_nuri_train_python_m_nuri_and_the_api_give_the_same_run(tmp_path, tiny_config):
    binary = nuri_train_binary()
    cpp = subprocess.run([str(binary), "--config", str(tiny_config), "--out", "cpp"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert cpp.returncode == 0, cpp.stderr
    py = run_cli("train", "--config", str(tiny_config), "--out", "py", cwd=tmp_path)
    # The same output, line for line, but for timings and the run directory's name.
    assert TIMING.sub("T", cpp.stdout).replace("cpp", "DIR") == \
        TIMING.sub("T", py.stdout).replace("py", "DIR")
    # The same metrics bit for bit (JSON numbers are the float32 values exactly), but timings.
    untimed = [{k: v for k, v in m.items() if k not in ("tokens_per_s", "step_seconds")}
               for m in read_metrics(tmp_path / "cpp")]
    assert untimed == [{k: v for k, v in m.items() if k not in ("tokens_per_s", "step_seconds")}
                       for m in read_metrics(tmp_path / "py")]
    assert (tmp_path / "cpp" / "model.safetensors").read_bytes() == \
        (tmp_path / "py" / "model.safetensors").read_bytes()
    assert (tmp_path / "cpp" / "sample.txt").read_text() == (tmp_path / "py" / "sample.txt").read_text()
    # And a loop over nuri.Trainer with the config's pieces, in a fresh interpreter as a user's
    # script would run it: in this one the OpenMP thread count (so the CPU backend's BLAS sums)
    # is whatever an earlier import left, and torch, which other test modules import when pytest
    # collects them, sets it to its own count (1 on a 2-core machine, where the two runs above use
    # 2: the losses then differ in the last bits).
    script = ("import json, sys; import nuri; from test_cli import api_losses; "
              "cfg = nuri.load_config(sys.argv[1]); cfg.data.train = sys.argv[2]; "
              "print(json.dumps(api_losses(cfg)))")
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_config),
                           str(tmp_path / "corpus.txt")],
                          cwd=tmp_path, env=cli_env(str(Path(__file__).resolve().parent)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    api = json.loads(proc.stdout)
    assert [(m["loss"], m["grad_norm"], m.get("val_loss")) for m in untimed] == \
        [(np.float32(a), np.float32(b), None if c is None else np.float32(c)) for a, b, c in api]


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


BAD_RUNS = [
    (["train.lr=fast"], 2, "train.lr: expected a number > 0, got 'fast'"),
    (["--lr", "fast"], 2, "train.lr: expected a number > 0, got 'fast'"),
    (["model.colour=red"], 2, "model.colour: unknown key; known keys: bias"),
    (["--micro-batch", "0"], 2, "train.micro_batch: expected an integer >= 1, got 0"),
    (["--zero-stage", "4"], 2, "parallel.zero_stage: expected an integer in [0, 3], got 4"),
    (["--recompute", "most"], 2, "train.recompute: expected one of 'none', 'selective', 'full'"),
    (["--fast"], 2, "unknown option --fast (see --help)"),
    (["--steps"], 2, "--steps needs a value: an integer >= 1"),
    (["--overlap=yes"], 2, "--overlap takes no value"),
    (["--config", "missing.toml"], 2, "cannot read config missing.toml"),
    (["--data", "nothing.txt"], 1, "cannot open data file nothing.txt"),
    (["model.vocab_size=100"], 1, "corpus.txt: token id"),
    (["train.micro_batch=100"], 2, "validation data: corpus.txt"),
    (["train.micro_batch=1000"], 2, "training data: corpus.txt"),
]


@pytest.mark.parametrize("args, status, message", BAD_RUNS)
def test_errors_are_one_line_the_same_from_both_front_ends(tmp_path, tiny_config, args, status,
                                                           message):
    config = [] if args[0] == "--config" else ["--config", "tiny.toml"]
    proc = run_cli("train", *config, *args, "--out", "r", cwd=tmp_path, expect=status)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # no run directory for a run that could not start
    cpp = subprocess.run([str(nuri_train_binary()), *config, *args, "--out", "r"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert cpp.returncode == status
    assert cpp.stderr.removeprefix("nuri-train: ") == proc.stderr.removeprefix("nuri: ")


def test_help_and_usage_errors(tmp_path):
    helped = run_cli("train", "--help", cwd=tmp_path).stdout
    assert helped.startswith("usage: python -m nuri train [--config FILE]")
    for s in nuri.reference():
        assert s["flag"] in helped and s["path"] in helped, s["path"]
    assert "invalid choice" in run_cli("fly", cwd=tmp_path, expect=2).stderr
    assert "unexpected argument 'corpus.txt'" in run_cli("train", "corpus.txt", cwd=tmp_path,
                                                         expect=2).stderr
