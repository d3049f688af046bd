"""The Python side's readers of users' files under coverage-guided fuzzing (issue #25): each
atheris target in tests/fuzz/ replays its committed seed corpus, then mutates it for
NURI_FUZZ_RUNS inputs (40,000: about 20 s each); any exception but nuri.Error fails, and the
failing input is kept. fuzz_hf.py reads a Hugging Face directory (config.json, the shard index);
fuzz_py_readers.py a run ledger, a fine-tuning JSON-lines file, a run's config.json and its
shards' tokenize.json, a model file's stored config and a device profile. A fixed count,
mutation seed and Python hash seed make the run the same on every machine, so a failure in CI is
one a developer sees too; longer runs with other seeds (the command in each target) look
further."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "tests" / "fuzz"


@pytest.mark.parametrize("target, corpus", [("fuzz_hf.py", "hf"),
                                            ("fuzz_py_readers.py", "py_readers")])
def test_python_readers_survive_fuzzing(tmp_path, target, corpus):
    runs = int(os.environ.get("NURI_FUZZ_RUNS", "40000"))
    seeds = FUZZ / "corpus" / corpus
    work = tmp_path / "corpus"
    work.mkdir()
    assert len(list(seeds.iterdir())) >= 2
    proc = subprocess.run(
        [sys.executable, str(FUZZ / target), "-seed=1", f"-runs={runs}", "-timeout=10",
         "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/", str(work), str(seeds)],
        capture_output=True, text=True, timeout=600,
        # TMPDIR: the target's scratch directory lands in tmp_path (libFuzzer ends the process
        # with exit(), before Python's atexit handlers would remove it).
        env={**os.environ, "PYTHONHASHSEED": "0", "TMPDIR": str(tmp_path)})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    # It ran the seeds and then mutated them (not a target that stopped at once).
    done = [int(line.split()[1]) for line in log.splitlines() if line.startswith("Done ")]
    assert done == [runs], log[-3000:]
