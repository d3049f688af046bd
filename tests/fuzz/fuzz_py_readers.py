"""Fuzz target (atheris: libFuzzer for Python) of the other files the Python side of nuri reads
from users' directories: a run ledger (``nuri report``), a fine-tuning JSON-lines file (``nuri
tokenize --kind chat`` / ``prompt-response``), a run directory's config.json and its shards'
tokenize.json (``nuri generate --run``), a model file's stored config (``nuri.load``'s
``nuri_model_config`` metadata) and a device profile (``nuri plan --device FILE``). An input is
those six files joined by fuzz_util.h's separator line, in that order. The contract: nuri.Error
(or ConfigError, a kind of it) naming the file, or success; any other exception is a crash.

    python tests/fuzz/fuzz_py_readers.py [libFuzzer flags] WORK_CORPUS tests/fuzz/corpus/py_readers

(python/tests/test_fuzz.py runs it for a fixed number of inputs under pytest, with
PYTHONHASHSEED=0; a failure there replays with
`PYTHONHASHSEED=0 python tests/fuzz/fuzz_py_readers.py CRASH_FILE`.)
"""
import atexit
import os
import shutil
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    import nuri
    import nuri.cli
    import nuri.io
    import nuri.shards

SEP = b"\n----8<----\n"
NAMES = ("ledger.jsonl", "chat.jsonl", "run/config.json", "shards/tokenize.json",
         "model_config.json", "profile.json")
CHAT = {"system": "<s>{content}\n", "user": "<u>{content}\n", "assistant": "<a>{content}\n"}
# Under $TMPDIR (test_fuzz.py points it at pytest's tmp_path): libFuzzer ends the process with
# exit(), so the atexit handler runs only when the target stops some other way.
DIR = tempfile.mkdtemp(prefix="nuri-fuzz-py-")
atexit.register(shutil.rmtree, DIR, True)
os.makedirs(os.path.join(DIR, "run"))
os.makedirs(os.path.join(DIR, "shards"))
with open(os.path.join(DIR, "tokenizer.json"), "w") as f:  # what a seed's tokenize.json names
    f.write("{}")
os.chdir(DIR)  # the run config's relative paths (data.train "shards") resolve here


def one_input(data: bytes) -> None:
    parts = data.split(SEP)
    for k, name in enumerate(NAMES):  # a file the input leaves out is empty
        with open(os.path.join(DIR, name), "wb") as f:
            f.write(parts[k] if k < len(parts) else b"")
    try:
        nuri.format_report(nuri.report(DIR))
    except nuri.Error:
        pass
    for kind, template in (("chat", CHAT), ("prompt-response", None), ("text", None)):
        try:
            for _ in nuri.shards._documents([os.path.join(DIR, "chat.jsonl")], "text", kind,
                                            template):
                pass
        except nuri.Error:
            pass
    try:
        table = nuri.cli._read_run_config(os.path.join(DIR, "run"))
        nuri.cli._run_sample_defaults(os.path.join(DIR, "run"), table)
        nuri.cli._run_tokenizer(os.path.join(DIR, "run"), table, 50257)
    except nuri.Error:
        pass
    try:
        with open(os.path.join(DIR, "model_config.json"), "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
        nuri.io.stored_model_config("m.safetensors", {nuri.io.CONFIG_KEY: text})
    except nuri.Error:
        pass
    try:
        nuri.device_profile(os.path.join(DIR, "profile.json"))
    except nuri.Error:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
