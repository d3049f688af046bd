"""Model files, data files and text: save/load a model as safetensors, read text or token data,
generate text with the byte tokenizer.

One design choice to know: a saved model is a plain safetensors file whose tensors carry the
Hugging Face parameter names and whose metadata holds the model config as JSON
(``nuri_model_config``), so one file is enough to rebuild the model, and other tools can read the
weights without nuri.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

import numpy as np

from . import _C
from .config import ConfigError, model_config_from_dict, model_config_to_dict

#: safetensors metadata key holding the model config as JSON.
CONFIG_KEY = "nuri_model_config"


def save(model: _C.Model, path: str | os.PathLike) -> None:
    """Writes ``model``'s parameters to a safetensors file at ``path``.

    [in] model: a nuri.Model that holds the whole model; its config is stored in the metadata
    under ``nuri_model_config``. The file is written beside ``path`` and then renamed over it,
    one tensor at a time from the model's own memory (a CPU model's: no second copy is made; a
    GPU model's parameters() are host copies of all of them).
    """
    check_whole_model(model, f"nuri.save({os.fspath(path)})")
    if os.path.isdir(path):
        raise _C.Error(f"nuri.save: {os.fspath(path)} is a directory; name the model file to "
                       f"write (e.g. {os.path.join(os.fspath(path), 'model.safetensors')})")
    params = model.parameters()
    names = sorted(params)  # the checksum's order
    metadata = {
        CONFIG_KEY: json.dumps(model_config_to_dict(model.config)),
        "nuri_version": str(_C.build_info()["version"]),
    }
    # A save that fails leaves an earlier file as it was; the process's own name, so that ranks
    # saving to one path (it should be one rank's call) do not pull each other's file away.
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    try:
        try:
            writer = _C.SafetensorsWriter(tmp, [(n, list(params[n].shape)) for n in names],
                                          metadata, checksum=True)  # records SHA_KEY
            for n in names:
                writer.write(n, params[n])
            writer.close()
        except _C.Error as e:  # said with the path the caller gave
            raise _C.Error(f"nuri.save({os.fspath(path)}): {e}") from e
        os.replace(tmp, os.fspath(path))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


#: The metadata key of the SHA-256 of a file's tensors (tensors_sha256), which nuri.save and the
#: C++ model writers (a run's model.safetensors, nuri.consolidate) write and nuri.load checks:
#: safetensors itself has no checksum, so a flipped byte would load. C++: kTensorsChecksumKey.
SHA_KEY = "nuri_tensors_sha256"


def tensors_sha256(tensors: dict[str, np.ndarray]) -> str:
    """SHA-256 over every tensor in name order: its name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        _hash_tensor(h, name, tensors[name])
    return h.hexdigest()


def _hash_tensor(h: "hashlib._Hash", name: str, a: np.ndarray) -> None:
    """One tensor's part of tensors_sha256 (tensors in name order)."""
    a = np.ascontiguousarray(a)
    h.update(f"{name}|{a.dtype.str}|{list(a.shape)}|".encode())
    h.update(memoryview(a).cast("B"))


def check_whole_model(model: _C.Model, what: str) -> None:
    """Raises nuri.Error when ``model`` holds only part of its weights (a ZeRO 3 shard, a
    tensor-parallel slice or a pipeline stage): a file of it would not be the model."""
    if model.holds_whole_model:
        return
    parts = []
    lo, hi = model.held_range
    if (lo, hi) != (0, model.parameter_count):
        parts.append(f"the ZeRO 3 shard [{lo}, {hi}) of its {model.parameter_count} weights")
    index, tp = model.tensor_parallel
    if tp != 1:
        parts.append(f"tensor-parallel slice {index} of {tp}")
    if model.masters_sharded and (lo, hi) == (0, model.parameter_count):  # ZeRO 1 or 2
        parts.append("its shard of the f32 master weights, which ZeRO 1 and 2 split on a GPU "
                     "(Trainer.master_weights() gathers them)")
    first, last = model.pipeline_stage
    if (first, last) != (0, model.config.n_layer):
        parts.append(f"the pipeline stage of blocks [{first}, {last}) of {model.config.n_layer}")
    raise _C.Error(f"{what}: this model holds only part of itself ({', '.join(parts)}), so the "
                   "file would not be the model. Write a training job's model from its "
                   "checkpoint instead: nuri.consolidate(CKPT, FILE) or `python -m nuri export "
                   "CKPT --out FILE.safetensors` (--hf DIR for Hugging Face)")


def check_finite(a: np.ndarray, where: str, name: str) -> None:
    """Raises nuri.Error when weight ``a`` holds a NaN or an infinity: such a model computes
    NaN losses from its first step, which training would then skip step after step."""
    finite = np.isfinite(a)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(-1))
        raise _C.Error(f"{where}: tensor '{name}' holds {bad.size} non-finite values (the first "
                       f"at flat index {bad[0]}: {a.reshape(-1)[bad[0]]}); a model saved from a "
                       "run that diverged, or a damaged file: use an earlier checkpoint")


def stored_model_config(path: str, metadata: dict[str, str]) -> _C.ModelConfig:
    """The model config a model file records (its ``nuri_model_config`` metadata)."""
    if CONFIG_KEY not in metadata:
        raise _C.Error(f"{path} has no '{CONFIG_KEY}' metadata (not written by nuri.save); "
                       "pass config=")
    try:
        return model_config_from_dict(json.loads(metadata[CONFIG_KEY]), path=f"{path}: model")
    except (ValueError, RecursionError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{path}: bad '{CONFIG_KEY}' metadata: {e}") from e


def load(path: str | os.PathLike, backend: str = "cpu", config: _C.ModelConfig | None = None
         ) -> _C.Model:
    """Reads a model written by ``save`` (or any float32 safetensors file with nuri's names and
    shapes).

    [in] config: the model config; default: the one stored in the file's metadata.
    Raises nuri.Error naming the tensor when a name is missing or unexpected, a shape or
    dtype does not match the config, or a value is not finite; and when the file fails the
    checksum nuri writes (files without one, e.g. from other writers, are not checked).
    """
    from safetensors import safe_open

    path = os.fspath(path)
    if os.path.isdir(path):
        raise _C.Error(f"nuri.load({path}): a directory; it reads one model file (what nuri.save "
                       "or a run writes, e.g. RUN/model.safetensors). A Hugging Face model "
                       "directory is read by nuri.import_hf(DIR), a checkpoint by "
                       "nuri.consolidate(CKPT, FILE) and then nuri.load(FILE)")
    # One tensor at a time, into the model (a model's worth of arrays beside the model doubled
    # the memory a large model's load took); the checksum is summed on the way and checked
    # before the model is returned or its values judged.
    def opened():  # safetensors' own errors said as nuri's
        try:
            return safe_open(path, framework="np")
        except FileNotFoundError as e:
            raise _C.Error(f"cannot open model file {path}: no such file") from e
        except Exception as e:  # its own types for foreign or truncated files
            raise _C.Error(f"{path}: not a readable safetensors file ({e})") from e

    with opened() as f:
        metadata = f.metadata() or {}
        names = sorted(f.keys())
        for name in names:  # before reading: NumPy has no bf16 to read one into
            dtype = f.get_slice(name).get_dtype()
            if dtype != "F32":
                raise _C.Error(f"{path}: tensor '{name}' is {dtype}; nuri.load reads the "
                               "float32 files nuri.save and runs write (a Hugging Face "
                               "model in bf16 or f16 is read by nuri.import_hf(DIR))")
    if config is None:
        config = stored_model_config(path, metadata)
    model = _C.Model(config, "cpu", init="zeros")  # every weight is set below
    params = model.parameters()
    extra = sorted(set(names) - set(params))
    if extra:
        raise _C.Error(f"{path}: tensor '{extra[0]}' is not a parameter of this model "
                       f"({len(extra)} unexpected in all); the model has: "
                       f"{', '.join(list(params)[:6])}, ...")
    for name in params:
        if name not in names:
            raise _C.Error(f"{path}: tensor '{name}' is missing")
    h = hashlib.sha256() if SHA_KEY in metadata else None
    try:
        with opened() as f:
            for name in names:
                src, dst = f.get_tensor(name), params[name]
                if tuple(src.shape) != tuple(dst.shape):
                    raise _C.Error(f"{path}: tensor '{name}' has shape {list(src.shape)}, the "
                                   f"config needs {list(dst.shape)}")
                if h is not None:
                    _hash_tensor(h, name, src)
                dst[...] = src
                del src
    except (_C.Error, MemoryError):
        raise
    except Exception as e:  # safetensors' own types: a file changed since it was opened
        raise _C.Error(f"{path}: not a readable safetensors file ({e})") from e
    if h is not None and h.hexdigest() != metadata[SHA_KEY]:
        raise _C.Error(f"{path} fails its checksum: its tensors are not the ones nuri wrote "
                       "(the file was damaged or changed since); save the model again, or "
                       "export it from a checkpoint")
    for name, a in params.items():
        check_finite(a, path, name)
    return on_backend(model, backend)


def on_backend(model: _C.Model, backend: str) -> _C.Model:
    """``model`` (a whole model, its weights set on the CPU through NumPy) on ``backend``:
    itself for "cpu", else a model made there with its weights (copy_weights_from)."""
    if backend == "cpu":
        return model
    out = _C.Model(model.config, backend, init="zeros")
    out.copy_weights_from(model)
    return out


def read_data(path: str | os.PathLike, vocab_size: int = 0, format: str = "auto"
              ) -> _C.TokenFile:
    """Tokens of ``path``, as a run reads data.train (data.format):

    - ``auto``: a token file (llm.c .bin, or a 1-D .npy of any integer type whose values are
      token ids) as is; a .bin or .npy file with neither header is refused (say what it is);
      anything else as text, byte-tokenized (ids 0..255, no end-of-text added);
    - ``text``: byte-tokenized, whatever its name; ``llmc``, ``npy``: that format;
    - ``uint16``, ``uint32``: a headerless array of that type (nanoGPT's train.bin).

    [in] vocab_size: when > 0, every token id must be below it (nuri.Error otherwise).
    """
    return _C.read_data(os.fspath(path), vocab_size, format)


def consolidate(ckpt: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Writes the parameters of a checkpoint of any layout (a directory, or a root whose newest
    one is taken) as one safetensors file that nuri.load reads, one tensor in memory at a time;
    returns tensors, bytes and peak_bytes (the most host bytes held at once)."""
    check_consolidate_out(ckpt, out)
    return _C.consolidate_checkpoint(os.fspath(ckpt), os.fspath(out))


def check_consolidate_out(ckpt: str | os.PathLike, out: str | os.PathLike) -> None:
    """Raises ConfigError when ``out`` cannot be consolidate's output file: a directory, or a
    path inside the checkpoint (whose own files it could overwrite)."""
    ckpt, out = os.fspath(ckpt), os.fspath(out)
    if os.path.isdir(out):
        raise ConfigError(f"export: {out} is a directory; name the model file to write (e.g. "
                          f"{os.path.join(out, 'model.safetensors')})")
    check_outside_checkpoint(ckpt, out)


def check_outside_checkpoint(ckpt: str | os.PathLike, out: str | os.PathLike) -> None:
    """Raises ConfigError when an export of checkpoint ``ckpt`` may not write ``out``: inside
    a checkpoint directory of its root (whose files it could overwrite, and which a later run's
    rotation deletes), or the root's ``latest`` or ``ledger.jsonl``."""
    why = _C.checkpoint_owns(_C.CheckpointReader(os.fspath(ckpt)).dir, os.fspath(out))
    if why:
        raise ConfigError(f"export: {os.fspath(out)}: {why}; write the export elsewhere")


def default_corpus() -> _C.TokenFile:
    """The corpus a run trains on when data.train is empty: the license texts every Debian
    system has (elsewhere a generated one), as byte tokens."""
    return _C.default_corpus()


def split_validation(data: _C.TokenFile) -> tuple[_C.TokenFile, _C.TokenFile]:
    """(train, val): the last 10% of ``data`` (rounded down) held out, as a run does; of packed
    data (``tokenize(pack=T)``), the last tenth of its windows, split where one starts."""
    return _C.split_validation(data)


def decode_bytes(tokens: Sequence[int]) -> str:
    """Byte tokens to text: invalid UTF-8 becomes U+FFFD; end-of-text (256) a marked line."""
    out = bytearray()
    for t in tokens:
        if t == _C.ByteTokenizer.EOT:
            out += b"\n<|endoftext|>\n"
        elif 0 <= t < 256:
            out.append(t)
    return out.decode("utf-8", errors="replace")


def generate_text(model: _C.Model, prompt: str, max_new_tokens: int = 200,
                  temperature: float = 0.8, top_k: int = 40, seed: int = 0,
                  tokenizer: str | os.PathLike | None = None, bos: str | None = None,
                  top_p: float = 1.0, stop: Sequence[int | str] | int | str | None = None) -> str:
    """The continuation of ``prompt`` (not repeated): encoded and decoded with a Hugging Face
    ``tokenizer.json`` (the one ``nuri tokenize`` wrote the model's data with), or by default
    with bytes (a byte-level model, vocab >= 257). ``bos``: a token of the tokenizer put
    before the prompt (what ``nuri tokenize --bos`` put before every document).

    temperature 0 is greedy; top_k 0 samples from the whole vocabulary; top_p < 1 samples from
    the fewest likeliest of those whose probabilities sum to at least top_p. ``stop``: token
    ids, or tokens of the tokenizer by name (with bytes: ``"<|endoftext|>"``, id 256), that end
    the continuation (the first one drawn is its last token).
    """
    if not 0 <= seed < 2**64:
        raise ConfigError(f"generate: seed must be an integer from 0 to 2**64 - 1, got {seed!r}")
    if tokenizer is not None:
        from tokenizers import Tokenizer
        if not os.path.isfile(tokenizer):
            raise _C.Error(f"{os.fspath(tokenizer)}: no such tokenizer file (a Hugging Face "
                           "tokenizer.json)")
        try:
            tok = Tokenizer.from_file(os.fspath(tokenizer))
        except Exception as e:  # tokenizers raises its own exception types
            raise _C.Error(f"{os.fspath(tokenizer)}: not a Hugging Face tokenizer.json ({e})"
                           ) from e
        if tok.get_vocab_size(with_added_tokens=True) > model.config.vocab_size:
            raise _C.Error(f"{tokenizer}: its vocabulary has "
                           f"{tok.get_vocab_size(with_added_tokens=True)} ids, more than the "
                           f"model's vocab_size {model.config.vocab_size}: not this model's "
                           "tokenizer")
        tokens = tok.encode(prompt, add_special_tokens=False).ids
        if bos is not None:
            if tok.token_to_id(bos) is None:
                raise ConfigError(f"generate: bos {bos!r} is not a token of {tokenizer}")
            tokens = [tok.token_to_id(bos)] + tokens
        if not tokens:
            raise _C.Error("generate: the prompt needs at least one token")
        out = model.generate(tokens, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_k=top_k, seed=seed, top_p=top_p,
                             stop=_stop_ids(stop, tok.token_to_id, tokenizer))
        return tok.decode(out, skip_special_tokens=False)
    if bos is not None:
        raise ConfigError(f"generate: bos {bos!r} names a token of a tokenizer, but none is "
                          "given (byte tokens have none)")
    if model.config.vocab_size < _C.ByteTokenizer.VOCAB_SIZE:
        raise _C.Error(f"generate uses the byte tokenizer (257 ids); the model's vocab_size is "
                       f"{model.config.vocab_size}")
    tokens = list(prompt.encode("utf-8"))
    if not tokens:
        raise _C.Error("generate: the prompt needs at least one character")
    byte_names = {"<|endoftext|>": _C.ByteTokenizer.EOT}
    out = model.generate(tokens, max_new_tokens=max_new_tokens, temperature=temperature,
                         top_k=top_k, seed=seed, top_p=top_p,
                         stop=_stop_ids(stop, byte_names.get, "the byte tokenizer"))
    return decode_bytes(out)


def _stop_ids(stop: Sequence[int | str] | int | str | None, token_to_id: Any,
              where: Any) -> list[int]:
    """generate_text's stop as token ids: ids as given, names looked up with token_to_id."""
    if stop is None:
        return []
    # (anything but a list, tuple or array is one stop: Model.generate names what it cannot take)
    items = list(stop) if isinstance(stop, (list, tuple, np.ndarray)) else [stop]
    ids = []
    for s in items:
        if isinstance(s, str):
            i = token_to_id(s)
            if i is None:
                raise ConfigError(f"generate: stop token {s!r} is not a token of {where} (give "
                                  "its id, or a token the tokenizer has)")
            ids.append(int(i))
        else:
            ids.append(s)
    return ids
