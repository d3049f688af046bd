"""The command line: ``python -m nuri train | generate | info``.

    python -m nuri train --config FILE [--data FILE] [--val FILE] [--out DIR] [--quiet]
                         [KEY=VALUE ...]
    python -m nuri generate (--run DIR | --model FILE) [--prompt TEXT] [--max-new-tokens N]
                            [--temperature X] [--top-k K] [--seed S]
    python -m nuri info

A training run writes its directory as it goes: ``config.json`` (the resolved config) first,
``metrics.jsonl`` one line per step, then ``model.safetensors``, ``loss.png`` and ``sample.txt``
at the end. Errors print one line ``nuri: MESSAGE`` and exit 2 (config or usage) or 1 (runtime).
The data handling (text byte-tokenized, last 10% held out) and the seeds are those of the C++
``nuri-train``, so the same settings give the same per-step losses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Sequence, TextIO

from . import _C
from .config import ConfigError, RunConfig, SampleConfig, apply_overrides, load_config
from .io import decode_bytes, generate_text, load, read_data, save, split_validation


def _duration(seconds: float) -> str:
    return f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None  # JSON has no NaN


class Progress:
    """Training output: one rewritten line on a terminal (at most 10 updates a second), a line
    every ``log_every`` steps otherwise (and at steps 1 and the last), nothing when quiet."""

    def __init__(self, total: int, log_every: int, quiet: bool, stream: TextIO):
        self.total, self.log_every, self.quiet, self.stream = total, log_every, quiet, stream
        self.tty = stream.isatty()
        self.open_line = False  # a \r line is on screen
        self.shown_at = -1.0  # elapsed seconds at the last terminal update

    def step(self, st: dict[str, Any], tok_per_s: float, elapsed: float) -> None:
        """Reports step statistics ``st`` (a Trainer.step() dict)."""
        n = st["step"]
        if self.quiet or not (self.tty or n % self.log_every == 0 or n in (1, self.total)):
            return
        if self.tty and elapsed - self.shown_at < 0.1 and n != self.total:
            return  # at most 10 terminal updates a second
        self.shown_at = elapsed
        eta = elapsed / n * (self.total - n)
        text = (f"step {n:5d}/{self.total} | loss {st['loss']:.4f} | lr {st['lr']:.2e} | "
                f"norm {st['grad_norm']:6.3f} | {tok_per_s:7.0f} tok/s | eta {_duration(eta)}"
                f"{' | SKIPPED (non-finite)' if st['skipped'] else ''}")
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
            self.open_line = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        """A permanent line (validation, notes), below any progress line."""
        if self.quiet:
            return
        self.close()
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Ends the rewritten progress line, if one is open."""
        if self.open_line:
            self.stream.write("\n")
            self.open_line = False


def load_datasets(cfg: RunConfig) -> tuple[_C.TokenFile, _C.TokenFile, str]:
    """(train, val, description) for ``cfg.data``: val is the last 10% of train unless given."""
    if not cfg.data.train:
        raise ConfigError("no training data: set data.train in the config or pass --data FILE")
    vocab = cfg.model.vocab_size
    data = read_data(cfg.data.train, vocab)
    what = f"{cfg.data.train} ({len(data)} tokens)"
    if cfg.data.val:
        val = read_data(cfg.data.val, vocab)
        return data, val, f"{what}, validation {cfg.data.val} ({len(val)} tokens)"
    train, val = split_validation(data)
    return train, val, what + ", last 10% held out for validation"


def plot_losses(path: str, steps: list[int], losses: list[float | None],
                val: list[tuple[int, float]]) -> str | None:
    """Writes the loss curve (train and validation) to ``path``; returns why not if it cannot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # ImportError, or a broken install
        return f"matplotlib cannot be imported ({type(e).__name__}: {e})"
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    ax.plot(steps, [float("nan") if x is None else x for x in losses], label="train", lw=1)
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], "o-", label="validation", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None


def run_training(cfg: RunConfig, out_dir: str, quiet: bool = False,
                 stream: TextIO | None = None) -> dict[str, Any]:
    """Trains as ``cfg`` says, writing the run directory ``out_dir``; returns a summary dict
    (steps, final_loss, val_loss, skipped_steps, seconds, peak_bytes, out, interrupted).

    [in] stream: where progress goes (default: sys.stdout). Ctrl-C stops the loop and still
    saves the model and the plot.
    """
    stream = sys.stdout if stream is None else stream
    train_data, val_data, what = load_datasets(cfg)
    model = _C.Model(cfg.model, cfg.backend, cfg.train.seed)
    trainer = _C.Trainer(model, cfg.train, train_data, val_data)
    total, tc = cfg.train.steps, cfg.train
    progress = Progress(total, cfg.log_every, quiet, stream)
    name = cfg.preset or "custom"
    progress.line(f"data: {what}\nmodel: {name} ({model.config.num_params() / 1e6:.2f}M "
                  f"parameters) | {model.config.summary()}\ntraining: {total} steps of "
                  f"{tc.micro_batch} x {tc.seq_len} tokens (accum {tc.grad_accum}), lr "
                  f"{tc.lr:.1e}, backend {cfg.backend}, run directory {out_dir}")
    val_loss = trainer.evaluate()
    progress.line(f"step {0:5d} | val loss {val_loss:.4f}")
    os.makedirs(out_dir, exist_ok=True)  # after the first evaluation: bad data makes no directory
    cfg = dataclasses.replace(cfg, out=out_dir)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg.to_dict(), f, indent=2)
        f.write("\n")
    steps: list[int] = []
    losses: list[float | None] = []
    vals = [(0, val_loss)]
    tok_per_s, last, interrupted = 0.0, None, False
    start = time.monotonic()
    with open(os.path.join(out_dir, "metrics.jsonl"), "w", encoding="utf-8") as metrics:
        try:  # Ctrl-C ends the loop; the model and the plot are still saved
            while trainer.steps_done < total:
                st = last = trainer.step()
                n, tps = st["step"], st["tokens_per_second"]
                tok_per_s = tps if tok_per_s == 0 else 0.9 * tok_per_s + 0.1 * tps
                progress.step(st, tok_per_s, time.monotonic() - start)
                record = {"step": n, "loss": _finite(st["loss"]), "lr": st["lr"],
                          "grad_norm": _finite(st["grad_norm"]), "tokens_per_s": tps,
                          "peak_bytes": st["peak_bytes"], "skipped": st["skipped"]}
                if (tc.eval_every > 0 and n % tc.eval_every == 0) or n == total:
                    val_loss = trainer.evaluate()
                    record["val_loss"] = _finite(val_loss)
                    vals.append((n, val_loss))
                    progress.line(f"step {n:5d} | val loss {val_loss:.4f}")
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                steps.append(n)
                losses.append(record["loss"])
        except KeyboardInterrupt:
            interrupted = True
    progress.close()
    seconds = time.monotonic() - start
    save(model, os.path.join(out_dir, "model.safetensors"))
    skipped_plot = plot_losses(os.path.join(out_dir, "loss.png"), steps, losses, vals)
    if skipped_plot:
        print(f"nuri: loss plot skipped: {skipped_plot}", file=sys.stderr)
    summary = {
        "steps": trainer.steps_done, "final_loss": last["loss"] if last else None,
        "val_loss": val_loss, "skipped_steps": trainer.skipped_steps, "seconds": seconds,
        "peak_bytes": model.memory()["peak_bytes"], "out": out_dir, "interrupted": interrupted,
    }
    sample = cfg.sample
    if (not interrupted and sample.max_new_tokens > 0
            and cfg.model.vocab_size == _C.ByteTokenizer.VOCAB_SIZE and sample.prompt):
        out = trainer.generate(list(sample.prompt.encode("utf-8")),
                               max_new_tokens=sample.max_new_tokens,
                               temperature=sample.temperature, top_k=sample.top_k,
                               seed=int(tc.seed))
        text = sample.prompt + decode_bytes(out)
        with open(os.path.join(out_dir, "sample.txt"), "w", encoding="utf-8") as f:
            f.write(text + "\n")
        progress.line(f"---- sample (temperature {sample.temperature:.2f}, top-k {sample.top_k}) "
                      f"----\n{text}\n----")
    state = f"interrupted at step {trainer.steps_done}/{total}" if interrupted else "done"
    loss = f"final loss {summary['final_loss']:.4f}, " if last else ""
    val_step = vals[-1][0]
    val_note = f" (at step {val_step})" if val_step != trainer.steps_done else ""
    print(f"{state} in {_duration(seconds)}: {loss}val loss {val_loss:.4f}{val_note}; "
          f"{trainer.skipped_steps} skipped steps; peak memory "
          f"{summary['peak_bytes'] / 2**20:.1f} MiB; run directory {out_dir}", file=stream)
    stream.flush()
    return summary


def cmd_train(args: argparse.Namespace) -> int:
    """``python -m nuri train``."""
    cfg = load_config(args.config)
    pre = [f"data.train={json.dumps(args.data)}"] if args.data else []
    pre += [f"data.val={json.dumps(args.val)}"] if args.val else []
    cfg = apply_overrides(cfg, pre + list(args.overrides))
    out = args.out or cfg.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    summary = run_training(cfg, out, quiet=args.quiet)
    return 130 if summary["interrupted"] else 0


def _run_sample_defaults(run_dir: str | None) -> SampleConfig:
    sample = SampleConfig()
    path = os.path.join(run_dir, "config.json") if run_dir else None
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            table = json.load(f).get("sample", {})
        sample = SampleConfig(**{k: v for k, v in table.items() if hasattr(sample, k)})
    return sample


def cmd_generate(args: argparse.Namespace) -> int:
    """``python -m nuri generate``."""
    path = args.model or os.path.join(args.run, "model.safetensors")
    defaults = _run_sample_defaults(args.run)
    model = load(path, backend=args.backend)
    def pick(flag: Any, default: Any) -> Any:
        return default if flag is None else flag

    prompt = pick(args.prompt, defaults.prompt)
    text = generate_text(model, prompt, pick(args.max_new_tokens, defaults.max_new_tokens),
                         pick(args.temperature, defaults.temperature),
                         pick(args.top_k, defaults.top_k), seed=args.seed)
    sys.stdout.write(prompt + text + "\n")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """``python -m nuri info``: what this build holds."""
    info = _C.build_info()
    yes_no = {True: "yes", False: "no"}
    backends = info.get("backends", [])
    archs = ", ".join(f"sm_{a}" for a in info.get("cuda_architectures", []))
    if not archs:
        archs = ("none (emulated build: kernels run on the CPU)" if "cuda-emu" in backends
                 else "none (CPU-only build)")
    print(f"nuri {info['version']}")
    print(f"  backends:   {', '.join(backends)}")
    print(f"  BLAS:       {info.get('blas')}")
    print(f"  CUDA:       {'yes' if info.get('cuda') else 'no (not compiled)'}")
    print(f"  cuda archs: {archs}")
    devices = info.get("cuda_devices", [])
    print(f"  cuda devices: {len(devices) if devices else 'none'}")
    for d in devices:
        print(f"    cuda:{d['index']}  {d['name']}, sm_{d['major']}{d['minor']}, "
              f"{d['total_bytes'] / 2**30:.1f} GiB, {d['sms']} SMs")
    print(f"  MPI:        {yes_no[bool(info.get('mpi'))]}")
    print(f"  sanitizers: {yes_no[bool(info.get('sanitize'))]}")
    print(f"  Python package: {os.path.dirname(os.path.abspath(__file__))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m nuri``."""
    p = argparse.ArgumentParser(prog="python -m nuri",
                                description="Train and sample decoder-only language models.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,generate,info}")
    t = sub.add_parser("train", help="train a model from a TOML or JSON run config",
                       description="Train a model. Overrides are KEY=VALUE paths in the config "
                       "schema, e.g. train.lr=1e-3 model.n_layer=4 (see nuri.config).")
    t.add_argument("--config", required=True, help="run config (.toml or .json)")
    t.add_argument("--data", help="training data (text, .bin or .npy); overrides data.train")
    t.add_argument("--val", help="validation data; overrides data.val")
    t.add_argument("--out", help="run directory (default: config's out, else runs/<timestamp>)")
    t.add_argument("--quiet", action="store_true", help="print only the final summary")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    t.set_defaults(func=cmd_train)
    g = sub.add_parser("generate", help="continue a prompt with a trained byte-level model")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run directory holding model.safetensors")
    src.add_argument("--model", help="model file (.safetensors written by nuri)")
    g.add_argument("--prompt", help="text to continue (default: the run's sample.prompt)")
    g.add_argument("--max-new-tokens", type=int)
    g.add_argument("--temperature", type=float, help="0: greedy")
    g.add_argument("--top-k", type=int, help="0: the whole vocabulary")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--backend", "--device", dest="backend", default="cpu",
                   help="cpu, cuda (or cuda-emu in an emulated build)")
    g.set_defaults(func=cmd_generate)
    i = sub.add_parser("info", help="show what this build of nuri holds")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0, 1 runtime error, 2 config/usage)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command != "train" or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra  # KEY=VALUE after an option
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"nuri: {e}", file=sys.stderr)
        return 2
    except (_C.Error, OSError) as e:
        print(f"nuri: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nuri: interrupted", file=sys.stderr)
        return 130
