"""The README's Python examples and command lines, run as written (from the repository root); the
multi-process example under a torchrun-style start of two ranks."""
import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import cli_env, free_port

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SECTION = README[README.index("## Using it from Python"):README.index("## Several processes")]
BLOCKS = re.findall(r"```python\n(.*?)```", SECTION, re.S)


def test_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it writes tiny.safetensors
    scope: dict = {}
    exec(compile(BLOCKS[0], "README.md", "exec"), scope)
    assert scope["stats"]["step"] == 30 and scope["stats"]["loss"] < 3.5
    assert (tmp_path / "tiny.safetensors").exists()


def test_multi_process_example_runs_on_two_ranks(tmp_path):
    script = tmp_path / "dp.py"
    script.write_text(BLOCKS[1])
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "tests" / "dist" / "torchrun.sh"), "-np", "2",
                           sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks, loss, val = proc.stdout.split()[0], *map(float, proc.stdout.split()[2:4])
    assert proc.stdout.count("ranks:") == 1 and ranks == "2"  # rank 0 alone prints
    assert loss < math.log(257) - 1.0 and val < math.log(257) - 1.0


def test_command_lines_run(tmp_path):
    block = re.search(r"```sh\n(.*?)```", SECTION, re.S).group(1)
    commands = [shlex.split(line) for line in block.strip().splitlines()]
    assert [c[:3] for c in commands] == [["python", "-m", "nuri"]] * 3 + [
        ["python", "-m", "torch.distributed.run"]]
    runs = {"runs/tiny": tmp_path / "tiny", "runs/tiny-2": tmp_path / "tiny-2"}
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    outputs = []
    for cmd in commands:
        args = [str(runs.get(a, a)) for a in cmd[1:]]
        if args[:2] == ["-m", "torch.distributed.run"]:  # as written, on a port free now
            args[2:2] = ["--master_port", str(free_port())]
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, env=env,
                              text=True, timeout=300)
        assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
        outputs.append(proc.stdout)
    for run in runs.values():
        for name in ("config.json", "metrics.jsonl", "model.safetensors"):
            assert (run / name).exists(), run / name
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 300
    assert "The " in outputs[2]  # generate prints the prompt and its continuation
    assert "data parallel: 2 ranks (torchrun-style environment, gradients over tcp), ZeRO " \
           "stage 1" in outputs[3]
    assert json.loads((runs["runs/tiny-2"] / "config.json").read_text())["parallel"][
        "zero_stage"] == 1
