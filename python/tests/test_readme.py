"""The README's Python example and command lines, run as written (from the repository root)."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SECTION = README[README.index("## Using it from Python"):README.index("## Using the library from C++")]


def test_python_example_runs(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", SECTION, re.S).group(1)
    monkeypatch.chdir(tmp_path)  # it writes tiny.safetensors
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["stats"]["step"] == 30 and scope["stats"]["loss"] < 3.5
    assert (tmp_path / "tiny.safetensors").exists()


def test_command_lines_run(tmp_path):
    block = re.search(r"```sh\n(.*?)```", SECTION, re.S).group(1)
    commands = [shlex.split(line) for line in block.strip().splitlines()]
    assert [c[:3] for c in commands] == [["python", "-m", "nuri"]] * 3
    out = tmp_path / "runs" / "tiny"
    for cmd in commands:
        args = [str(out) if a == "runs/tiny" else a for a in cmd[3:]]
        proc = subprocess.run([sys.executable, "-m", "nuri", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, f"{cmd}: {proc.stderr}"
    for name in ("config.json", "metrics.jsonl", "model.safetensors"):
        assert (out / name).exists(), name
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 300
    assert "The " in proc.stdout  # generate prints the prompt and its continuation
