"""Shared helpers for the nuri Python tests: a small deterministic corpus, a tiny run config, and
running ``python -m nuri`` in a subprocess that imports the same nuri as the test process
(the pip-installed package in CI, ``PYTHONPATH=python`` in development)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import nuri

REPO = Path(__file__).resolve().parents[2]


def corpus_text(n_bytes: int = 20000, seed: int = 0) -> str:
    """Sentences from a small grammar: learnable in a few steps, no download."""
    rng = random.Random(seed)
    subj = ["the student", "a small model", "the cluster", "our lab", "the GPU"]
    verb = ["trains", "waits for", "checkpoints", "measures", "resumes"]
    obj = ["the loss curve", "a preempted job", "every token", "the gradient", "its allocation"]
    parts, size = [], 0
    while size < n_bytes:
        s = f"{rng.choice(subj)} {rng.choice(verb)} {rng.choice(obj)}.{rng.choice([' ', chr(10)])}"
        parts.append(s)
        size += len(s)
    return "".join(parts)


# A tiny run: gpt2-tiny, 4 x 32 tokens, accumulation 2, evaluation at steps 5 and 10.
TINY_TOML = """\
model = "gpt2-tiny"
log_every = 1

[train]
steps = 10
micro_batch = 4
seq_len = 32
grad_accum = 2
lr = 3e-3
warmup_steps = 2
min_lr_ratio = 0.1
weight_decay = 0.1
grad_clip = 1.0
eval_every = 5
eval_batches = 2
seed = 7

[data]
train = "corpus.txt"

[sample]
prompt = "the "
max_new_tokens = 40
temperature = 0.8
top_k = 40
"""


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """corpus.txt (20 kB of text) in tmp_path."""
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text())
    return path


@pytest.fixture
def tiny_config(tmp_path: Path, corpus: Path) -> Path:
    """tiny.toml in tmp_path, training on corpus.txt next to it."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


def free_port() -> int:
    """A TCP port free now, for torchrun's --master_port: its default, 29500, is shared by every
    job on the machine (a second pytest, another user's job)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(*first: str) -> dict[str, str]:
    """The environment for a subprocess that must import this process's nuri; ``first``:
    directories to put before it on PYTHONPATH."""
    env = dict(os.environ)
    root = str(Path(nuri.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (*first, root, env.get("PYTHONPATH")) if p)
    return env


def run_cli(*args: str, cwd: Path, expect: int | None = 0, path_first: tuple[str, ...] = ()
            ) -> subprocess.CompletedProcess:
    """``python -m nuri ARGS`` in ``cwd``; asserts the exit status unless expect is None."""
    proc = subprocess.run([sys.executable, "-m", "nuri", *args], cwd=cwd, env=cli_env(*path_first),
                          capture_output=True, text=True, timeout=300)
    if expect is not None:
        assert proc.returncode == expect, (
            f"exit {proc.returncode}, expected {expect}\nstdout:\n{proc.stdout}\n"
            f"stderr:\n{proc.stderr}")
    return proc


def nuri_train_binary() -> Path:
    """build/examples/nuri-train (or $NURI_TRAIN_BIN); skips the test when it is not built."""
    path = Path(os.environ.get("NURI_TRAIN_BIN", REPO / "build" / "examples" / "nuri-train"))
    if not path.is_file():
        pytest.skip(f"the C++ program {path} is not built (cmake --build build), so there is "
                    "nothing to compare the Python losses with")
    return path
