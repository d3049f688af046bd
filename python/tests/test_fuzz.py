"""The Python readers of a Hugging Face directory under coverage-guided fuzzing (issue #25):
tests/fuzz/fuzz_hf.py (atheris) replays its committed seed corpus, then mutates it for
NURI_FUZZ_SECONDS (20); any exception but nuri.Error fails, and the failing input is kept."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "tests" / "fuzz" / "fuzz_hf.py"
SEEDS = ROOT / "tests" / "fuzz" / "corpus" / "hf"


def test_hf_config_and_index_readers_survive_fuzzing(tmp_path):
    seconds = int(os.environ.get("NURI_FUZZ_SECONDS", "20"))
    work = tmp_path / "corpus"
    work.mkdir()
    assert len(list(SEEDS.iterdir())) >= 5
    proc = subprocess.run(
        [sys.executable, str(TARGET), "-seed=1", f"-max_total_time={seconds}", "-timeout=10",
         "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/", str(work), str(SEEDS)],
        capture_output=True, text=True, timeout=seconds + 300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    # It ran the seeds and then mutated them (not a target that stopped at once).
    runs = [int(line.split()[1]) for line in log.splitlines() if line.startswith("Done ")]
    assert runs and runs[0] > 100, log[-3000:]
