"""Checkpoints no rank gathers (issue #21): a 2-rank ZeRO 3 run writes each rank's slices of
every tensor; `python -m nuri export` makes one model file and a Hugging Face directory from
them, one tensor in memory at a time, equal to what the run itself wrote."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

import nuri
from conftest import REPO, cli_env, run_cli

TORCHRUN_SH = REPO / "tests" / "dist" / "torchrun.sh"


def test_a_sharded_checkpoint_exports_to_one_file_and_to_hugging_face(tmp_path):
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    args = ["--model", "gpt2-tiny", "--steps", "4", "--micro-batch", "2", "--seq-len", "32",
            "--eval-every", "0", "--eval-batches", "2", "--max-new-tokens", "0",
            "--zero-stage", "3", "--ckpt-dir", "ck", "--out", "run"]
    proc = subprocess.run(["bash", str(TORCHRUN_SH), "-np", "2", sys.executable, "-m", "nuri",
                           "train", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Each rank wrote its own slices; the manifest says which file holds which.
    step = tmp_path / "ck" / "step-00000004"
    files = sorted(p.name for p in step.glob("*.safetensors"))
    assert files == ["rank-00000-of-00002.safetensors", "rank-00001-of-00002.safetensors"]
    manifest = json.loads((step / "manifest.json").read_text())
    assert manifest["version"] == 2
    wte = manifest["ranges"]["wte.weight"]
    assert wte["shape"] == [320, 64] and wte["numel"] == 320 * 64
    sizes = [(step / f).stat().st_size for f in files]
    assert abs(sizes[0] - sizes[1]) < 0.05 * sizes[0]  # halves: nothing went to one rank

    run_cli("export", "ck", "--out", "model.safetensors", "--hf", "hf", cwd=tmp_path)
    exported, trained = nuri.load(tmp_path / "model.safetensors"), nuri.load(tmp_path / "run" /
                                                                            "model.safetensors")
    assert exported.config == trained.config
    for name, a in trained.parameters().items():
        np.testing.assert_array_equal(exported.parameters()[name], a, err_msg=name)
    hf = load_file(str(tmp_path / "hf" / "model.safetensors"))
    want = nuri.hf.to_hf_tensors(trained)
    assert sorted(hf) == sorted(want)
    for name, a in want.items():
        np.testing.assert_array_equal(hf[name], a, err_msg=name)
    assert json.loads((tmp_path / "hf" / "config.json").read_text()) == \
        nuri.hf.hf_config(trained.config)
    # One tensor at a time: the most it held is the largest tensor.
    stats = nuri.consolidate(tmp_path / "ck", tmp_path / "again.safetensors")
    largest = max(a.nbytes for a in trained.parameters().values())
    assert stats["peak_bytes"] == largest and stats["tensors"] == len(trained.parameters())
    # Both C++ writers (the run's Trainer::save_model, the export) record the tensor checksum
    # that nuri.save writes, computed here from what the safetensors library reads back, and
    # nuri.load checks it.
    for path in (tmp_path / "run" / "model.safetensors", tmp_path / "again.safetensors"):
        with safe_open(str(path), framework="np") as f:
            recorded = f.metadata()[nuri.io.SHA_KEY]
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        assert len(recorded) == 64 and recorded == nuri.io.tensors_sha256(tensors), path
        data = bytearray(path.read_bytes())
        data[-2] ^= 0x10
        path.write_bytes(bytes(data))
        with pytest.raises(nuri.Error, match=f"{path.name} fails its checksum"):
            nuri.load(path)
    assert "give --out" in run_cli("export", "ck", cwd=tmp_path, expect=2).stderr


def test_a_model_file_starts_runs_of_every_layout(tmp_path):
    """checkpoint.init (--init) on 2 ranks: each rank reads only its part of the file's tensors
    (its ZeRO 3 shard, its tensor-parallel slices, its pipeline stage's blocks), and each run's
    first validation loss is the one the run that wrote the file ended at (to the printed four
    decimals, as layouts sum in other orders); without it, the seed's model's is far off."""
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    common = ["--model", "gpt2-tiny", "--micro-batch", "2", "--seq-len", "32", "--eval-every",
              "0", "--eval-batches", "2", "--max-new-tokens", "0"]
    run_cli("train", *common, "--steps", "6", "--out", "run", cwd=tmp_path)

    def val_losses(text: str) -> list[float]:
        return [float(m) for m in re.findall(r"^step +\d+ \| val loss ([0-9.]+)", text, re.M)]

    trained = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    one = run_cli("train", *common, "--steps", "1", "--init", "run/model.safetensors",
                  cwd=tmp_path).stdout
    assert abs(val_losses(one)[0] - trained["val_loss"]) < 1e-4, (one, trained)
    # The same global batch of 2 sequences, so the same validation batches, on every layout (dp
    # 2 takes 1 a rank; the pipeline 2 micro-batches of 1).
    for layout in (["--zero-stage", "3", "--micro-batch", "1"], ["--tp", "2"],
                   ["--pp", "2", "--micro-batch", "1", "--grad-accum", "2"]):
        for init in (["--init", "run/model.safetensors"], []):
            proc = subprocess.run(["bash", str(TORCHRUN_SH), "-np", "2", sys.executable, "-m",
                                   "nuri", "train", *common, "--steps", "1", *layout, *init],
                                  cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            first = val_losses(proc.stdout)[0]
            if init:
                assert "initialized from run/model.safetensors" in proc.stdout, proc.stdout
                assert abs(first - trained["val_loss"]) < 2e-4, (layout, first, trained)
            else:
                assert abs(first - trained["val_loss"]) > 0.05, (layout, first, trained)
