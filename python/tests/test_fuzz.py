"""The Python readers of a Hugging Face directory under coverage-guided fuzzing (issue #25):
tests/fuzz/fuzz_hf.py (atheris) replays its committed seed corpus, then mutates it for
NURI_FUZZ_RUNS inputs (40,000: about 20 s); any exception but nuri.Error fails, and the failing
input is kept. A fixed count, mutation seed and Python hash seed make the run the same on every
machine, so a failure in CI is one a developer sees too; longer runs with other seeds (the
command in fuzz_hf.py) look further."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "tests" / "fuzz" / "fuzz_hf.py"
SEEDS = ROOT / "tests" / "fuzz" / "corpus" / "hf"


def test_hf_config_and_index_readers_survive_fuzzing(tmp_path):
    runs = int(os.environ.get("NURI_FUZZ_RUNS", "40000"))
    work = tmp_path / "corpus"
    work.mkdir()
    assert len(list(SEEDS.iterdir())) >= 5
    proc = subprocess.run(
        [sys.executable, str(TARGET), "-seed=1", f"-runs={runs}", "-timeout=10",
         "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/", str(work), str(SEEDS)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONHASHSEED": "0"})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    # It ran the seeds and then mutated them (not a target that stopped at once).
    done = [int(line.split()[1]) for line in log.splitlines() if line.startswith("Done ")]
    assert done == [runs], log[-3000:]
