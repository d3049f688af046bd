"""A whole training run from Python: the run policy of nuri-train (``nuri/train/run.h``) on a
RunConfig, with its output, run directory, checkpoints, preemption and exit status.

One design choice to know: the run itself is C++, the same code nuri-train runs, so the same
config gives the same losses, output and files from both; Python adds what only it has: its
output streams (a notebook's too), Ctrl-C, and the loss plot.

    cfg = nuri.load_config("run.toml")
    result = nuri.run(cfg)      # under torchrun/mpirun/srun: data-parallel over the job's ranks
    result["status"]            # 0 done, 3 expect_val_below missed, 75 preempted, 130 interrupted
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

from . import _C
from .config import RunConfig
from .dist import ProcessGroup, init_process_group


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def plot_losses(run_dir: str | os.PathLike) -> str | None:
    """Writes ``run_dir/loss.png`` (training and validation loss) from ``metrics.jsonl``;
    returns why not when it cannot (matplotlib missing, no metrics)."""
    run_dir = os.fspath(run_dir)
    records = []
    try:
        with open(os.path.join(run_dir, "metrics.jsonl"), "rb") as f:
            for raw in f:
                try:
                    r = json.loads(raw.decode("utf-8"))
                except (ValueError, RecursionError):  # a line cut short by a crash
                    continue
                if isinstance(r, dict) and _number(r.get("step")) and (
                        r.get("loss") is None or _number(r.get("loss"))):
                    records.append(r)
    except OSError as e:
        return f"no metrics to plot ({e.strerror})"
    if not records:
        return "no metrics to plot (metrics.jsonl holds no step records)"
    try:  # a Figure of its own, not pyplot's: the session's backend and figures stay as they are
        from matplotlib.figure import Figure
    except Exception as e:  # ImportError, or a broken install
        return f"matplotlib cannot be imported ({type(e).__name__}: {e})"
    steps = [r["step"] for r in records]
    losses = [float("nan") if r.get("loss") is None else r["loss"] for r in records]
    val = [(r["step"], r["val_loss"]) for r in records if _number(r.get("val_loss"))]
    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.subplots()
    ax.plot(steps, losses, label="train", lw=1)
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], "o-", label="validation", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(os.path.join(run_dir, "loss.png"))
    except (OSError, ValueError) as e:  # a full or read-only disk, the directory gone
        return f"loss.png cannot be written ({e})"
    return None


def run(config: RunConfig, process_group: ProcessGroup | None = None,
        stream: TextIO | None = None, plot: bool = True) -> dict[str, Any]:
    """Runs ``config`` as nuri-train would and returns its result: status (0 done, 1 diverged:
    the last step skipped and the validation loss not finite, stop_reason "diverged"; 3
    expect_val_below missed, 75 stopped for preemption after a checkpoint, 130 interrupted by
    Ctrl-C), steps_done, skipped_steps, final_loss, val_loss, seconds, peak_bytes, stop_reason,
    checkpoint.

    [in] process_group: the job's ranks (default: nuri.init_process_group(), so under torchrun,
    mpirun or srun the run is data-parallel). stream: where rank 0's output goes (default
    sys.stdout; a progress line is rewritten when it is a terminal). plot: write
    ``out/loss.png`` afterwards (rank 0, when config.out is set).
    Raises nuri.Error (ConfigError for the config) when the run cannot go on.
    """
    pg = process_group if process_group is not None else init_process_group()
    out = sys.stdout if stream is None else stream

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    isatty = getattr(out, "isatty", None)
    result = _C.run_training(config, pg, write=write, terminal=bool(isatty and isatty()))
    if plot and config.out and pg.rank == 0 and result["status"] != 75:
        why = plot_losses(config.out)
        if why:
            print(f"nuri: loss plot skipped: {why}", file=sys.stderr)
    return result
