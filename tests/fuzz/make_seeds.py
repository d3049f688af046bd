"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/NAME/) from files the real
writers made: nuri tokenize's shards, masks and tokenize.json, NumPy's .npy, the safetensors
library's files, nuri's run configs, and the manifest of a checkpoint fuzz_checkpoint writes.

    PYTHONPATH=build/python .venv/bin/python tests/fuzz/make_seeds.py BUILD_FUZZ_TREE [NAME ...]

(BUILD_FUZZ_TREE: a tree configured with -DNURI_FUZZ=ON and built, for fuzz_checkpoint; NAMEs:
only those corpora.)
The corpora are committed; run this again when a format changes. Inputs a fuzzer once failed
on are kept beside the seeds as regress_* (this script leaves them).
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import save as st_save

import nuri
from nuri.config import model_config_to_dict

HERE = os.path.dirname(os.path.abspath(__file__))
SEP = b"\n----8<----\n"  # fuzz_util.h's separator between the files of one input


UNICODE_TOML = """# characters beyond ASCII where TOML allows them: strings and comments (안녕)
[sample]
prompt = '''안녕
하세요'''
[data]
train = "/data/말뭉치.bin"
"""


ONLY = set(sys.argv[2:])


def corpus(name: str) -> str:
    d = os.path.join(HERE, "corpus", name)
    if ONLY and name not in ONLY:  # another corpus's seeds: written to a scratch directory
        d = tempfile.mkdtemp(prefix=f"nuri-seeds-{name}-")
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if not f.startswith("regress_"):  # inputs that once failed stay, as regression tests
            os.remove(os.path.join(d, f))
    return d


def put(d: str, name: str, data: bytes) -> None:
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def npy(a: np.ndarray) -> bytes:
    with tempfile.TemporaryFile() as f:
        np.save(f, a)
        f.seek(0)
        return f.read()


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def main() -> None:
    fuzz_tree = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        # nuri tokenize: plain text, and prompt/response rows (with loss masks).
        texts = [os.path.join(tmp, f"{k}.txt") for k in range(4)]
        for k, text in enumerate(texts):
            with open(text, "w") as f:
                f.write(f"Citizen {k}:\nBefore we proceed any further, hear me speak.\n" * 3)
        rows = os.path.join(tmp, "sft.jsonl")
        with open(rows, "w") as f:
            for i in range(6):
                f.write(json.dumps({"prompt": f"Q{i}: what?", "response": f" A{i}."}) + "\n")
        nuri.tokenize(texts, os.path.join(tmp, "text"), val_every=2)
        nuri.tokenize([rows], os.path.join(tmp, "sft"), val_every=3, kind="prompt-response")
        nuri.tokenize([rows], os.path.join(tmp, "sft_packed"), val_every=3,
                      kind="prompt-response", pack=16)

        d = corpus("token_file")
        shard = read(os.path.join(tmp, "text", "train_000000.bin"))
        put(d, "llmc_v1", b"\x00" + shard)
        put(d, "llmc_v1_vocab", b"\x80" + shard)
        for t in (np.uint16, np.uint32, np.int64, np.int8, np.uint8):
            put(d, f"npy_{np.dtype(t).name}", b"\x01" + npy(np.arange(7, dtype=t)))
        put(d, "npy_2d", b"\x01" + npy(np.zeros((2, 3), np.uint16)))
        put(d, "npy_fortran", b"\x04" + npy(np.asfortranarray(np.ones((2, 2), np.int32))))
        put(d, "raw_u16", b"\x02" + np.arange(9, dtype="<u2").tobytes())
        put(d, "raw_u32", b"\x03" + np.arange(9, dtype="<u4").tobytes())

        d = corpus("shards")
        for kind in ("text", "sft", "sft_packed"):
            meta = read(os.path.join(tmp, kind, "tokenize.json"))
            shard = read(os.path.join(tmp, kind, "train_000000.bin"))
            mask_path = os.path.join(tmp, kind, "train_000000.mask.npy")
            mask = read(mask_path) if os.path.exists(mask_path) else b""
            put(d, kind, SEP.join([meta, shard, mask]))

    d = corpus("safetensors")
    put(d, "f32_meta", st_save({"w": np.arange(6, dtype=np.float32).reshape(2, 3),
                                "b": np.ones(3, np.float32)}, metadata={"format": "pt"}))
    put(d, "f16_i64", st_save({"h": np.arange(4, dtype=np.float16),
                               "i": np.arange(3, dtype=np.int64),
                               "j": np.arange(2, dtype=np.int32)}))
    put(d, "empty_tensor", st_save({"e": np.zeros((0, 4), np.float32)}))

    d = corpus("run_config")
    root = os.path.dirname(os.path.dirname(HERE))
    put(d, "tiny_toml", b"\x01" + read(os.path.join(root, "examples", "tiny.toml")))
    cfg = nuri.RunConfig()
    put(d, "defaults_json", b"\x00" + cfg.to_json().encode())
    put(d, "layout_json", b"\x00" + json.dumps({
        "model": {"preset": "gpt2-tiny"},
        "parallel": {"tp": 2, "pp": 2, "zero_stage": 3, "sequence_parallel": True},
        "train": {"micro_batch": 2, "grad_accum": 4, "recompute": "selective"},
        "data": {"train": "train.bin", "format": "uint16"},
        "sample": {"prompt": "Café — 안녕", "max_new_tokens": 4}}).encode())
    put(d, "unicode_toml", b"\x01" + UNICODE_TOML.encode())

    # Hugging Face directories (tests/fuzz/fuzz_hf.py): configs as transformers writes them,
    # with an index of fuzz_hf.py's two shards as save_pretrained writes one.
    import transformers
    d = corpus("hf")
    index = json.dumps({"metadata": {"total_size": 104}, "weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.norm.weight": "model-00002-of-00002.safetensors",
        "lm_head.weight": "model-00002-of-00002.safetensors"}}, indent=2).encode()
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
    configs = {
        "llama3": transformers.LlamaConfig(**small, max_position_embeddings=131072, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        "qwen2": transformers.Qwen2Config(**small),
        "mistral": transformers.MistralConfig(**small, sliding_window=4096),
        "phi3": transformers.Phi3Config(**small, sliding_window=2047, pad_token_id=0),
        "gpt2": transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=300),
    }
    for name, c in configs.items():
        put(d, name, c.to_json_string().encode() + SEP + index)
    put(d, "llama3_no_index", configs["llama3"].to_json_string().encode())

    # The other Python readers (tests/fuzz/fuzz_py_readers.py): a real run's ledger.jsonl and
    # config.json (a run of 2 steps resumed for 1 more, so the ledger has two allocations), a
    # chat file as nuri tokenize --kind chat reads it, a tokenize.json naming a tokenizer
    # file beside it, a model file's stored config as nuri.save writes it, a shipped profile.
    d = corpus("py_readers")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = nuri.RunConfig().with_overrides([
            "model=gpt2-tiny", "train.steps=2", "train.micro_batch=2", "train.seq_len=32",
            "train.eval_every=0", "sample.max_new_tokens=0", f"checkpoint.dir={tmp}/ck",
            f"out={tmp}/run", "data.train=shards"])
        os.makedirs(os.path.join(tmp, "src"))
        with open(os.path.join(tmp, "src", "a.txt"), "w") as f:
            f.write("Before we proceed any further, hear me speak.\n" * 200)
        here = os.getcwd()
        os.chdir(tmp)
        try:
            nuri.tokenize([os.path.join(tmp, "src")], "shards", val_every=0, progress=False)
            with open(os.devnull, "w") as null:
                nuri.run(cfg, stream=null)
                nuri.run(cfg.with_overrides(["train.steps=3"]), stream=null)
        finally:
            os.chdir(here)
        ledger = read(os.path.join(tmp, "ck", "ledger.jsonl"))
        run_config = read(os.path.join(tmp, "run", "config.json"))
        tokenize_json = json.loads(read(os.path.join(tmp, "shards", "tokenize.json")))
    chat = "".join(json.dumps(r) + "\n" for r in (
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "안녕?"},
                      {"role": "assistant", "content": "Hi."}]},
        {"prompt": "Q: what?", "response": " A.", "text": "plain"})).encode()
    named = dict(tokenize_json, tokenizer={"kind": "tokenizer.json", "path": "tokenizer.json",
                                           "sha256": hashlib.sha256(b"{}").hexdigest()})
    model_config = json.dumps(model_config_to_dict(
        nuri.ModelConfig.preset("llama-tiny"))).encode()
    profile = nuri.device_profile("rtx-4090")
    put(d, "run", SEP.join([ledger, chat, run_config, json.dumps(tokenize_json).encode(),
                            model_config, json.dumps(profile).encode()]))
    put(d, "tokenizer_named", SEP.join([ledger.split(b"\n")[0] + b"\n", chat, run_config,
                                        json.dumps(named).encode(), b'"gpt2-tiny"',
                                        json.dumps(nuri.device_profile("h100-sxm-80gb"))
                                        .encode()]))

    if ONLY and "checkpoint" not in ONLY:
        return
    d = corpus("checkpoint")
    seed = subprocess.run([os.path.join(fuzz_tree, "tests", "fuzz", "fuzz_checkpoint"), "-runs=0"],
                          env={**os.environ, "NURI_FUZZ_PRINT_SEED": "1"}, check=True,
                          capture_output=True).stdout
    put(d, "manifest_latest", seed)
    put(d, "manifest_only", seed.split(SEP)[0])


if __name__ == "__main__":
    main()
