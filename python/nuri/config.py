"""Run configurations: a model, a training setup, data, sampling and output, from TOML or JSON.

One design choice to know: every value is checked here, in Python, against a schema of the C++
fields before it reaches the extension, so a bad config fails with the key path and the expected
type (``train.lr: expected a number, got 'fast'``) instead of a pybind11 conversion error. The
C++ ``validate()`` then checks the values themselves (``n_head (5) must divide d_model (64)``).

Schema (every table and key optional; JSON files hold the same structure)::

    model = "gpt2-tiny"             # a preset name (see ModelConfig.preset_names()), or a table:
    [model]
    preset = "llama-tiny"           # optional starting point (default: ModelConfig(), GPT-2 124M)
    n_layer = 4                     # any ModelConfig field overrides the preset
    # vocab_size, d_model, n_layer, n_head, n_kv_head, d_ff, max_seq_len: integers
    # norm: "layernorm" | "rmsnorm"; position: "learned" | "rope"; mlp: "gelu" | "swiglu"
    # norm_eps, rope_theta: numbers; bias, tied_embeddings: true | false

    [train]                         # any TrainConfig field (defaults: TrainConfig())
    # steps, micro_batch, seq_len, grad_accum, warmup_steps, eval_every, eval_batches, seed: ints
    # lr, min_lr_ratio, weight_decay, beta1, beta2, eps, grad_clip: numbers
    # on_nonfinite: "skip" | "stop"

    [data]
    train = "corpus.txt"            # text (byte-tokenized), llm.c .bin token file or 1-D .npy
    val = "val.bin"                 # optional; default: the last 10% of train, held out

    [sample]                        # the sample printed after training (byte-level models)
    prompt = "The "
    max_new_tokens = 200            # 0: no sample
    temperature = 0.8               # 0: greedy
    top_k = 40                      # 0: the whole vocabulary

    backend = "cpu"                 # or "cuda"; `device = "cuda"` is the same setting
    out = "runs/NAME"               # run directory (default: runs/<timestamp>)
    log_every = 10                  # progress lines when stdout is not a terminal

Integers are accepted where numbers are expected; booleans are not numbers. Relative paths are
relative to the working directory, as on the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from . import _C

# Field kinds: int, float, bool, str, or a tuple of allowed strings.
MODEL_FIELDS: dict[str, Any] = {
    "vocab_size": int, "d_model": int, "n_layer": int, "n_head": int, "n_kv_head": int,
    "d_ff": int, "max_seq_len": int, "norm": ("layernorm", "rmsnorm"), "norm_eps": float,
    "position": ("learned", "rope"), "rope_theta": float, "mlp": ("gelu", "swiglu"),
    "bias": bool, "tied_embeddings": bool,
}
TRAIN_FIELDS: dict[str, Any] = {
    "steps": int, "micro_batch": int, "seq_len": int, "grad_accum": int, "lr": float,
    "min_lr_ratio": float, "warmup_steps": int, "weight_decay": float, "beta1": float,
    "beta2": float, "eps": float, "grad_clip": float, "eval_every": int, "eval_batches": int,
    "seed": int, "on_nonfinite": ("skip", "stop"),
}
DATA_FIELDS: dict[str, Any] = {"train": str, "val": str}
SAMPLE_FIELDS: dict[str, Any] = {
    "prompt": str, "max_new_tokens": int, "temperature": float, "top_k": int,
}
TOP_FIELDS: dict[str, Any] = {
    "model": "table", "train": "table", "data": "table", "sample": "table",
    "backend": str, "device": str, "out": str, "log_every": int,
}


class ConfigError(_C.Error, ValueError):
    """A configuration that cannot be used; the message names the key path.

    It is both a ``nuri.Error`` and a ``ValueError``.
    """


@dataclass
class DataConfig:
    """Training and validation data paths (``val=None``: hold out the last 10% of ``train``)."""

    train: str | None = None
    val: str | None = None


@dataclass
class SampleConfig:
    """The sample generated after training (byte-level models only)."""

    prompt: str = "The "
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 40


@dataclass(eq=False)
class RunConfig:
    """Everything a training run needs: ``python -m nuri train`` reads one of these."""

    model: _C.ModelConfig = field(default_factory=_C.ModelConfig)
    train: _C.TrainConfig = field(default_factory=_C.TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    backend: str = "cpu"
    out: str | None = None
    log_every: int = 10
    preset: str | None = None  #: the model preset the model table started from, if any

    def to_dict(self) -> dict[str, Any]:
        """Every field, resolved, in the schema's layout (``config_from_dict`` reads it back)."""
        model = model_config_to_dict(self.model)
        if self.preset is not None:
            model = {"preset": self.preset, **model}
        d: dict[str, Any] = {
            "model": model,
            "train": _fields_to_dict(self.train, TRAIN_FIELDS),
            "data": {k: v for k, v in dataclasses.asdict(self.data).items() if v is not None},
            "sample": dataclasses.asdict(self.sample),
            "backend": self.backend,
            "log_every": self.log_every,
        }
        if self.out is not None:
            d["out"] = self.out
        return d

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunConfig) and self.to_dict() == other.to_dict()


_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               "table": "a table"}


def _describe(kind: Any) -> str:
    if isinstance(kind, tuple):
        return "one of " + ", ".join(repr(v) for v in kind)
    return _KIND_NAMES[kind]


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return {dict: "a table", list: "a list"}.get(type(value)) or repr(value)


def check_value(path: str, value: Any, kind: Any) -> Any:
    """Returns ``value`` converted to ``kind`` (int, float, bool, str or a tuple of strings).

    Raises ConfigError naming ``path`` and the expected type otherwise.
    """
    ok = False
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is bool or kind is str:
        ok = isinstance(value, kind)
    elif kind == "table":
        ok = isinstance(value, dict)
    else:
        ok = isinstance(value, str) and value in kind
    if not ok:
        raise ConfigError(f"{path}: expected {_describe(kind)}, got {_show(value)}")
    return value


def _check_table(path: str, table: Any, schema: Mapping[str, Any], extra: Sequence[str] = ()):
    check_value(path, table, "table")
    known = sorted([*schema, *extra])
    for key in table:
        if key not in schema and key not in extra:
            where = f"{path}.{key}" if path else key
            raise ConfigError(f"{where}: unknown key; known keys: {', '.join(known)}")


def _apply_fields(obj: Any, table: Mapping[str, Any], schema: Mapping[str, Any], path: str):
    for key, value in table.items():
        if key not in schema:
            continue
        value = check_value(f"{path}.{key}", value, schema[key])
        if key == "seed" and value < 0:
            raise ConfigError(f"{path}.seed: expected a non-negative integer, got {value}")
        try:
            setattr(obj, key, value)
        except (TypeError, ValueError, OverflowError) as e:  # e.g. an int beyond int64
            raise ConfigError(f"{path}.{key}: {e}") from e


def _short_float(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (0.001, not 0.0010000000474...)."""
    return float(str(np.float32(value))) if math.isfinite(value) else value


def _fields_to_dict(obj: Any, schema: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, kind in schema.items():
        value = getattr(obj, key)
        out[key] = _short_float(value) if kind is float else value
    return out


def model_config_to_dict(config: _C.ModelConfig) -> dict[str, Any]:
    """Every ModelConfig field as a plain dict (floats as their shortest float32 decimal)."""
    return _fields_to_dict(config, MODEL_FIELDS)


def model_config_from_dict(table: str | Mapping[str, Any], path: str = "model") -> _C.ModelConfig:
    """A validated ModelConfig from a preset name or a ``[model]`` table (see the module doc).

    ``path`` prefixes error messages. Raises ConfigError for unknown keys, wrong types and values
    the C++ ``validate()`` rejects.
    """
    return _model_from(table, path)[0]


def _model_from(table: Any, path: str) -> tuple[_C.ModelConfig, str | None]:
    if isinstance(table, str):
        table = {"preset": table}
    _check_table(path, table, MODEL_FIELDS, extra=("preset",))
    preset = table.get("preset")
    if preset is None:
        config = _C.ModelConfig()
    else:
        check_value(f"{path}.preset", preset, str)
        if preset not in _C.ModelConfig.preset_names():
            names = ", ".join(_C.ModelConfig.preset_names())
            raise ConfigError(f"{path}.preset: unknown preset {preset!r}; presets: {names}")
        config = _C.ModelConfig.preset(preset)
    _apply_fields(config, table, MODEL_FIELDS, path)
    try:
        config.validate()
    except _C.Error as e:
        raise ConfigError(f"{path}: {e}") from e
    return config, preset


def _section(d: Mapping[str, Any], key: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    table = d.get(key, {})
    _check_table(key, table, schema)
    return {k: check_value(f"{key}.{k}", v, schema[k]) for k, v in table.items()}


def config_from_dict(d: Mapping[str, Any]) -> RunConfig:
    """A validated RunConfig from a dict in the schema's layout (see the module doc).

    Raises ConfigError naming the key for unknown keys, wrong types and invalid values.
    """
    _check_table("", d, TOP_FIELDS)
    top = {k: check_value(k, d[k], TOP_FIELDS[k])
           for k in ("backend", "out", "log_every") if k in d}
    if "device" in d:  # another name for backend, as PyTorch users write it
        device = check_value("device", d["device"], str)
        if top.get("backend", device) != device:
            raise ConfigError(f"device ({device!r}) and backend ({top['backend']!r}) name the same "
                              "setting and disagree; give one of them")
        top["backend"] = device
    model, preset = _model_from(d.get("model", {}), "model")
    train = _C.TrainConfig()
    train_table = d.get("train", {})
    _check_table("train", train_table, TRAIN_FIELDS)
    _apply_fields(train, train_table, TRAIN_FIELDS, "train")
    try:
        train.validate()
    except _C.Error as e:
        raise ConfigError(f"train: {e}") from e
    if train.seq_len > model.max_seq_len:
        raise ConfigError(f"train.seq_len ({train.seq_len}) exceeds model.max_seq_len "
                          f"({model.max_seq_len})")
    sample = SampleConfig(**_section(d, "sample", SAMPLE_FIELDS))
    if sample.max_new_tokens < 0 or sample.top_k < 0 or not sample.temperature >= 0:
        raise ConfigError("sample: max_new_tokens, top_k and temperature must be >= 0, got "
                          f"{sample.max_new_tokens}, {sample.top_k}, {sample.temperature}")
    cfg = RunConfig(model=model, train=train, data=DataConfig(**_section(d, "data", DATA_FIELDS)),
                    sample=sample, preset=preset, **top)
    if cfg.log_every < 1:
        raise ConfigError(f"log_every: expected a positive integer, got {cfg.log_every}")
    backends = _C.build_info()["backends"]
    if cfg.backend not in backends:
        key = "device" if "device" in d else "backend"
        raise ConfigError(f"{key}: {cfg.backend!r} is not in this build of nuri; backends: "
                          f"{', '.join(backends)}")
    return cfg


def load_config(path: str | os.PathLike) -> RunConfig:
    """Reads a ``.toml`` or ``.json`` run config (see the module doc for the schema)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from e
    if not path.endswith((".json", ".toml")):
        raise ConfigError(f"{path}: a config file must end in .toml or .json")
    is_json = path.endswith(".json")
    try:
        d = json.loads(raw) if is_json else tomllib.loads(raw.decode("utf-8"))
    except ValueError as e:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError
        raise ConfigError(f"{path}: not valid {'JSON' if is_json else 'TOML'}: {e}") from e
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a table (JSON object) at the top level")
    try:
        return config_from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def _parse_value(raw: str, kind: Any) -> Any:
    """A command-line value: TOML syntax (1e-3, true, "text"), else the text itself."""
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
    if (kind is str or isinstance(kind, tuple)) and not isinstance(value, str):
        return raw  # prompt=1984 is the text "1984"
    return value


def apply_overrides(cfg: RunConfig, overrides: Sequence[str]) -> RunConfig:
    """A new RunConfig with ``KEY=VALUE`` overrides applied in order.

    Keys are paths in the schema: ``train.lr=1e-3``, ``model.n_layer=4``, ``data.train=x.txt``,
    ``log_every=1``. ``model=NAME`` (or ``model.preset=NAME``) starts the model from that preset
    again, dropping earlier model settings. Values use TOML syntax; text that is not TOML is
    taken as a string. Raises ConfigError naming the key.
    """
    d = cfg.to_dict()
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=1e-3")
        parts = key.split(".")
        if parts in (["model"], ["model", "preset"]):
            d["model"] = {"preset": check_value(key, _parse_value(raw, str), str)}
            continue
        if len(parts) == 1:
            if parts[0] not in TOP_FIELDS or TOP_FIELDS[parts[0]] == "table":
                known = ", ".join(k for k, v in TOP_FIELDS.items() if v != "table")
                raise ConfigError(f"{key}: not a value to override; top-level values: {known}; "
                                  "tables take SECTION.KEY=VALUE")
            d[key] = _parse_value(raw, TOP_FIELDS[key])
            continue
        section, name = parts[0], ".".join(parts[1:])
        schemas = {"model": MODEL_FIELDS, "train": TRAIN_FIELDS, "data": DATA_FIELDS,
                   "sample": SAMPLE_FIELDS}
        if section not in schemas:
            raise ConfigError(f"{key}: unknown section {section!r}; sections: "
                              f"{', '.join(schemas)}")
        if name not in schemas[section]:
            raise ConfigError(f"{key}: unknown key; known keys: "
                              f"{', '.join(sorted(schemas[section]))}")
        d.setdefault(section, {})[name] = _parse_value(raw, schemas[section][name])
    return config_from_dict(d)


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
