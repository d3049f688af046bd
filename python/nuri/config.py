"""Run configurations: a model, a training setup, parallelism, checkpoints, data and sampling, from
TOML or JSON files, dicts, ``KEY=VALUE`` overrides or command-line flags.

One design choice to know: the schema lives in C++ (``nuri/train/run_config.h``), defined once
with each setting's type, default, range and help; this module only forwards to it. So a config
file, ``python -m nuri train`` and ``nuri-train`` accept and refuse exactly the same things with
the same messages (``train.lr: expected a number > 0, got 'fast'``), and a new setting needs no
Python change. ``reference()`` lists every setting; ``python -m nuri train --help`` shows them as
flags.

    model = "gpt2-tiny"      # a preset name, or a [model] table: preset = "llama-tiny", n_layer = 4
    backend = "cpu"          # or "cuda"; `device` is another name for it
    out = "runs/tiny"        # run directory (config.json, metrics.jsonl, model.safetensors)
    [train]                  # steps, micro_batch, seq_len, grad_accum, lr, ... (TrainConfig)
    [parallel]               # zero_stage, tp, pp, sequence_parallel, bucket_mb, overlap (ParallelConfig)
    [checkpoint]             # dir, save_every, keep, async_save, resume, signals, time_limit
    [data]                   # train, val: text (byte tokens), llm.c .bin or 1-D .npy
    [sample]                 # prompt, max_new_tokens, temperature, top_k

Integers are accepted where numbers are expected; booleans are not numbers. Relative paths are
relative to the working directory, as on the command line.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from . import _C

ConfigError = _C.ConfigError
RunConfig = _C.RunConfig
ModelConfig = _C.ModelConfig
TrainConfig = _C.TrainConfig
ParallelConfig = _C.ParallelConfig
CheckpointConfig = _C.CheckpointConfig
DataConfig = _C.DataConfig
SampleConfig = _C.SampleConfig


def load_config(path: str | os.PathLike) -> RunConfig:
    """Reads a ``.toml`` or ``.json`` run config over the defaults (see the module doc)."""
    return RunConfig.load(os.fspath(path))


def config_from_dict(d: Mapping[str, Any]) -> RunConfig:
    """A validated RunConfig from a dict in the schema's layout; ConfigError names the key."""
    return RunConfig.from_dict(dict(d))


def apply_overrides(cfg: RunConfig, overrides: Sequence[str]) -> RunConfig:
    """A new RunConfig with ``KEY=VALUE`` overrides applied in order.

    Keys are paths in the schema (``train.lr=1e-3``, ``model.n_layer=4``, ``log_every=1``);
    ``model=NAME`` starts the model from that preset again. Values use TOML syntax; text that is
    not TOML is taken as a string. Raises ConfigError naming the key.
    """
    return cfg.with_overrides(list(overrides))


def model_config_from_dict(table: str | Mapping[str, Any], path: str = "model") -> ModelConfig:
    """A validated ModelConfig from a preset name or a ``[model]`` table (``preset`` plus any
    ModelConfig keys, which override the preset). Without a preset the keys override
    ``ModelConfig()``, GPT-2 124M (a run config's ``[model]`` table without one overrides the
    run's default model, ``demo``, instead). ``path`` prefixes error messages."""
    if isinstance(table, str):
        table = {"preset": table}
    if not isinstance(table, Mapping):
        raise ConfigError(f"{path}: expected a table or a preset name, got {table!r}")
    fields = dict(table)
    preset = fields.pop("preset", None)
    if preset and preset not in ModelConfig.preset_names():
        raise ConfigError(f"{path}.preset: unknown preset {preset!r}; presets: "
                          f"{', '.join(ModelConfig.preset_names())}")
    base = (ModelConfig.preset(preset) if preset else ModelConfig()).to_dict()
    # n_head alone keeps a model with full attention full (as a run config does).
    if "n_head" in fields and "n_kv_head" not in fields and base["n_kv_head"] == base["n_head"]:
        fields["n_kv_head"] = fields["n_head"]
    fields = {**base, **fields}
    return ModelConfig.from_json(json.dumps(fields), path)


def model_config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """Every ModelConfig field as a plain dict (floats as their shortest float32 decimal)."""
    return config.to_dict()


def reference() -> list[dict[str, Any]]:
    """Every setting of a run config: section, key, path, kind, choices, aliases, flag, help,
    default and what values it takes, in the schema's order."""
    return _C.settings_schema()
