"""Planning an allocation (issue #24): which layouts of a model fit a kind of device and an
allocation, and how fast each would train; and device profiles, shipped or measured here.

    import nuri
    cfg = nuri.model_config_from_hf("Meta-Llama-3-8B/config.json")
    result = nuri.plan(cfg, device="h100-sxm-80gb", nodes=1, seq_len=8192, global_batch=32)
    print(result.text)                  # the table, best first, and why the rest do not fit
    best = result.entries[0]["layout"]  # {"dp", "tp", "pp", "zero", "recompute", "sp", ...}

Memory comes from the formulas of what nuri allocates (the tests hold them to the allocators'
counts); time from the FLOPs and bytes of a step over the profile's speeds. ``nuri calibrate``
measures this machine's speeds into a profile file. MFU's definition: the README's "Planning an
allocation".
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

from . import _C
from .config import ModelConfig


class PlanResult(NamedTuple):
    """Every layout (dicts: layout, memory by category in bytes, time in seconds, tokens per
    second, mfu, hfu, fits, why), those that fit first, fastest first; and the table as text."""

    entries: list[dict[str, Any]]
    text: str


def device_profile_names() -> list[str]:
    """The shipped profiles' names."""
    return list(_C.device_profile_names())


def device_profile(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """A shipped profile by name, or a profile file (JSON, what calibrate writes)."""
    return json.loads(_C.device_profile_json(os.fspath(name_or_path)))


def _profile_json(device: str | os.PathLike | dict[str, Any]) -> str:
    if isinstance(device, dict):
        return _C.check_device_profile_json(json.dumps(device), "the device profile given")
    return _C.device_profile_json(os.fspath(device))


def plan(model: ModelConfig | str, device: str | os.PathLike | dict[str, Any] = "h100-sxm-80gb",
         nodes: int = 1, devices_per_node: int | None = None, seq_len: int | None = None,
         global_batch: int | None = None, usable_fraction: float = 0.9,
         rows: int = 10) -> PlanResult:
    """The layouts of ``nodes`` × ``devices_per_node`` devices (default: the profile's per node)
    for ``model`` at ``seq_len`` (default: its max_seq_len) and ``global_batch`` sequences a step
    (default: 8 a device). ``rows``: how many the text shows. ``model``: a ModelConfig or a
    preset's name."""
    if isinstance(model, str):
        model = ModelConfig(model)
    entries, text = _C.plan_layouts(
        model, _profile_json(device), nodes, devices_per_node or 0,
        seq_len if seq_len is not None else model.max_seq_len, global_batch or 0,
        usable_fraction, rows)
    return PlanResult(list(entries), text)


def estimate_memory(model: ModelConfig | str, layout: dict[str, Any], seq_len: int,
                    device: str | os.PathLike | dict[str, Any] = "h100-sxm-80gb",
                    stage: int = 0) -> dict[str, int]:
    """The bytes one device holds for ``layout`` (keys dp, tp, pp, zero, recompute,
    recompute_every, sp, micro_batch, grad_accum, bucket_bytes, keep_gathered, overlap), on
    pipeline stage ``stage``."""
    return dict(_C.estimate_memory(model, layout, seq_len, _profile_json(device), stage))


def estimate_step_time(model: ModelConfig | str, layout: dict[str, Any], seq_len: int,
                       device: str | os.PathLike | dict[str, Any] = "h100-sxm-80gb",
                       nodes: int = 1) -> dict[str, float]:
    """A step's predicted seconds, in parts (compute, elementwise, tp_comm, pp_comm, bubble,
    dp_comm, total)."""
    return dict(_C.estimate_step_time(model, layout, seq_len, _profile_json(device), nodes))


def model_flops_per_token(model: ModelConfig | str, seq_len: int) -> float:
    """MFU's FLOPs of one trained token (see the README's definition)."""
    return float(_C.model_flops_per_token(model, seq_len))


def calibrate(backend: str = "cpu", base: str | None = None, out: str | os.PathLike | None = None,
              seconds_per_probe: float = 0.5, process_group: Any = None) -> dict[str, Any]:
    """Measures this machine on ``backend`` (products, attention, elementwise work; with a
    process group of several ranks, its all-reduce: then collective, each rank on its own
    device) into a profile that starts from ``base`` (default: cpu, or h100-sxm-80gb on a GPU:
    the datasheet peak MFU uses); rank 0 writes it to ``out`` when given."""
    if base is None:
        base = "cpu" if backend == "cpu" else "h100-sxm-80gb"
    text = _C.calibrate(backend, base, seconds_per_probe, process_group)
    if out is not None and (process_group is None or process_group.rank == 0):
        tmp = f"{os.fspath(out)}.tmp-{os.getpid()}"  # a reader never sees half a profile
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text + "\n")
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return json.loads(text)
