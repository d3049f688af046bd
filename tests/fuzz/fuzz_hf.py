"""Fuzz target (atheris: libFuzzer for Python) of the Python readers of a Hugging Face model
directory a user hands nuri: config.json (nuri.hf.model_config_from_hf) and
model.safetensors.index.json (the shard map, checked against the shards and read tensor by
tensor). An input is the two files joined by the separator line of fuzz_util.h; the directory
also holds two real shards written by the safetensors library. The contract: nuri.Error (or
ConfigError, a kind of it) naming the file, or success; any other exception is a crash.

    python tests/fuzz/fuzz_hf.py [libFuzzer flags] WORK_CORPUS tests/fuzz/corpus/hf

(python/tests/test_fuzz.py runs it for a fixed number of inputs under pytest, with PYTHONHASHSEED=0;
a failure there replays with `PYTHONHASHSEED=0 python tests/fuzz/fuzz_hf.py CRASH_FILE`.)
"""
import atexit
import os
import shutil
import sys
import tempfile

import atheris
import numpy as np
from safetensors.numpy import save_file

with atheris.instrument_imports():
    import nuri
    import nuri.hf

SEP = b"\n----8<----\n"
SHARDS = {  # what the seed indexes map
    "model-00001-of-00002.safetensors": {
        "model.embed_tokens.weight": np.arange(12, dtype=np.float32).reshape(3, 4)},
    "model-00002-of-00002.safetensors": {
        "model.norm.weight": np.ones(4, dtype=np.float16),
        "lm_head.weight": np.zeros((3, 4), dtype=np.float32)},
}
# Under $TMPDIR (test_fuzz.py points it at pytest's tmp_path): libFuzzer ends the process with
# exit(), so the atexit handler runs only when the target stops some other way.
DIR = tempfile.mkdtemp(prefix="nuri-fuzz-hf-")
atexit.register(shutil.rmtree, DIR, True)
for name, tensors in SHARDS.items():
    save_file(tensors, os.path.join(DIR, name))
CONFIG = os.path.join(DIR, "config.json")
INDEX = os.path.join(DIR, "model.safetensors.index.json")


def one_input(data: bytes) -> None:
    config, _, index = data.partition(SEP)
    with open(CONFIG, "wb") as f:
        f.write(config)
    if _:
        with open(INDEX, "wb") as f:
            f.write(index)
    elif os.path.exists(INDEX):
        os.remove(INDEX)  # no index: the reader looks for model.safetensors
    try:
        nuri.hf.model_config_from_hf(CONFIG)
    except nuri.Error:
        pass
    try:
        tensors = nuri.hf._HFTensors(DIR)
        for key in tensors:
            tensors[key]
    except nuri.Error:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
