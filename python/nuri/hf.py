"""Hugging Face interop: export a nuri model as a Hugging Face model directory (``config.json`` and
``model.safetensors``) and import one back.

Layouts (what ``transformers`` writes for GPT2LMHeadModel and LlamaForCausalLM):

- GPT-2: keys ``transformer.wte.weight``, ``transformer.h.{i}.attn.c_attn.weight`` ..., with the
  Conv1D weights stored as [in, out] (nuri keeps [out, in], so they are transposed both ways);
  the LM head is tied to ``wte`` and not stored. Import accepts keys with or without the
  ``transformer.`` prefix (both exist in the wild) and ignores ``attn.bias``/``attn.masked_bias``
  buffers that older checkpoints carry.
- Llama: nuri's names are Hugging Face's (``model.layers.{i}.self_attn.q_proj.weight`` ...), and
  both use the rotate-half rotary layout that ``transformers`` applies to q_proj/k_proj, so the
  weights go across unchanged.

nuri pads the vocabulary to a multiple of 64; exported embeddings and LM heads have exactly
``vocab_size`` rows, and import pads them with zeros again.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import numpy as np

from . import _C
from .config import ConfigError, model_config_from_dict, model_config_to_dict

#: Conv1D weights of a GPT-2 block (stored [in, out] by Hugging Face).
_GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_config(config: _C.ModelConfig) -> dict:
    """The Hugging Face ``config.json`` of a nuri model config (GPT-2 or Llama family)."""
    c = model_config_to_dict(config)
    gpt2_like = (c["mlp"] == "gelu" and c["norm"] == "layernorm" and c["position"] == "learned"
                 and c["bias"] and c["n_kv_head"] == c["n_head"])
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
    if llama_like:
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": c["vocab_size"], "hidden_size": c["d_model"],
            "intermediate_size": c["d_ff"], "num_hidden_layers": c["n_layer"],
            "num_attention_heads": c["n_head"], "num_key_value_heads": c["n_kv_head"],
            "max_position_embeddings": c["max_seq_len"], "rms_norm_eps": c["norm_eps"],
            "rope_theta": c["rope_theta"], "hidden_act": "silu",
            "attention_bias": c["bias"], "mlp_bias": c["bias"],
            "tie_word_embeddings": c["tied_embeddings"], "torch_dtype": "float32",
        }
    raise _C.Error(f"model ({config.summary()}) is neither GPT-2-like (layernorm, learned "
                   "positions, GELU, biases, no GQA) nor Llama-like (rmsnorm, RoPE, SwiGLU): "
                   "Hugging Face has no layout for it")


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


def _to_hf(config: _C.ModelConfig, name: str, a: np.ndarray) -> np.ndarray:
    """nuri's parameter `name` in Hugging Face's layout (a copy)."""
    a = np.array(a, dtype=np.float32, copy=True)
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


def export_hf(model: _C.Model, directory: str | os.PathLike) -> None:
    """Writes ``directory/config.json`` and ``directory/model.safetensors`` in Hugging Face's
    layout, readable by the ``safetensors`` library and by ``transformers.from_pretrained``."""
    from safetensors.numpy import save_file

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config(model.config), f, indent=2)
        f.write("\n")
    save_file(to_hf_tensors(model), os.path.join(directory, "model.safetensors"),
              metadata={"format": "pt"})


def export_hf_checkpoint(ckpt: str | os.PathLike, directory: str | os.PathLike) -> None:
    """export_hf from a checkpoint (a directory, or a root whose newest one is taken) of any
    layout, sharded by any number of ranks: each tensor is assembled from its slices, converted
    and written in turn, so the memory it takes is the largest tensor's, never the model's."""
    reader = _C.CheckpointReader(os.fspath(ckpt))
    config = model_config_from_dict(json.loads(reader.meta)["model"], path=f"{reader.dir}: model")
    hf = hf_config(config)
    names = _C.ModelConfig.layout_names(config)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf, f, indent=2)
        f.write("\n")
    planned = [_hf_name_shape(config, n, tuple(reader.shape(n))) for n in names]
    writer = _C.SafetensorsWriter(os.path.join(directory, "model.safetensors"),
                                  [(n, list(s)) for n, s in planned], {"format": "pt"})
    for name, (hf_name, _) in zip(names, planned):
        writer.write(hf_name, _to_hf(config, name, reader.read(name)))
    writer.close()


def _read_hf_tensors(directory: str) -> dict[str, np.ndarray]:
    """Every tensor of a Hugging Face directory: model.safetensors, or the shards listed in
    model.safetensors.index.json."""
    from safetensors.numpy import load_file

    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            raise _C.Error(f"{directory}: {name} is missing (no model.safetensors and no "
                           "shard index: only safetensors checkpoints are read)")
        try:
            tensors.update(load_file(path))
        except Exception as e:  # safetensors raises its own types for corrupt files
            raise _C.Error(f"{path}: not a readable safetensors file ({e})") from e
    return tensors


def from_hf_tensors(config: _C.ModelConfig, tensors: Mapping[str, np.ndarray],
                    backend: str = "cpu", where: str = "Hugging Face tensors") -> _C.Model:
    """A nuri model from Hugging Face-layout tensors (see the module's doc for the layouts)."""
    gpt2 = _gpt2(config)
    model = _C.Model(config, backend)
    params = model.parameters()
    seen = set()
    for key, src in tensors.items():
        name = key
        if gpt2:
            if name.startswith("transformer."):
                name = name[len("transformer."):]
            if re.fullmatch(r"h\.\d+\.attn\.(bias|masked_bias)", name):
                continue  # causal-mask buffers of older GPT-2 checkpoints
            if name == "lm_head.weight" and config.tied_embeddings:
                continue  # the tied head is wte
        if name not in params:
            raise _C.Error(f"{where}: tensor '{key}' is not a parameter of this model "
                           f"({config.summary()})")
        a = np.asarray(src, dtype=np.float32)
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
    model.sync_compute_weights()
    return model


def import_hf(directory: str | os.PathLike, backend: str = "cpu") -> _C.Model:
    """A nuri model from a Hugging Face model directory (config.json + safetensors weights) of
    model_type gpt2 or llama."""
    directory = os.fspath(directory)
    config = model_config_from_hf(directory)
    return from_hf_tensors(config, _read_hf_tensors(directory), backend, where=directory)


def model_config_from_hf(path_or_dict: str | os.PathLike | Mapping[str, Any]) -> _C.ModelConfig:
    """A ModelConfig from a Hugging Face ``config.json`` (a path, its directory, or the dict).

    Supports ``model_type`` "gpt2" (GPT-2 family) and "llama"; missing keys take the defaults
    of transformers' GPT2Config / LlamaConfig. Features nuri does not have (RoPE scaling, other
    activations, separate attention and MLP biases) are rejected by name.
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
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read Hugging Face config {where}: {e}") from e
    kind = hf.get("model_type")
    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            raise ConfigError(f"{where}: activation_function {act!r} is not supported; nuri's "
                              "GPT-2 MLP uses the tanh GELU (gelu_new)")
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
            raise ConfigError(f"{where}: scale_attn_by_inverse_layer_idx and "
                              "reorder_and_upcast_attn are not supported")
        d_model = hf.get("n_embd", 768)
        table = {
            "vocab_size": hf.get("vocab_size", 50257), "d_model": d_model,
            "n_layer": hf.get("n_layer", 12), "n_head": hf.get("n_head", 12),
            "n_kv_head": hf.get("n_head", 12),
            "d_ff": hf.get("n_inner") or 4 * d_model, "max_seq_len": hf.get("n_positions", 1024),
            "norm": "layernorm", "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
            "position": "learned", "mlp": "gelu", "bias": True,
            "tied_embeddings": hf.get("tie_word_embeddings", True),
        }
    elif kind == "llama":
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{where}: hidden_act {act!r} is not supported; nuri's SwiGLU "
                              "uses silu")
        if hf.get("rope_scaling"):
            raise ConfigError(f"{where}: rope_scaling {hf['rope_scaling']!r} is not supported")
        bias = hf.get("attention_bias", False)
        if hf.get("mlp_bias", bias) != bias:
            raise ConfigError(f"{where}: attention_bias ({bias}) and mlp_bias "
                              f"({hf['mlp_bias']}) differ; nuri's bias covers both")
        d_model, n_head = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
        if hf.get("head_dim") not in (None, d_model // max(n_head, 1)):
            raise ConfigError(f"{where}: head_dim ({hf['head_dim']}) must be hidden_size / "
                              "num_attention_heads in nuri")
        table = {
            "vocab_size": hf.get("vocab_size", 32000), "d_model": d_model,
            "n_layer": hf.get("num_hidden_layers", 32), "n_head": n_head,
            "n_kv_head": hf.get("num_key_value_heads") or n_head,
            "d_ff": hf.get("intermediate_size", 11008),
            "max_seq_len": hf.get("max_position_embeddings", 2048), "norm": "rmsnorm",
            "norm_eps": hf.get("rms_norm_eps", 1e-6), "position": "rope",
            "rope_theta": hf.get("rope_theta", 10000.0), "mlp": "swiglu", "bias": bias,
            "tied_embeddings": hf.get("tie_word_embeddings", False),
        }
    else:
        raise ConfigError(f"{where}: model_type {kind!r} is not supported; nuri reads "
                          "'gpt2' and 'llama' configs")
    return model_config_from_dict(table, path=where)
