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
from typing import Mapping

import numpy as np

from . import _C
from .config import model_config_from_hf, model_config_to_dict

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


def to_hf_tensors(model: _C.Model) -> dict[str, np.ndarray]:
    """The model's parameters under Hugging Face's keys and layouts (copies)."""
    config = model.config
    hf_config(config)  # refuses layouts Hugging Face has none for
    vocab = config.vocab_size
    out = {}
    for name, a in model.parameters().items():
        a = np.array(a, dtype=np.float32, copy=True)
        if name in ("wte.weight", "model.embed_tokens.weight", "lm_head.weight"):
            a = a[:vocab]
        if _gpt2(config):
            if name.endswith(_GPT2_CONV1D):
                a = np.ascontiguousarray(a.T)
            name = "transformer." + name if name != "lm_head.weight" else name
        out[name] = np.ascontiguousarray(a)
    return out


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
