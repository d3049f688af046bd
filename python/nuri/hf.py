"""Hugging Face interop: export a nuri model as a Hugging Face model directory (``config.json`` and
``model.safetensors``, or shards with ``model.safetensors.index.json``) and import one back.

Layouts (what ``transformers`` writes for GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM,
MistralForCausalLM and Phi3ForCausalLM):

- GPT-2: keys ``transformer.wte.weight``, ``transformer.h.{i}.attn.c_attn.weight`` ..., with the
  Conv1D weights stored as [in, out] (nuri keeps [out, in], so they are transposed both ways);
  the LM head is tied to ``wte`` and not stored. Import accepts keys with or without the
  ``transformer.`` prefix (both exist in the wild) and ignores ``attn.bias``/``attn.masked_bias``
  buffers that older checkpoints carry.
- Llama, Qwen2, Mistral: nuri's names are Hugging Face's
  (``model.layers.{i}.self_attn.q_proj.weight`` ...; Qwen2 adds ``q_proj.bias``, ``k_proj.bias``
  and ``v_proj.bias``: nuri's ``qkv_bias``), and both use the rotate-half rotary layout that
  ``transformers`` applies to q_proj/k_proj, so the weights go across unchanged. Llama 3.1's
  ``rope_scaling`` (llama3, linear) and ``head_dim`` map to the model config's rope_* keys and
  head_dim; Mistral's ``sliding_window`` to sliding_window (sequences longer than it are
  refused: nuri attends to the whole prefix).
- Phi-3: Llama's names, but for ``self_attn.qkv_proj`` (q, k and v rows one after another) and
  ``mlp.gate_up_proj`` (the gate's rows, then up's), which import splits into Llama's weights;
  its ``sliding_window`` is kept as Mistral's. Export writes it as MistralForCausalLM (or
  LlamaForCausalLM without a window): the same network, the weights apart.

Weights are read one tensor at a time with nuri's safetensors reader (F32, BF16 and F16 files;
nuri keeps f32 masters), so importing holds the model and one tensor, not the file. nuri pads
the vocabulary to a multiple of 64; exported embeddings and LM heads have exactly
``vocab_size`` rows, and import pads them with zeros again.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from typing import Any, Iterator, Mapping

import numpy as np

from . import _C
from .config import ConfigError, model_config_from_dict, model_config_to_dict
from .io import check_finite, check_outside_checkpoint, check_whole_model, on_backend

#: Conv1D weights of a GPT-2 block (stored [in, out] by Hugging Face).
_GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _hf_rope_scaling(c: Mapping[str, Any]) -> dict[str, Any] | None:
    if c["rope_scaling"] == "linear":
        return {"rope_type": "linear", "factor": c["rope_factor"]}
    if c["rope_scaling"] == "llama3":
        return {"rope_type": "llama3", "factor": c["rope_factor"],
                "low_freq_factor": c["rope_low_freq_factor"],
                "high_freq_factor": c["rope_high_freq_factor"],
                "original_max_position_embeddings": c["rope_original_max_len"]}
    return None


#: The keys of a Hugging Face config that name special tokens, which ``generate()`` stops at
#: (eos_token_id: one id or a list) and pads with.
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def check_token_ids(config: _C.ModelConfig, token_ids: Mapping[str, Any] | None,
                    where: str = "token_ids") -> dict[str, Any]:
    """`token_ids` checked against the model: keys among TOKEN_ID_KEYS, each an id of its
    vocabulary (eos_token_id also a list of them) or None (left out). Raises ConfigError."""
    if token_ids is None:
        return {}
    if not isinstance(token_ids, Mapping):
        raise ConfigError(f"{where}: token ids are a mapping of {', '.join(TOKEN_ID_KEYS)}, got "
                          f"{type(token_ids).__name__}")
    out: dict[str, Any] = {}
    for key, value in token_ids.items():
        if key not in TOKEN_ID_KEYS:
            raise ConfigError(f"{where}: {key!r} is not a token id key; the keys are "
                              f"{', '.join(TOKEN_ID_KEYS)}")
        if value is None:
            continue
        ids = value if key == "eos_token_id" and isinstance(value, list) else [value]
        if not ids:
            raise ConfigError(f"{where}: eos_token_id [] names no token; give one or more ids, "
                              "or leave it out")
        for i in ids:
            if not isinstance(i, (int, np.integer)) or isinstance(i, bool) or not (
                    0 <= i < config.vocab_size):
                raise ConfigError(f"{where}: {key} {value!r} is not a token id of the model "
                                  f"(an integer in [0, {config.vocab_size}))")
        out[key] = [int(i) for i in ids] if isinstance(value, list) else int(value)
    return out


def hf_token_ids(path: str | os.PathLike) -> dict[str, Any]:
    """The special token ids at `path`, for export_hf's token_ids: a Hugging Face model
    directory or its config.json (bos/eos/pad_token_id, with generation_config.json's over
    them where it is beside it: the ids ``generate()`` used), or what ``nuri tokenize`` wrote
    (its output directory or tokenize.json: the end-of-text token as eos_token_id, the
    beginning-of-text token as bos_token_id). Raises ConfigError."""
    path = os.fspath(path)
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    if os.path.isdir(path):
        for name in ("config.json", "tokenize.json"):
            if os.path.isfile(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise ConfigError(f"{path}: neither a Hugging Face model directory (config.json) "
                              "nor nuri tokenize's output (tokenize.json)")

    def read(file: str) -> dict[str, Any]:
        try:
            with open(file, encoding="utf-8") as f:
                table = json.load(f)
        except (OSError, ValueError, RecursionError) as e:
            raise ConfigError(f"cannot read the token ids of {file}: {e}") from e
        if not isinstance(table, dict):
            raise ConfigError(f"{file}: not a JSON object")
        return table

    def checked(ids: dict[str, Any], file: str) -> dict[str, Any]:
        for key, value in ids.items():
            values = value if key == "eos_token_id" and isinstance(value, list) else [value]
            if not values or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                     for i in values):
                raise ConfigError(f"{file}: {key} {value!r} is not a token id (an integer >= 0"
                                  + (", or a list of them" if key == "eos_token_id" else "")
                                  + ")")
        return ids

    table = read(path)
    if "tokenizer" in table and "model_type" not in table:  # nuri tokenize's record
        tok = table["tokenizer"]
        if not isinstance(tok, dict) or "eot" not in tok:
            raise ConfigError(f"{path}: no tokenizer record with an end-of-text id (eot)")
        out = {"eos_token_id": tok["eot"]}
        if "bos" in tok:
            out["bos_token_id"] = tok["bos"]
        return checked(out, path)
    if "model_type" not in table:
        raise ConfigError(f"{path}: not a Hugging Face model's config.json (it has no "
                          "model_type); name the directory of the model the run started from, "
                          "or nuri tokenize's output")
    out = checked({k: table[k] for k in TOKEN_ID_KEYS if table.get(k) is not None}, path)
    generation = os.path.join(directory, "generation_config.json")
    if os.path.basename(path) == "config.json" and os.path.isfile(generation):
        out.update(checked({k: v for k, v in read(generation).items()
                            if k in TOKEN_ID_KEYS and v is not None}, generation))
    return out


def hf_config(config: _C.ModelConfig, token_ids: Mapping[str, Any] | None = None) -> dict:
    """The Hugging Face ``config.json`` of a nuri model config: GPT2LMHeadModel,
    LlamaForCausalLM, Qwen2ForCausalLM (q/k/v biases) or MistralForCausalLM (a sliding
    window), with the special token ids of `token_ids` (check_token_ids); those not given are
    written as null, which transformers reads as none (left out, its config classes' defaults
    would apply: Llama's and Mistral's eos_token_id 2, GPT-2's 50256)."""
    ids = check_token_ids(config, token_ids)
    return {**_hf_config(config), **dict.fromkeys(TOKEN_ID_KEYS), **ids}


def _hf_config(config: _C.ModelConfig) -> dict:
    c = model_config_to_dict(config)
    gpt2_like = (c["mlp"] == "gelu" and c["norm"] == "layernorm" and c["position"] == "learned"
                 and c["bias"] and c["n_kv_head"] == c["n_head"] and not c["head_dim"]
                 and not c["sliding_window"])
    llama_like = c["mlp"] == "swiglu" and c["norm"] == "rmsnorm" and c["position"] == "rope"
    if gpt2_like:
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": c["vocab_size"], "n_embd": c["d_model"], "n_layer": c["n_layer"],
            "n_head": c["n_head"], "n_inner": c["d_ff"], "n_positions": c["max_seq_len"],
            "n_ctx": c["max_seq_len"], "layer_norm_epsilon": c["norm_eps"],
            "activation_function": "gelu_new", "tie_word_embeddings": c["tied_embeddings"],
            "torch_dtype": "float32",
        }
    if not llama_like:
        raise _C.Error(f"model ({config.summary()}) is neither GPT-2-like (layernorm, learned "
                       "positions, GELU, biases, no GQA) nor Llama-like (rmsnorm, RoPE, "
                       "SwiGLU): Hugging Face has no layout for it")
    out = {
        "vocab_size": c["vocab_size"], "hidden_size": c["d_model"],
        "intermediate_size": c["d_ff"], "num_hidden_layers": c["n_layer"],
        "num_attention_heads": c["n_head"], "num_key_value_heads": c["n_kv_head"],
        "max_position_embeddings": c["max_seq_len"], "rms_norm_eps": c["norm_eps"],
        "rope_theta": c["rope_theta"], "hidden_act": "silu",
        "tie_word_embeddings": c["tied_embeddings"], "torch_dtype": "float32",
    }
    rope_scaling = _hf_rope_scaling(c)
    if c["qkv_bias"]:
        if c["head_dim"]:
            raise _C.Error(f"model ({config.summary()}): Qwen2's layout (q/k/v biases) has no "
                           "head_dim in transformers; it is d_model / n_head there")
        return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **out,
                "rope_scaling": rope_scaling, "use_sliding_window": bool(c["sliding_window"]),
                "sliding_window": c["sliding_window"] or None, "max_window_layers": 0}
    if c["sliding_window"]:
        if rope_scaling or c["bias"]:
            raise _C.Error(f"model ({config.summary()}): Mistral's layout (a sliding window) "
                           "has no rope scaling and no biases")
        return {"architectures": ["MistralForCausalLM"], "model_type": "mistral", **out,
                "head_dim": config.head_size(), "sliding_window": c["sliding_window"]}
    llama = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **out,
             "attention_bias": c["bias"], "mlp_bias": c["bias"], "rope_scaling": rope_scaling}
    if c["head_dim"]:
        llama["head_dim"] = c["head_dim"]
    return llama


def _gpt2(config: _C.ModelConfig) -> bool:
    return model_config_to_dict(config)["mlp"] == "gelu"


def _hf_name_shape(config: _C.ModelConfig, name: str, shape: tuple[int, ...]
                   ) -> tuple[str, tuple[int, ...]]:
    """The Hugging Face key and shape of nuri's parameter `name` of `shape`."""
    if name in ("wte.weight", "model.embed_tokens.weight", "lm_head.weight"):
        shape = (config.vocab_size, *shape[1:])  # without the padded rows
    if _gpt2(config):
        if name.endswith(_GPT2_CONV1D):
            shape = tuple(reversed(shape))
        name = "transformer." + name if name != "lm_head.weight" else name
    return name, tuple(shape)


def _to_hf(config: _C.ModelConfig, name: str, a: np.ndarray, copy: bool = True) -> np.ndarray:
    """nuri's parameter `name` in Hugging Face's layout: a copy, or with copy=False for a
    writer that only reads it, `a` itself where the layout is the same (a row slice of it, a
    transposed copy): a large tensor is then held once, not two or three times."""
    a = np.array(a, dtype=np.float32, copy=True) if copy else np.asarray(a, dtype=np.float32)
    if name in ("wte.weight", "model.embed_tokens.weight", "lm_head.weight"):
        a = a[:config.vocab_size]
    if _gpt2(config) and name.endswith(_GPT2_CONV1D):
        a = a.T
    return np.ascontiguousarray(a)


def to_hf_tensors(model: _C.Model) -> dict[str, np.ndarray]:
    """The model's parameters under Hugging Face's keys and layouts (copies)."""
    config = model.config
    hf_config(config)  # refuses layouts Hugging Face has none for
    return {_hf_name_shape(config, name, a.shape)[0]: _to_hf(config, name, a)
            for name, a in model.parameters().items()}


def _shards(sizes: list[tuple[str, int]], max_shard_bytes: int | None) -> list[list[str]]:
    """Tensor names grouped into files of at most max_shard_bytes each, in order (a tensor
    larger than that has a file of its own); one group when max_shard_bytes is None."""
    if max_shard_bytes is None:
        return [[n for n, _ in sizes]]
    if max_shard_bytes <= 0:
        raise _C.Error(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    groups: list[list[str]] = []
    used = 0
    for name, nbytes in sizes:
        if not groups or used + nbytes > max_shard_bytes:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += nbytes
    return groups


def check_export_directory(directory: str | os.PathLike) -> None:
    """Raises ConfigError when ``directory`` cannot take a Hugging Face export: it is a file, or
    it holds a nuri run (config.json with a run's config, or model.safetensors from nuri.save),
    whose files the export would replace."""
    from .io import CONFIG_KEY

    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ConfigError(f"{directory} is a file, not a directory; name the directory to write "
                          "the Hugging Face model (config.json, model.safetensors) into")
    config, weights = os.path.join(directory, "config.json"), os.path.join(directory,
                                                                           "model.safetensors")
    ours = None
    try:
        with open(config, encoding="utf-8") as f:
            table = json.load(f)
        if isinstance(table, dict) and "model" in table and "train" in table:
            ours = config
    except (OSError, ValueError, RecursionError):
        pass  # none, or not a run's: the export replaces it
    if ours is None and os.path.isfile(weights):
        try:
            if CONFIG_KEY in (_C.SafetensorsReader(weights).metadata or {}):
                ours = weights
        except (_C.Error, OSError):
            pass  # not a readable safetensors file: the export replaces it
    if ours is not None:
        raise ConfigError(f"{directory} holds a nuri run ({ours} is nuri's), which a Hugging "
                          "Face export would overwrite; name another directory (e.g. "
                          f"{os.path.join(directory, 'hf')})")


def _write_model_files(directory: str, config: _C.ModelConfig,
                       planned: list[tuple[str, tuple[int, ...]]],
                       tensors: Iterator[tuple[str, np.ndarray]],
                       max_shard_bytes: int | None,
                       token_ids: Mapping[str, Any] | None = None) -> None:
    """config.json (with `token_ids`) and the weights: model.safetensors, or with
    max_shard_bytes Hugging Face's shards model-0000k-of-0000n.safetensors and
    model.safetensors.index.json. `planned` is
    (key, shape) of every tensor in the order `tensors` yields them (f32). Every file is written
    under a temporary name and renamed into place when all are complete: a failure leaves the
    directory as it was."""
    check_export_directory(directory)
    sizes = [(n, 4 * int(np.prod(shape, dtype=np.int64))) for n, shape in planned]
    groups = _shards(sizes, max_shard_bytes)
    shapes = dict(planned)
    if len(groups) == 1:
        files = ["model.safetensors"]
    else:
        files = [f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors" for k in range(len(groups))]
    made = not os.path.isdir(directory)
    os.makedirs(directory, exist_ok=True)
    tmp = {}  # final name -> its temporary path

    def temporary(name: str) -> str:
        tmp[name] = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
        return tmp[name]

    try:
        with open(temporary("config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_config(config, token_ids), f, indent=2)
            f.write("\n")
        it = iter(tensors)
        for group, file in zip(groups, files):
            writer = _C.SafetensorsWriter(temporary(file), [(n, list(shapes[n])) for n in group],
                                          {"format": "pt"})
            for expected in group:
                name, a = next(it)
                assert name == expected, (name, expected)
                writer.write(name, a)
            writer.close()
            writer = None
        if len(groups) > 1:
            index = {"metadata": {"total_size": sum(b for _, b in sizes)},
                     "weight_map": {n: file for group, file in zip(groups, files) for n in group}}
            with open(temporary("model.safetensors.index.json"), "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2)
                f.write("\n")
    except BaseException:
        writer = None  # its file closed now, not when the traceback goes (a notebook keeps it)
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)
        if made and not os.listdir(directory):
            os.rmdir(directory)
        raise
    # The new weights go in before an earlier export's are removed, so that a kill in between
    # leaves weights there (a model.safetensors wins over an index, as from_pretrained reads);
    # config.json last.
    try:
        for name, path in tmp.items():
            if name != "config.json":
                os.replace(path, os.path.join(directory, name))
    except BaseException:
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)
        raise
    for stale in os.listdir(directory):  # an earlier export's weights would be read with these
        if stale not in tmp and re.fullmatch(
                r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?", stale):
            os.remove(os.path.join(directory, stale))
    os.replace(tmp["config.json"], os.path.join(directory, "config.json"))


def export_hf(model: _C.Model, directory: str | os.PathLike,
              max_shard_bytes: int | None = None,
              token_ids: Mapping[str, Any] | None = None) -> None:
    """Writes ``directory/config.json`` and the weights in Hugging Face's layout, readable by
    the ``safetensors`` library and by ``transformers.from_pretrained``: one
    ``model.safetensors``, or with ``max_shard_bytes`` shards of at most that size and their
    ``model.safetensors.index.json``. The model must hold all of itself (not a ZeRO 3 shard,
    a tensor-parallel slice or a pipeline stage: export their checkpoint with
    export_hf_checkpoint).

    ``token_ids`` ({"bos_token_id", "eos_token_id", "pad_token_id"}; hf_token_ids reads them
    from the model a run started from, or from its ``nuri tokenize`` output) go into
    config.json: without an eos_token_id, ``generate()`` in transformers does not stop at the
    end of a text. nuri's model config holds no token ids, so none are written unless given."""
    check_whole_model(model, f"export_hf({os.fspath(directory)})")
    config = model.config
    hf_config(config, token_ids)  # refuses layouts Hugging Face has none for, and bad ids
    params = model.parameters()
    planned = [_hf_name_shape(config, n, a.shape) for n, a in params.items()]
    _write_model_files(os.fspath(directory), config, planned,
                       ((_hf_name_shape(config, n, a.shape)[0], _to_hf(config, n, a, False))
                        for n, a in params.items()), max_shard_bytes, token_ids)


def export_hf_checkpoint(ckpt: str | os.PathLike, directory: str | os.PathLike,
                         max_shard_bytes: int | None = None,
                         token_ids: Mapping[str, Any] | None = None) -> None:
    """export_hf from a checkpoint (a directory, or a root whose newest one is taken) of any
    layout, sharded by any number of ranks: each tensor is assembled from its slices, converted
    and written in turn, so the memory it takes is the largest tensor's, never the model's.
    token_ids as export_hf's."""
    check_outside_checkpoint(ckpt, directory)
    reader = _C.CheckpointReader(os.fspath(ckpt))
    config = model_config_from_dict(json.loads(reader.meta)["model"], path=f"{reader.dir}: model")
    hf_config(config, token_ids)
    names = _C.ModelConfig.layout_names(config)
    planned = [_hf_name_shape(config, n, tuple(reader.shape(n))) for n in names]
    _write_model_files(os.fspath(directory), config, planned,
                       ((hf, _to_hf(config, n, reader.read(n), False))
                        for n, (hf, _) in zip(names, planned)), max_shard_bytes, token_ids)


class _HFTensors(Mapping):
    """The tensors of a Hugging Face directory (model.safetensors, or the shards its index
    lists), read one at a time as float32 (F32 as is, BF16 and F16 widened exactly)."""

    def __init__(self, directory: str):
        index = os.path.join(directory, "model.safetensors.index.json")
        self._where: dict[str, Any] = {}
        # One model.safetensors wins over an index beside it, as from_pretrained takes it.
        if os.path.exists(index) and not os.path.exists(os.path.join(directory,
                                                                     "model.safetensors")):
            try:
                with open(index, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
                if not isinstance(weight_map, dict) or not all(
                        isinstance(v, str) for v in weight_map.values()):
                    raise ValueError("weight_map is not an object of file names")
            except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
                raise _C.Error(f"{index}: not a safetensors index ({e})") from e
            files = {}
            for key, file in weight_map.items():
                if not file or os.path.basename(file) != file:
                    raise _C.Error(f"{index}: tensor '{key}' is in {file!r}, outside the "
                                   "directory")
                if file not in files:
                    files[file] = self._open(directory, file, f"listed in {index}")
                if key not in files[file].names():
                    raise _C.Error(f"{index}: tensor '{key}' is listed in {file}, which does "
                                   "not hold it")
                self._where[key] = files[file]
        else:
            f = self._open(directory, "model.safetensors", "no model.safetensors.index.json")
            self._where = {k: f for k in f.names()}

    @staticmethod
    def _open(directory: str, file: str, why: str) -> Any:
        path = os.path.join(directory, file)
        if not os.path.exists(path):
            raise _C.Error(f"{directory}: {file} is missing ({why}; only safetensors "
                           "checkpoints are read)")
        return _C.SafetensorsReader(path)

    def __getitem__(self, key: str) -> np.ndarray:
        return self._where[key].read(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _read_hf_tensors(directory: str) -> Mapping[str, np.ndarray]:
    """Every tensor of a Hugging Face directory, read on access (see _HFTensors)."""
    return _HFTensors(directory)


_FUSED = re.compile(r"(model\.layers\.\d+\.)(self_attn\.qkv_proj|mlp\.gate_up_proj)\.weight")


def _unfused(config: _C.ModelConfig, tensors: Mapping[str, np.ndarray], where: str
             ) -> Iterator[tuple[str, Any]]:
    """The tensors with Phi-3's fused weights split into Llama's: qkv_proj's rows into q_proj,
    k_proj and v_proj (heads · head size, then kv heads · head size twice), gate_up_proj's into
    gate_proj and up_proj (d_ff each, in that order: Phi-3 takes the first half as the gate)."""
    for key, src in tensors.items():
        m = _FUSED.fullmatch(key)
        if m is None:
            yield key, src
            continue
        a = np.asarray(src, dtype=np.float32)
        hd = config.head_size()
        if m.group(2) == "self_attn.qkv_proj":
            parts = [("self_attn.q_proj", config.n_head * hd), ("self_attn.k_proj",
                     config.n_kv_head * hd), ("self_attn.v_proj", config.n_kv_head * hd)]
        else:
            parts = [("mlp.gate_proj", config.d_ff), ("mlp.up_proj", config.d_ff)]
        rows = sum(n for _, n in parts)
        if a.ndim != 2 or a.shape[0] != rows:
            raise _C.Error(f"{where}: tensor '{key}' has shape {list(a.shape)}, expected "
                           f"[{rows}, {config.d_model}] (" +
                           " + ".join(f"{n} {p.split('.')[1]} rows" for p, n in parts) + ")")
        start = 0
        for part, n in parts:
            yield f"{m.group(1)}{part}.weight", a[start:start + n]
            start += n


class _Weights(Mapping):
    """Hugging Face tensors without the buffers older checkpoints carry (GPT-2's causal-mask
    attn.bias and attn.masked_bias, often uint8 or bool; Llama's RoPE inv_freq, which nuri
    computes), left out before anything is read."""

    def __init__(self, tensors: Mapping[str, np.ndarray], gpt2: bool):
        self._tensors = tensors
        buffer = (r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)" if gpt2 else
                  r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
        self._keys = [k for k in tensors if not re.fullmatch(buffer, k)]

    def __getitem__(self, key: str) -> np.ndarray:
        return self._tensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def from_hf_tensors(config: _C.ModelConfig, tensors: Mapping[str, np.ndarray],
                    backend: str = "cpu", where: str = "Hugging Face tensors") -> _C.Model:
    """A nuri model from Hugging Face-layout tensors (see the module's doc for the layouts)."""
    gpt2 = _gpt2(config)
    model = _C.Model(config, "cpu", init="zeros")  # every weight is set below, then to `backend`
    params = model.parameters()
    seen = set()
    weights = _Weights(tensors, gpt2)
    for key, src in (weights.items() if gpt2 else _unfused(config, weights, where)):
        name = key
        if gpt2 and name.startswith("transformer."):
            name = name[len("transformer."):]
        if name == "lm_head.weight" and config.tied_embeddings:
            continue  # the tied head is the token embedding
        if name not in params:
            raise _C.Error(f"{where}: tensor '{key}' is not a parameter of this model "
                           f"({config.summary()})")
        a = np.asarray(src, dtype=np.float32)
        check_finite(a, where, key)
        if gpt2 and name.endswith(_GPT2_CONV1D):
            a = a.T
        dst = params[name]
        if name in ("wte.weight", "model.embed_tokens.weight", "lm_head.weight"):
            if a.shape != (config.vocab_size, dst.shape[1]):
                raise _C.Error(f"{where}: tensor '{key}' has shape {list(a.shape)}, expected "
                               f"[{config.vocab_size}, {dst.shape[1]}]")
            dst[: config.vocab_size] = a
            dst[config.vocab_size:] = 0
        else:
            if a.shape != tuple(dst.shape):
                raise _C.Error(f"{where}: tensor '{key}' has shape {list(a.shape)}, expected "
                               f"{list(dst.shape)}")
            dst[...] = a
        seen.add(name)
    missing = [n for n in params if n not in seen]
    if missing:
        prefix = "transformer." if gpt2 and missing[0] != "lm_head.weight" else ""
        raise _C.Error(f"{where}: tensor '{prefix}{missing[0]}' is missing "
                       f"({len(missing)} missing in all)")
    return on_backend(model, backend)


def import_hf(directory: str | os.PathLike, backend: str = "cpu") -> _C.Model:
    """A nuri model from a Hugging Face model directory (config.json + safetensors weights:
    model.safetensors or shards with their index; f32, bf16 or f16) of model_type gpt2, llama,
    qwen2, mistral or phi3 (model_config_from_hf)."""
    directory = os.fspath(directory)
    if os.path.isfile(directory):
        raise _C.Error(f"nuri.import_hf({directory}): a file; it reads a Hugging Face model "
                       "directory (config.json and the weights). A model file nuri.save or a "
                       "run wrote is read by nuri.load(FILE)")
    config = model_config_from_hf(directory)
    return from_hf_tensors(config, _read_hf_tensors(directory), backend, where=directory)


# Keys of every transformers config that say nothing about the network's computation
# (generation defaults, token ids, labels, framework flags): read and left alone.
_METADATA_KEYS = frozenset({
    "_name_or_path", "architectures", "bad_words_ids", "begin_suppress_tokens", "bos_token_id",
    "chunk_size_feed_forward", "decoder_start_token_id", "diversity_penalty", "do_sample",
    "early_stopping", "encoder_no_repeat_ngram_size", "eos_token_id",
    "exponential_decay_length_penalty", "finetuning_task", "forced_bos_token_id",
    "forced_eos_token_id", "id2label", "initializer_range", "is_decoder", "label2id",
    "length_penalty", "max_length", "min_length", "model_type", "no_repeat_ngram_size",
    "num_beam_groups", "num_beams", "num_return_sequences", "output_attentions",
    "output_hidden_states", "output_scores", "pad_token_id", "prefix", "problem_type",
    "pruned_heads", "remove_invalid_values", "repetition_penalty", "return_dict",
    "return_dict_in_generate", "sep_token_id", "suppress_tokens", "task_specific_params",
    "temperature", "tf_legacy_loss", "tie_encoder_decoder", "tokenizer_class", "top_k", "top_p",
    "torch_dtype", "torchscript", "transformers_version", "typical_p", "use_bfloat16",
    "use_cache", "cross_attention_hidden_size", "auto_map",
})
# Keys nuri reads only to check that they have the value it computes with (what the released
# configs of these models carry); another value is refused by name.
_FIXED = {
    "gpt2": {"n_special": 0},  # the original GPT-2 configs'
    "qwen2": {"use_mrope": False},  # Qwen2.5's (multimodal RoPE is Qwen2-VL's)
    "phi3": {"attention_bias": False},  # Phi-3-mini's
}
# Keys nuri reads (or checks) per model_type; any other key is refused by name.
_MODEL_KEYS = {
    "gpt2": {"vocab_size", "n_embd", "n_layer", "n_head", "n_inner", "n_positions", "n_ctx",
             "layer_norm_epsilon", "activation_function", "tie_word_embeddings",
             "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
             "attn_pdrop", "embd_pdrop", "resid_pdrop", "add_cross_attention",
             "is_encoder_decoder",
             # the sequence-classification head's settings: not part of the language model
             "summary_activation", "summary_first_dropout", "summary_proj_to_labels",
             "summary_type", "summary_use_proj",
             # the original configs' settings of GPT-2's own training heads
             "n_special", "predict_special_tokens"},
    "llama": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim",
              "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
              "hidden_act", "attention_bias", "mlp_bias", "attention_dropout", "pretraining_tp",
              "tie_word_embeddings", "add_cross_attention", "is_encoder_decoder"},
    "qwen2": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
              "rms_norm_eps", "rope_theta", "rope_scaling", "hidden_act", "attention_dropout",
              "use_sliding_window", "sliding_window", "max_window_layers", "use_mrope",
              "tie_word_embeddings", "add_cross_attention", "is_encoder_decoder"},
    "mistral": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim",
                "max_position_embeddings", "rms_norm_eps", "rope_theta", "hidden_act",
                "attention_dropout", "sliding_window", "tie_word_embeddings",
                "add_cross_attention", "is_encoder_decoder"},
    # Phi-3 (mini, medium): Llama's network with q/k/v and gate/up each in one fused weight;
    # original_max_position_embeddings only matters to its longrope scaling, which is refused.
    "phi3": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
             "original_max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
             "hidden_act", "attention_dropout", "resid_pdrop", "embd_pdrop", "sliding_window",
             "attention_bias", "tie_word_embeddings", "add_cross_attention",
             "is_encoder_decoder"},
}
# Defaults of transformers' config classes (4.45) for keys a config.json may leave out.
_DEFAULTS = {
    "llama": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
              "num_hidden_layers": 32, "num_attention_heads": 32,
              "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
              "tie_word_embeddings": False},
    "qwen2": {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
              "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
              "tie_word_embeddings": False, "sliding_window": 4096, "max_window_layers": 28},
    "mistral": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                "max_position_embeddings": 4096 * 32, "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0, "tie_word_embeddings": False, "sliding_window": 4096},
    "phi3": {"vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192,
             "num_hidden_layers": 32, "num_attention_heads": 32,
             "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
             "tie_word_embeddings": False},
}


def _scaling_type(scaling: Mapping[str, Any]) -> Any:
    """A rope_scaling's type: "type" where given (transformers copies it over "rope_type")."""
    return scaling.get("type", scaling.get("rope_type"))


def _rope_scaling(where: str, scaling: Any) -> dict[str, Any]:
    """nuri's rope_* keys for Hugging Face's rope_scaling (None, linear or llama3)."""
    if not scaling:
        return {"rope_scaling": "none"}
    if not isinstance(scaling, Mapping):
        raise ConfigError(f"{where}: rope_scaling must be an object, got {scaling!r}")
    kind = _scaling_type(scaling)
    known = {"rope_type", "type", "factor"}
    if kind == "default":
        return {"rope_scaling": "none"}
    if kind == "linear":
        out = {"rope_scaling": "linear", "rope_factor": scaling.get("factor")}
    elif kind == "llama3":
        known |= {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
        missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor",
                               "original_max_position_embeddings") if k not in scaling]
        if missing:
            raise ConfigError(f"{where}: rope_scaling llama3 needs {', '.join(missing)}")
        out = {"rope_scaling": "llama3", "rope_factor": scaling["factor"],
               "rope_low_freq_factor": scaling["low_freq_factor"],
               "rope_high_freq_factor": scaling["high_freq_factor"],
               "rope_original_max_len": scaling["original_max_position_embeddings"]}
    else:
        raise ConfigError(f"{where}: rope_scaling type {kind!r} is not supported; nuri implements "
                          "'linear' and 'llama3'")
    extra = sorted(set(scaling) - known)
    if extra:
        raise ConfigError(f"{where}: rope_scaling key {extra[0]!r} ({kind}) is not supported")
    if out.get("rope_factor") is None:
        raise ConfigError(f"{where}: rope_scaling {kind} needs a factor")
    return out


def model_config_from_hf(path_or_dict: str | os.PathLike | Mapping[str, Any]) -> _C.ModelConfig:
    """A ModelConfig from a Hugging Face ``config.json`` (a path, its directory, or the dict).

    Supports ``model_type`` "gpt2" (GPT-2 family), "llama" (Llama 1–3.x, with rope_scaling
    linear or llama3 and head_dim), "qwen2" (Qwen2, Qwen2.5), "mistral" and "phi3" (Phi-3 mini
    and medium without rope scaling: the 4k-context models); missing keys take
    the defaults of transformers' config classes. A key nuri does not implement is refused by
    name, as is a value it implements differently (other activations, separate attention and
    MLP biases, other rope scalings); dropout, which nuri does not train with, is refused when
    it is not zero except GPT-2's, whose configs all carry it (a warning says it is not used).
    """
    if isinstance(path_or_dict, Mapping):
        hf, where = dict(path_or_dict), "config"
    else:
        where = os.fspath(path_or_dict)
        if os.path.isdir(where):
            where = os.path.join(where, "config.json")
        try:
            with open(where, encoding="utf-8") as f:
                hf = json.load(f)
        except (OSError, ValueError, RecursionError) as e:  # (JSON nested too deeply)
            raise ConfigError(f"cannot read Hugging Face config {where}: {e}") from e
        if not isinstance(hf, dict):
            raise ConfigError(f"{where}: a Hugging Face config is a JSON object")
    kind = hf.get("model_type")
    if not isinstance(kind, str) or kind not in _MODEL_KEYS:
        raise ConfigError(f"{where}: model_type {kind!r} is not supported; nuri reads "
                          "'gpt2', 'llama', 'qwen2', 'mistral' and 'phi3' configs")
    # (a key set to null says the feature is off: "rope_scaling": null in a Mistral config)
    unknown = sorted(k for k in set(hf) - _METADATA_KEYS - _MODEL_KEYS[kind] if hf[k] is not None)
    if unknown:
        raise ConfigError(f"{where}: {kind} config key {unknown[0]!r} is not implemented by nuri"
                          + (f" (nor {', '.join(map(repr, unknown[1:]))})" if unknown[1:] else "")
                          + "; a model that needs it would not compute the same outputs")
    for key in ("add_cross_attention", "is_encoder_decoder"):
        if hf.get(key):
            raise ConfigError(f"{where}: {key} is set; nuri's models are decoder-only")
    for key, value in _FIXED.get(kind, {}).items():
        if key in hf and hf[key] != value:
            raise ConfigError(f"{where}: {kind} config key {key!r} is {hf[key]!r}; nuri "
                              f"implements only {value!r}")
    if kind == "gpt2":
        return model_config_from_dict(_gpt2_table(hf, where), path=where)
    # A key left out takes transformers' default; null does too, but for the two keys where
    # null means none: no sliding window, and as many kv heads as heads.
    h = {**_DEFAULTS[kind], **{k: v for k, v in hf.items() if v is not None}}
    for key in ("num_key_value_heads", "sliding_window"):
        if key in hf and hf[key] is None:
            h[key] = None
    act = h.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{where}: hidden_act {act!r} is not supported; nuri's SwiGLU uses silu")
    for key in ("attention_dropout", "resid_pdrop", "embd_pdrop"):
        if h.get(key, 0.0):
            raise ConfigError(f"{where}: {key} {h[key]} is not supported; nuri trains without "
                              "dropout (set it to 0.0)")
    d_model, n_head = h["hidden_size"], h["num_attention_heads"]
    table = {
        "vocab_size": h["vocab_size"], "d_model": d_model, "n_layer": h["num_hidden_layers"],
        "n_head": n_head, "n_kv_head": h.get("num_key_value_heads") or n_head,
        "d_ff": h["intermediate_size"], "max_seq_len": h["max_position_embeddings"],
        "norm": "rmsnorm", "norm_eps": h["rms_norm_eps"], "position": "rope",
        "rope_theta": h["rope_theta"], "mlp": "swiglu", "bias": False,
        "tied_embeddings": h["tie_word_embeddings"],
    }
    head_dim = h.get("head_dim")
    ints = all(isinstance(v, int) for v in (head_dim, d_model, n_head))
    if head_dim is not None and (not ints or head_dim != d_model // max(n_head, 1)):
        table["head_dim"] = head_dim  # (a value of the wrong type: model_config_from_dict names it)
    if kind == "phi3" and h.get("rope_scaling"):
        scaling = h["rope_scaling"]
        kind_of = _scaling_type(scaling) if isinstance(scaling, Mapping) else scaling
        raise ConfigError(f"{where}: rope_scaling type {kind_of!r} is not supported for phi3; "
                          "nuri reads the Phi-3 models without rope scaling (the 4k-context "
                          "ones)")
    if kind in ("llama", "qwen2"):
        table.update(_rope_scaling(where, h.get("rope_scaling")))
    if kind == "llama":
        bias = h.get("attention_bias", False)
        if h.get("mlp_bias", False) != bias:
            raise ConfigError(f"{where}: attention_bias ({bias}) and mlp_bias "
                              f"({h.get('mlp_bias', False)}) differ; nuri's bias covers both")
        table["bias"] = bias
    elif kind == "qwen2":
        table["qkv_bias"] = True  # Qwen2's q, k and v projections have biases, o_proj none
        # transformers windows layer i when use_sliding_window and i >= max_window_layers.
        # nuri refuses sequences longer than a window, within which every layer computes the
        # same with or without it: one windowed layer is enough to set it, none leaves it off.
        if h.get("use_sliding_window", False):
            full, layers = h["max_window_layers"], h["num_hidden_layers"]
            if not isinstance(full, int) or isinstance(full, bool):
                raise ConfigError(f"{where}: max_window_layers {full!r} is not an integer")
            # (a num_hidden_layers of the wrong type: model_config_from_dict names it)
            if not isinstance(layers, int) or full < layers:
                table["sliding_window"] = h.get("sliding_window") or 0
    elif kind in ("mistral", "phi3"):
        table["sliding_window"] = h.get("sliding_window") or 0
    return model_config_from_dict(table, path=where)


def _gpt2_table(hf: Mapping[str, Any], where: str) -> dict[str, Any]:
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        raise ConfigError(f"{where}: activation_function {act!r} is not supported; nuri's "
                          "GPT-2 MLP uses the tanh GELU (gelu_new)")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise ConfigError(f"{where}: scale_attn_by_inverse_layer_idx and "
                          "reorder_and_upcast_attn are not supported")
    if not hf.get("scale_attn_weights", True):
        raise ConfigError(f"{where}: scale_attn_weights false is not supported; nuri scales "
                          "attention scores by 1/sqrt(head dim)")
    dropouts = {k: hf[k] for k in ("attn_pdrop", "embd_pdrop", "resid_pdrop") if hf.get(k)}
    if dropouts:
        warnings.warn(f"{where}: nuri trains without dropout; "
                      + ", ".join(f"{k}={v}" for k, v in dropouts.items()) + " not used",
                      stacklevel=3)
    d_model = hf.get("n_embd", 768)
    return {
        "vocab_size": hf.get("vocab_size", 50257), "d_model": d_model,
        "n_layer": hf.get("n_layer", 12), "n_head": hf.get("n_head", 12),
        "n_kv_head": hf.get("n_head", 12),
        "d_ff": hf.get("n_inner") or 4 * d_model, "max_seq_len": hf.get("n_positions", 1024),
        "norm": "layernorm", "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
        "position": "learned", "mlp": "gelu", "bias": True,
        "tied_embeddings": hf.get("tie_word_embeddings", True),
    }
