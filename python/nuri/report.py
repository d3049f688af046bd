"""What a run's allocations bought (issue #24): ``nuri report DIR`` reads the run ledger
(``DIR/ledger.jsonl``, nuri/train/ledger.h: a record at each allocation's start and end) and
prints, per allocation and in total, the tokens trained, device-hours, MFU and goodput, with the
time lost broken down; and plots it (PNG).

    rep = nuri.report("runs/ck")       # a dict: "allocations", "total"
    print(nuri.format_report(rep))

Goodput = productive training time / allocated device time, both summed over allocations and
weighted by their devices; "productive" leaves out startup, checkpoint loads and saves,
evaluation, steps redone after a crash or preemption (an earlier allocation had done them but
not checkpointed them), the end of the run and what no part covers. An allocation without an
end record (killed with SIGKILL, a node lost) is listed with the steps it checkpointed (from
where the one before it ended to where the one after it resumed), its time unknown.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from . import _C

PARTS = ("startup", "checkpoint_load", "evaluation", "training", "redone", "checkpoint_save",
         "finish", "unaccounted")


# The fields of the records (nuri/train/ledger.h) that the report reads, and their kinds.
_START = {"id": str, "time": float, "ranks": "count", "backend": str, "layout": str,
          "tokens_per_step": "whole", "flops_per_token": "positive"}
_END = {"id": str, "wall": "positive", "steps_from": "whole", "steps_done": "whole",
        "redone_steps": "whole", "status": int, "reason": str, "parts": dict}


def _valid(value: Any, kind: Any) -> bool:
    if kind is str or kind is dict:
        return isinstance(value, kind)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if kind in (int, "whole", "count") and not isinstance(value, int):
        return False
    return math.isfinite(value) and (kind not in ("whole", "positive") or value >= 0) and (
        kind != "count" or value >= 1)


def _check_record(rec: dict[str, Any], where: str) -> None:
    """Raises nuri.Error naming the first field of a start or end record that is missing or
    not what nuri writes there."""
    fields = dict(_START if rec["event"] == "start" else _END)
    if rec["event"] == "start" and "peak_flops" in rec:
        fields["peak_flops"] = "positive"
    for key, kind in fields.items():
        if key not in rec or not _valid(rec[key], kind):
            raise _C.Error(f"{where}: the {rec['event']} record's {key!r} is "
                           f"{repr(rec.get(key, 'missing'))[:80]}, not what nuri writes there; "
                           "the ledger was damaged or edited: restore it, or remove the record")
    if rec["event"] == "end":
        for part in PARTS:
            if not _valid(rec["parts"].get(part), float):
                raise _C.Error(f"{where}: the end record's parts[{part!r}] is "
                               f"{repr(rec['parts'].get(part, 'missing'))[:80]}, not a number; "
                               "the ledger was damaged or edited: restore it, or remove the "
                               "record")


def read_ledger(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """The allocations of ``directory/ledger.jsonl``, each its start record's fields with its end
    record under "end" (None for an allocation that never wrote one). Lines that are not a JSON
    object (cut short by a crash) are passed over; a start or end record with a field missing or
    of the wrong kind raises nuri.Error naming the line."""
    path = os.path.join(os.fspath(directory), "ledger.jsonl")
    if not os.path.isfile(path):
        raise _C.Error(f"{os.fspath(directory)} holds no ledger.jsonl: a run writes its ledger "
                       "in its checkpoint directory (checkpoint.dir), or in its run directory "
                       "(out) when it has none; give that directory")
    allocations: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError):  # a line cut short by a crash
                continue
            if not isinstance(rec, dict) or rec.get("event") not in ("start", "end"):
                continue
            _check_record(rec, f"{path}:{line_no}")
            if rec["event"] == "start":
                if rec["id"] not in allocations:
                    order.append(rec["id"])
                allocations[rec["id"]] = dict(rec, end=None)
            elif rec["id"] in allocations:
                allocations[rec["id"]]["end"] = rec
    return [allocations[i] for i in order]


def report(directory: str | os.PathLike, peak_flops: float | None = None) -> dict[str, Any]:
    """Per allocation and in total: tokens trained (each step's once; "redone_tokens": those of
    steps computed again after a crash), device-hours, MFU (the model FLOPs of the tokens over
    the peak FLOPs of the steps' time; ``peak_flops`` overrides the ledger's device profile),
    goodput, and the parts of the wall time."""
    rows = []
    total = {"tokens": 0, "redone_tokens": 0, "device_seconds": 0.0, "training_device_seconds": 0.0,
             "parts": {p: 0.0 for p in PARTS}, "allocations": 0, "unfinished": 0, "steps": 0}
    flops = 0.0
    peak_seconds = 0.0
    ledger = read_ledger(directory)
    # The steps each finished allocation is credited with: up to the earliest step a later
    # finished one resumed from (an allocation that ended past its last checkpoint, by an
    # error, had its last steps redone by a later one, whose tokens they are; so had one
    # whose run was taken back to an earlier checkpoint through `latest`, after a divergence).
    credited: dict[int, int] = {}
    for k, a in enumerate(ledger):
        if a["end"] is not None:
            later = [b["end"]["steps_from"] for b in ledger[k + 1:] if b["end"] is not None]
            done = a["end"]["steps_done"]
            credited[k] = max(a["end"]["steps_from"], min([done, *later]))
    for k, a in enumerate(ledger):
        end = a["end"]
        row: dict[str, Any] = {"id": a["id"], "start": a["time"], "ranks": a["ranks"],
                               "backend": a["backend"], "layout": a["layout"], "finished": end is not None}
        total["allocations"] += 1
        if end is None:
            # Its checkpointed progress: from where the last finished allocation before it
            # ended to where the one after it resumed (of several unfinished in a row, the last
            # is credited with all of it, once); its time is unknown.
            before = next((j for j in reversed(range(k)) if ledger[j]["end"] is not None), None)
            after = ledger[k + 1]["end"] if k + 1 < len(ledger) else None
            if after is not None:
                # From where the allocation before it handed over (the next finished one's
                # resume step, within what it ran) to the earliest step a finished one after it
                # resumed from (a later rollback takes its steps back too).
                row["steps_from"] = 0
                if before is not None:
                    b = ledger[before]["end"]
                    row["steps_from"] = max(b["steps_from"],
                                            min(b["steps_done"], after["steps_from"]))
                later = [c["end"]["steps_from"] for c in ledger[k + 2:] if c["end"] is not None]
                # A finished allocation that ended past its last checkpoint: nothing more here.
                row["steps_done"] = max(min([after["steps_from"], *later]), row["steps_from"])
                row["tokens"] = (row["steps_done"] - row["steps_from"]) * a["tokens_per_step"]
                total["tokens"] += row["tokens"]
            total["unfinished"] += 1
            rows.append(row)
            continue
        ranks = a["ranks"]
        # Every step's tokens count once; a redone step's time is lost (the allocation that
        # first ran it lost its work), its tokens are this one's. MFU counts what this
        # allocation computed, redone or later redone alike.
        tokens = (credited[k] - end["steps_from"]) * a["tokens_per_step"]
        computed = (end["steps_done"] - end["steps_from"]) * a["tokens_per_step"]
        parts = end["parts"]
        stepping = parts["training"] + parts["redone"]
        peak = peak_flops if peak_flops is not None else a.get("peak_flops", 0.0)
        mfu = (a["flops_per_token"] * computed / (stepping * ranks * peak)
               if peak and stepping > 0 else None)
        row.update(status=end["status"], reason=end["reason"], steps_from=end["steps_from"],
                   steps_done=end["steps_done"], redone_steps=end["redone_steps"],
                   tokens=tokens, redone_tokens=end["redone_steps"] * a["tokens_per_step"],
                   wall=end["wall"], device_hours=end["wall"] * ranks / 3600.0, mfu=mfu,
                   goodput=parts["training"] / end["wall"] if end["wall"] > 0 else 0.0,
                   parts=parts)
        rows.append(row)
        total["tokens"] += tokens
        total["redone_tokens"] += row["redone_tokens"]
        total["steps"] = max(total["steps"], end["steps_done"])
        total["device_seconds"] += end["wall"] * ranks
        total["training_device_seconds"] += parts["training"] * ranks
        for p in PARTS:
            total["parts"][p] += parts.get(p, 0.0) * ranks
        if mfu is not None:
            flops += a["flops_per_token"] * computed
            peak_seconds += stepping * ranks * peak
    total["device_hours"] = total["device_seconds"] / 3600.0
    total["goodput"] = (total["training_device_seconds"] / total["device_seconds"]
                        if total["device_seconds"] > 0 else 0.0)
    total["mfu"] = flops / peak_seconds if peak_seconds > 0 else None
    return {"allocations": rows, "total": total}


def format_report(rep: dict[str, Any]) -> str:
    """The report as text: a line per allocation, the totals, and where the time went."""
    out = []
    for i, r in enumerate(rep["allocations"], 1):
        if not r["finished"]:
            steps = (f"steps {r['steps_from']}->{r['steps_done']} checkpointed, "
                     if "steps_done" in r else "")
            out.append(f"{i:2d}. {r['ranks']} x {r['backend']}, {r['layout']}: no end record "
                       f"(killed?): {steps}its time unknown")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        out.append(f"{i:2d}. {r['ranks']} x {r['backend']}, {r['layout']}\n"
                   f"    steps {r['steps_from']}->{r['steps_done']} ({r['redone_steps']} redone), "
                   f"{r['tokens']} tokens, {r['wall']:.1f} s, {r['device_hours']:.4f} device-h, "
                   f"MFU {mfu}, goodput {100 * r['goodput']:.1f}%, {r['reason']} "
                   f"(status {r['status']})")
    t = rep["total"]
    mfu = f"{100 * t['mfu']:.1f}%" if t["mfu"] is not None else "n/a"
    out.append(f"total: {t['allocations']} allocations ({t['unfinished']} without an end record), "
               f"{t['steps']} steps, {t['tokens']} tokens trained ({t['redone_tokens']} redone), "
               f"{t['device_hours']:.4f} device-hours, MFU {mfu}, goodput "
               f"{100 * t['goodput']:.1f}%")
    ds = t["device_seconds"] or 1.0
    out.append("device time: " + ", ".join(
        f"{p.replace('_', ' ')} {100 * t['parts'][p] / ds:.1f}%" for p in PARTS))
    return "\n".join(out)


def plot_report(rep: dict[str, Any], path: str | os.PathLike) -> str | None:
    """A PNG of each allocation's device time by part; returns why not when it cannot."""
    try:  # a Figure of its own, not pyplot's: the session's backend and figures stay as they are
        from matplotlib.figure import Figure
    except Exception as e:  # ImportError, or a broken install
        return f"matplotlib cannot be imported ({type(e).__name__}: {e})"
    rows = [r for r in rep["allocations"] if r["finished"]]
    if not rows:
        return "no finished allocation to plot"
    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.subplots()
    x = list(range(1, len(rows) + 1))
    bottom = [0.0] * len(rows)
    for p in PARTS:
        h = [max(0.0, r["parts"][p]) * r["ranks"] / 3600.0 for r in rows]
        ax.bar(x, h, bottom=bottom, label=p.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, h)]
    ax.set_xlabel("allocation")
    ax.set_ylabel("device-hours")
    t = rep["total"]
    ax.set_title(f"goodput {100 * t['goodput']:.1f}% of {t['device_hours']:.3f} device-hours")
    ax.set_xticks(x)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(os.fspath(path))
    except (OSError, ValueError) as e:
        return f"{os.fspath(path)} cannot be written ({e})"
    return None
