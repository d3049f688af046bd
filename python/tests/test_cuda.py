"""The package researchers install is the whole runtime: where nvcc was found it has the CUDA
backend (and NCCL) compiled in. Without a GPU that is what it says, with a clear error for cuda;
with one, tests/train/python_cuda.py (label gpu) trains on it from Python."""

from __future__ import annotations

import os

import pytest

import nuri
from conftest import run_cli

INFO = nuri.build_info()
#: scripts/test.sh sets NURI_EXPECT_CUDA=1 where nvcc is found: the package must have the backend.
EXPECT_CUDA = os.environ.get("NURI_EXPECT_CUDA") == "1"


def test_the_cuda_backend_is_compiled_where_nvcc_was_found():
    if EXPECT_CUDA:
        assert "cuda" in INFO["backends"] and INFO["cuda"]
        assert INFO["cuda_architectures"], "a CUDA build names the architectures it compiled"
    if "cuda" not in INFO["backends"]:
        pytest.skip("this package was built without nvcc (CPU only)")
    assert INFO["mpi"] or not EXPECT_CUDA  # the tree CI builds the package from has MPI too
    proc = run_cli("info", cwd=".")
    assert "CUDA:       yes" in proc.stdout
    assert "cuda archs: " + ", ".join(f"sm_{a}" for a in INFO["cuda_architectures"]) in proc.stdout


@pytest.mark.skipif("cuda" not in INFO["backends"] or INFO["cuda_devices"] != [],
                    reason="needs the CUDA backend compiled and no GPU")
def test_without_a_gpu_cuda_is_a_clear_error(tmp_path):
    assert "cuda devices: none" in run_cli("info", cwd=".").stdout
    with pytest.raises(nuri.Error, match="needs a CUDA device, and none is usable here"):
        nuri.Model(nuri.ModelConfig.preset("gpt2-tiny"), "cuda")
    proc = run_cli("train", "--backend", "cuda", "--model", "gpt2-tiny", "--steps", "1",
                   cwd=tmp_path, expect=1)
    assert "sees no CUDA device; use the cpu backend" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
