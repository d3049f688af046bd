"""The command line: ``python -m nuri train | generate | info`` (also installed as ``nuri``).

    python -m nuri train [--config FILE] [--FLAG VALUE ...] [KEY=VALUE ...]
    python -m nuri generate (--run DIR | --model FILE) [--prompt TEXT] [--max-new-tokens N]
                            [--temperature X] [--top-k K] [--top-p P] [--seed S]
                            [--stop TOKEN]... [--tokenizer tokenizer.json|bytes] [--bos TEXT]
    python -m nuri tokenize INPUT... --out DIR [--tokenizer tokenizer.json] [--processes N]
                            [--val-every K] [--shard-tokens N] [--eot TEXT] [--bos TEXT]
                            [--field text] [--kind text|prompt-response|chat]
                            [--chat-template JSON] [--pack SEQ_LEN]
    python -m nuri export CHECKPOINT [--out FILE.safetensors] [--hf DIR [--token-ids-from PATH]
                          [--bos-token-id ID] [--eos-token-id ID] [--pad-token-id ID]]
    python -m nuri import HF_DIR --out FILE.safetensors
    python -m nuri info
    python -m nuri plan (--preset NAME | --config FILE | --hf CONFIG.JSON) [--device NAME|FILE]
                        [--nodes N] [--devices-per-node N] [--seq-len N] [--global-batch N]
    python -m nuri calibrate [--backend cpu] [--out FILE]
    python -m nuri report DIR [--png FILE] [--json]

``train`` is nuri-train: the same flags (``python -m nuri train --help`` lists them, each with
its config key), the same output, run directory and exit statuses (0 done, 1 error, 2 bad config
or usage, 3 expect_val_below missed, 75 stopped for preemption after a checkpoint, 130
interrupted), since both run nuri's C++ run (``nuri/train/run.h``). Under torchrun, mpirun or
srun it trains data-parallel over the job's ranks. It adds ``loss.png`` to the run directory.
Errors print one line ``nuri: MESSAGE``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from . import _C
from .config import ConfigError, SampleConfig
from .hf import TOKEN_ID_KEYS, check_export_directory, export_hf_checkpoint, hf_token_ids
from .io import (check_consolidate_out, check_outside_checkpoint, consolidate, generate_text,
                 load)
from .training import run
from .plan import calibrate, device_profile, plan
from .report import format_report, plot_report, report
from .shards import EOT_CANDIDATES, tokenize


def cmd_train(args: Sequence[str]) -> int:
    """``python -m nuri train``: nuri-train's command line, parsed by the same C++ code."""
    cfg = _C.parse_run_args(list(args))
    if cfg is None:  # --help
        print(_C.run_usage("python -m nuri train"))
        return 0
    return run(cfg)["status"]


def _read_run_config(run_dir: str) -> dict[str, Any]:
    """The run directory's config.json ({} when it has none)."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise ConfigError(f"{path}: not a readable run config ({e}); restore it, or give the "
                          "model file (--model) and the tokenizer (--tokenizer) instead of "
                          "--run") from e
    sample = table.get("sample", {}) if isinstance(table, dict) else None
    data = table.get("data", {}) if isinstance(table, dict) else None
    if not isinstance(sample, dict) or not isinstance(data, dict) or not all(
            isinstance(data.get(k, ""), str) for k in ("train", "tokenizer")):
        raise ConfigError(f"{path}: not a run config as nuri train writes it (its sample and "
                          "data are not objects of settings); restore it, or give the model "
                          "file (--model) and the tokenizer (--tokenizer) instead of --run")
    return table


def _run_sample_defaults(run_dir: str | None, table: dict[str, Any]) -> SampleConfig:
    """The run's sample settings (the defaults without a run)."""
    try:
        return SampleConfig(**table.get("sample", {}))
    except ConfigError as e:
        raise ConfigError(f"{os.path.join(run_dir or '', 'config.json')}: {e}") from e


def _run_path(run_dir: str, table: dict[str, Any], path: str) -> str | None:
    """Where a path of the run's config (relative to the directory the run was started in)
    is now: beside the run directory as the run's `out` places it, or here; None: nowhere."""
    candidates = [path]
    out = table.get("out")
    if not os.path.isabs(path) and isinstance(out, str) and out and not os.path.isabs(out):
        start, tail = os.path.abspath(run_dir), os.path.normpath(out)
        while tail not in ("", ".", os.sep) and os.path.basename(tail) == os.path.basename(start):
            start, tail = os.path.dirname(start), os.path.dirname(tail)
        if tail in ("", "."):  # run_dir is START/out: the run was started in START
            candidates.insert(0, os.path.join(start, path))
    return next((p for p in candidates if os.path.exists(p)), None)


def _run_shard_record(run_dir: str, table: dict[str, Any]) -> str | None:
    """The tokenize.json of the run's shard directory (data.train); None where its data is not
    such a directory (text, a token file, the default corpus) or is not there."""
    train = table.get("data", {}).get("train") or ""
    found = _run_path(run_dir, table, train) if train else None
    meta_path = os.path.join(found, "tokenize.json") if found else ""
    return meta_path if found and os.path.isdir(found) and os.path.isfile(meta_path) else None


def _run_bos(run_dir: str, table: dict[str, Any]) -> str | None:
    """The beginning-of-text token the run's tokenize.json says starts every document (None:
    none, or no such record)."""
    meta_path = _run_shard_record(run_dir, table)
    if meta_path is None:
        return None
    try:
        with open(meta_path, encoding="utf-8") as f:
            bos = json.load(f)["tokenizer"].get("bos_text")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None  # _run_tokenizer names an unreadable record when it needs one
    return bos if isinstance(bos, str) else None


def _run_tokenizer(run_dir: str, table: dict[str, Any], vocab_size: int) -> str | None:
    """The tokenizer.json the run trained with (None: bytes): its data.tokenizer, or the one
    the tokenize.json of its shard directory (data.train) records. Raises nuri.Error when the
    run names one that cannot be found."""
    where = os.path.join(run_dir, "config.json")
    data = table.get("data", {})
    pass_it = "; pass the model's tokenizer with --tokenizer FILE (or --tokenizer bytes)"
    recorded = data.get("tokenizer") or ""
    if recorded == "bytes":
        return None
    if recorded:
        found = _run_path(run_dir, table, recorded)
        if found is None or not os.path.isfile(found):
            raise _C.Error(f"{where}: the run's tokenizer (data.tokenizer) {recorded} is not "
                           f"there{pass_it}")
        return found
    train = data.get("train") or ""
    if not train:
        return None  # the default corpus: bytes
    found = _run_path(run_dir, table, train)
    if found is None:
        if vocab_size <= _C.ByteTokenizer.VOCAB_SIZE:
            return None
        raise _C.Error(f"{where}: the run's data ({train}) is not there, so the tokenizer it "
                       f"was written with is not known{pass_it}")
    meta_path = _run_shard_record(run_dir, table)
    if meta_path is None:
        return None  # text (byte tokens), or a token file
    try:
        with open(meta_path, encoding="utf-8") as f:
            tok = json.load(f)["tokenizer"]
        if tok["kind"] == "bytes":
            return None
        path, sha256 = tok["path"], tok["sha256"]
        if not isinstance(path, str) or not isinstance(sha256, str):  # (an int path is a fd)
            raise TypeError(f"tokenizer path {path!r} and sha256 {sha256!r} are not strings")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise _C.Error(f"{meta_path}: no tokenizer record ({e!r}){pass_it}") from e
    if not os.path.isfile(path):
        raise _C.Error(f"{meta_path}: the run's shards were written by the tokenizer {path}, "
                       f"which is not there{pass_it}")
    with open(path, "rb") as f:
        if hashlib.sha256(f.read()).hexdigest() != sha256:
            raise _C.Error(f"{meta_path}: the run's shards were written by the tokenizer "
                           f"{path}, which has changed since (its SHA-256 differs){pass_it}")
    return path


def cmd_generate(args: argparse.Namespace) -> int:
    """``python -m nuri generate``."""
    path = args.model or os.path.join(args.run, "model.safetensors")
    if args.run and not os.path.isdir(args.run):
        raise ConfigError(f"generate: --run {args.run} is not a directory (a run's --out)")
    if args.run and not os.path.exists(path):
        raise ConfigError(f"generate: {args.run} holds no model.safetensors (a run writes it at "
                          "its end; a stopped or diverged one does not). Export its newest "
                          "checkpoint: python -m nuri export CKPT_DIR --out FILE, then "
                          "generate --model FILE")
    table = _read_run_config(args.run) if args.run else {}
    defaults = _run_sample_defaults(args.run, table)
    model = load(path, backend=args.backend)
    tokenizer, bos = args.tokenizer, args.bos
    if tokenizer == "bytes":
        tokenizer = None
    elif tokenizer is None and args.run:
        tokenizer = _run_tokenizer(args.run, table, model.config.vocab_size)
    if bos is None and args.run and tokenizer is not None:
        bos = _run_bos(args.run, table)
    def pick(flag: Any, default: Any) -> Any:
        return default if flag is None else flag

    prompt = pick(args.prompt, defaults.prompt)
    text = generate_text(model, prompt, pick(args.max_new_tokens, defaults.max_new_tokens),
                         pick(args.temperature, defaults.temperature),
                         pick(args.top_k, defaults.top_k), seed=args.seed,
                         tokenizer=tokenizer, bos=bos or None,
                         top_p=pick(args.top_p, defaults.top_p),
                         stop=[int(s) if re.fullmatch(r"[0-9]+", s) else s
                               for s in args.stop or []])
    sys.stdout.write(prompt + text + "\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``python -m nuri export``: a checkpoint's weights as one file, or a Hugging Face model."""
    if not args.hf and not args.out:
        raise ConfigError("export: give --out FILE.safetensors, --hf DIR, or both")
    if not args.hf and (args.token_ids_from or any(getattr(args, k) is not None
                                                   for k in TOKEN_ID_KEYS)):
        raise ConfigError("export: token ids go into a Hugging Face config.json; give --hf DIR "
                          "(a nuri model file records none)")
    if args.out:  # both refused before either is written
        check_consolidate_out(args.checkpoint, args.out)
    if args.hf and args.out and Path(args.hf).resolve() in Path(args.out).resolve().parents:
        raise ConfigError(f"export: --out {args.out} is inside the --hf directory {args.hf}, "
                          "whose model.safetensors it could replace with nuri's layout; write "
                          "it elsewhere")
    if args.hf:
        check_outside_checkpoint(args.checkpoint, args.hf)
        check_export_directory(args.hf)
        token_ids, source = _export_token_ids(args)
        export_hf_checkpoint(args.checkpoint, args.hf, token_ids=token_ids)
        print(f"wrote {os.path.join(args.hf, 'config.json')} and model.safetensors")
        if token_ids:
            print("  token ids " + ", ".join(f"{k}={v}" for k, v in token_ids.items())
                  + f" (from {source})")
        if "eos_token_id" not in token_ids:
            print("  warning: config.json's eos_token_id is null, so generate() in transformers "
                  "will not stop at the end of a text; give --token-ids-from (the Hugging Face "
                  "model the run started from, or the run's tokenize output) or "
                  "--eos-token-id", file=sys.stderr)
    if args.out:
        stats = consolidate(args.checkpoint, args.out)
        print(f"wrote {args.out}: {stats['tensors']} tensors, {stats['bytes'] / 2**20:.1f} MiB "
              f"(at most {stats['peak_bytes'] / 2**20:.1f} MiB held at once)")
    return 0


def _export_token_ids(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The special token ids an export writes, and where they came from: --token-ids-from,
    with --bos/--eos/--pad-token-id over it. (A checkpoint does not record the run's data, so
    nothing is taken from it.)"""
    ids: dict[str, Any] = {}
    source = ""
    if args.token_ids_from:
        ids, source = hf_token_ids(args.token_ids_from), args.token_ids_from
    given = {k: getattr(args, k) for k in TOKEN_ID_KEYS if getattr(args, k) is not None}
    if given:
        ids = {**ids, **given}
        source = " and ".join(x for x in (source, "the command line") if x)
    return ids, source


def cmd_import(args: argparse.Namespace) -> int:
    """``python -m nuri import``: a Hugging Face model directory as one nuri model file, which
    ``train --init`` starts from."""
    from .hf import import_hf
    from .io import save

    if os.path.isdir(args.out):
        raise ConfigError(f"import: --out {args.out} is a directory; name the model file to "
                          "write (FILE.safetensors)")
    out = Path(args.out).resolve()
    if Path(args.directory).resolve() in out.parents and (
            out.exists() or out.name == "model.safetensors"):
        # A file of the model directory (its weights, its index, ...) would be replaced, and a
        # new model.safetensors would be read in place of the weights by a later import.
        raise ConfigError(f"import: --out {args.out} is "
                          f"{'a file' if out.exists() else 'the weights file'} of the model "
                          f"directory {args.directory}, which it would replace; write the nuri "
                          "model file elsewhere")
    if not os.path.isdir(out.parent) or not os.access(out.parent, os.W_OK):
        # Said before minutes of reading the model, not after.
        raise ConfigError(f"import: --out {args.out}: the directory {out.parent} "
                          f"{'is not writable' if os.path.isdir(out.parent) else 'does not exist'}")
    model = import_hf(args.directory)
    save(model, args.out)
    print(f"wrote {args.out}: {model.parameter_count} parameters, {model.config.summary()}")
    print(f"train from it: python -m nuri train --init {args.out} --data ... (the model is the "
          "file's)")
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


def _plan_request(args: argparse.Namespace) -> tuple[Any, int | None, int | None]:
    """The model, sequence length and global batch to plan. A run config gives what its run
    would train: checkpoint.init's model where it names a file, its train.seq_len, and its
    global batch (train.global_batch, else micro_batch x grad_accum a device, as --layout auto
    keeps it); the flags given win."""
    from .config import load_config
    from .hf import model_config_from_hf
    if args.hf:
        return model_config_from_hf(args.hf), args.seq_len, args.global_batch
    if not args.config:
        return _C.ModelConfig.preset(args.preset), args.seq_len, args.global_batch
    cfg, _ = _C.init_model(load_config(args.config))
    t = cfg.train
    if t.global_batch > 0:
        batch = t.global_batch
    else:
        per_node = args.devices_per_node or device_profile(args.device)["devices_per_node"]
        batch = t.micro_batch * t.grad_accum * args.nodes * per_node
    return (cfg.model, args.seq_len or t.seq_len,
            args.global_batch if args.global_batch is not None else batch)


def cmd_plan(args: argparse.Namespace) -> int:
    """``python -m nuri plan``: the layouts that fit, best first, and why the rest do not."""
    model, seq_len, global_batch = _plan_request(args)
    result = plan(model, device=args.device, nodes=args.nodes,
                  devices_per_node=args.devices_per_node, seq_len=seq_len,
                  global_batch=global_batch, usable_fraction=args.usable, rows=args.rows)
    if args.json:
        json.dump(result.entries[:args.rows], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(result.text)
    return 0 if result.entries and result.entries[0]["fits"] else 3


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``python -m nuri calibrate``: this machine's speeds as a device profile."""
    from .dist import init_process_group
    # The launcher as nuri-train finds it (torchrun, mpirun, srun, ...; alone: rank 0 of 1):
    # each rank on its own device, rank 0 writing the profile.
    pg = init_process_group()
    prof = calibrate(args.backend, base=args.base, out=args.out if pg.rank == 0 else None,
                     seconds_per_probe=args.seconds, process_group=pg)
    if pg.rank == 0:
        print(json.dumps(prof, indent=2))
        if args.out:
            print(f"wrote {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``python -m nuri report``: what a run's allocations bought."""
    rep = report(args.dir, peak_flops=args.peak_flops)
    if args.json:
        json.dump(rep, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_report(rep))
    png = args.png or os.path.join(args.dir, "report.png")
    why = plot_report(rep, png)
    if not args.json:
        print(f"plot: {png}" if why is None else f"no plot: {why}")
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    """``python -m nuri tokenize``: text to token shards."""
    template = None
    if args.chat_template:
        text = args.chat_template
        if os.path.exists(text):
            with open(text, encoding="utf-8") as f:
                text = f.read()
        try:
            template = json.loads(text)
        except ValueError as e:
            looks_like_path = not text.lstrip().startswith(("{", "[", '"'))
            raise ConfigError(
                f"--chat-template: {text!r:.80} is neither a file nor a JSON object of "
                "role: text" if looks_like_path else
                f"--chat-template: not a JSON object of role: text ({e})") from e
    meta = tokenize(args.inputs, args.out, args.tokenizer, val_every=args.val_every,
                    shard_tokens=args.shard_tokens, processes=args.processes, eot=args.eot,
                    field=args.field, progress=None if not args.quiet else False,
                    kind=args.kind, chat_template=template, bos=args.bos, pack=args.pack)
    tok = meta["tokenizer"]
    trained = meta.get("trained_tokens")
    print(f"{args.out}: {meta['tokens']['train']} train tokens in "
          f"{len(meta['shards']['train'])} shard(s), {meta['tokens']['val']} val tokens in "
          f"{len(meta['shards']['val'])}, from {meta['documents']['train']} + "
          f"{meta['documents']['val']} documents ({meta['dtype']}; "
          f"{'bytes' if tok['kind'] == 'bytes' else os.path.basename(tok['path'])}, "
          f"{tok['vocab_size']} ids, end-of-text {tok['eot']}"
          + (f", beginning-of-text {tok['bos']}" if "bos" in tok else "") + ")"
          + (f"; trained on {trained['train']} train and {trained['val']} val response "
             "tokens (and the end-of-texts)" if trained else ""))
    if meta.get("pack"):
        pads, cut, total = meta["pad_tokens"], meta["cut_rows"], meta["tokens"]
        share = (pads["train"] + pads["val"]) / max(1, total["train"] + total["val"])
        print(f"  packed for seq_len {meta['pack']}: {pads['train'] + pads['val']} pad tokens "
              f"({100 * share:.1f}% of the tokens, not trained on); "
              + (f"{cut['train'] + cut['val']} row(s) longer than {meta['pack']} tokens span "
                 "several windows" if cut["train"] + cut["val"] else "no row is cut")
              + f"; train with --seq-len {meta['pack']} (or a multiple)")
    return 0


def _whole_number(limit: int, limit_text: str) -> Any:
    """An argparse type: an integer from 0 to limit - 1 (limit_text says that bound)."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = -1
        if not 0 <= n < limit:
            raise argparse.ArgumentTypeError(
                f"expected an integer from 0 to {limit_text}, got {text!r}")
        return n
    return parse


_seed = _whole_number(2**64, "2**64 - 1")  # --seed
_count = _whole_number(2**31, "2**31 - 1")  # --max-new-tokens, --top-k


def _top_p(text: str) -> float:
    """--top-p: a number in (0, 1]."""
    try:
        p = float(text)
    except ValueError:
        p = -1.0
    if not 0 < p <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1] (1: no nucleus cut), got "
                                         f"{text!r}")
    return p


def _temperature(text: str) -> float:
    """--temperature: a finite number >= 0."""
    try:
        t = float(text)
    except ValueError:
        t = -1.0
    if not 0 <= t < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0 (0: greedy), got {text!r}")
    return t


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m nuri`` (``train`` takes the run's own flags)."""
    p = argparse.ArgumentParser(prog="python -m nuri",
                                description="Train and sample decoder-only language models.")
    sub = p.add_subparsers(dest="command", required=True,
                           metavar="{train,generate,tokenize,export,import,info,plan,calibrate,report}")
    sub.add_parser("train", help="train a model: nuri-train's flags, KEY=VALUE overrides, "
                   "--config FILE (see train --help)", add_help=False)
    g = sub.add_parser("generate", help="continue a prompt with a trained model (its run's "
                       "tokenizer, or --tokenizer)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run directory holding model.safetensors")
    src.add_argument("--model", help="model file (.safetensors written by nuri)")
    g.add_argument("--prompt", help="text to continue (default: the run's sample.prompt)")
    g.add_argument("--max-new-tokens", type=_count)
    g.add_argument("--temperature", type=_temperature, help="0: greedy")
    g.add_argument("--top-k", type=_count, help="0: the whole vocabulary")
    g.add_argument("--top-p", type=_top_p, help="sample among the fewest likeliest of the top-k "
                   "tokens whose probabilities sum to at least P (1: all; default: the run's)")
    g.add_argument("--stop", action="append", metavar="TOKEN",
                   help="end the continuation after this token: a token of the tokenizer by "
                   "name (e.g. '<|endoftext|>') or, written in digits, an id; may be repeated")
    g.add_argument("--seed", type=_seed, default=0)
    g.add_argument("--bos", help="a beginning-of-text token put before the prompt (default: "
                   "the one the run's tokenize.json records; '' for none)")
    g.add_argument("--tokenizer", help="a Hugging Face tokenizer.json to encode the prompt and "
                   "decode the output with, or bytes (default: the run's, which its data's "
                   "tokenize.json records; else bytes)")
    g.add_argument("--backend", "--device", dest="backend", default="cpu",
                   help="cpu, cuda (or cuda-emu in an emulated build)")
    g.set_defaults(func=cmd_generate)
    t = sub.add_parser("tokenize", help="text files, JSON-lines or directories of them to "
                       "token shards (llm.c layout) with a validation split")
    t.add_argument("inputs", nargs="+", help="files (.txt etc.: one document; .jsonl: one a "
                   "line) or directories of .txt, .md and .jsonl files")
    t.add_argument("--out", required=True, help="directory for the shards and tokenize.json "
                   "(train on it with --data DIR)")
    t.add_argument("--tokenizer", help="a Hugging Face tokenizer.json (default: bytes)")
    t.add_argument("--eot", help="the end-of-text token (default: the first of "
                   f"{', '.join(EOT_CANDIDATES)} the tokenizer has)")
    t.add_argument("--bos", help="a beginning-of-text token put before every document, as "
                   "the model was pretrained (Llama 3: '<|begin_of_text|>'; Llama 2, Mistral: "
                   "'<s>'); default: none")
    t.add_argument("--field", default="text", help="the JSON-lines field holding the text")
    t.add_argument("--val-every", type=int, default=200, help="every k-th document goes to "
                   "validation (0: none; default 200)")
    t.add_argument("--shard-tokens", type=int, default=100_000_000)
    t.add_argument("--processes", type=int, default=1, help="encoding processes (the shards "
                   "do not depend on it)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--kind", default="text", choices=["text", "prompt-response", "chat"],
                   help="fine-tuning data (JSON-lines): prompt-response rows or chat messages; "
                   "the shards get a loss mask (only responses are trained on)")
    t.add_argument("--chat-template", help="chat: a JSON object (or a file holding one) of "
                   "role: text with {content}, e.g. '{\"user\": \"<|user|>{content}\\n\", "
                   "\"assistant\": \"<|assistant|>{content}\\n\"}'")
    t.add_argument("--pack", type=int, default=0, metavar="SEQ_LEN",
                   help="fine-tuning rows laid out so that none crosses a training window of "
                   "SEQ_LEN tokens (gaps filled with untrained end-of-texts); the data then "
                   "trains with --seq-len SEQ_LEN (or a multiple) only (default 0: rows cut "
                   "where windows end)")
    t.set_defaults(func=cmd_tokenize)
    e = sub.add_parser("export", help="a checkpoint's weights as one model file, or as a "
                       "Hugging Face model directory (one tensor in memory at a time)")
    e.add_argument("checkpoint", help="a checkpoint directory, or the root of a run's "
                   "checkpoints (its newest is taken)")
    e.add_argument("--out", help="model file to write (.safetensors, what nuri.load reads)")
    e.add_argument("--hf", metavar="DIR", help="Hugging Face directory to write (config.json, "
                   "model.safetensors)")
    e.add_argument("--token-ids-from", metavar="PATH", help="where --hf's special token ids "
                   "(bos/eos/pad_token_id, which generate() stops at) come from: the Hugging "
                   "Face model the run started from (its directory or config.json), or nuri "
                   "tokenize's output (its directory or tokenize.json)")
    for key in TOKEN_ID_KEYS:
        e.add_argument("--" + key.replace("_", "-"), dest=key, type=int, metavar="ID",
                       help=f"{key} for --hf's config.json (over --token-ids-from's)")
    e.set_defaults(func=cmd_export)
    i = sub.add_parser("info", help="show what this build of nuri holds")
    i.set_defaults(func=cmd_info)
    pl = sub.add_parser("plan", help="which layouts of a model fit an allocation, best first "
                        "(memory per device by category, step time, tokens/s, MFU)")
    src = pl.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="a model preset: " + ", ".join(
        _C.ModelConfig.preset_names()))
    src.add_argument("--config", help="a run config (.toml or .json): the model its run "
                     "trains (checkpoint.init's where it names a file), its seq_len and its "
                     "global batch")
    src.add_argument("--hf", metavar="CONFIG.JSON", help="a Hugging Face config.json (or its "
                     "directory)")
    pl.add_argument("--device", default="h100-sxm-80gb", help="a profile name (h100-sxm-80gb, "
                    "a100-sxm-80gb, rtx-4090, rtx-3090, cpu) or a file from nuri calibrate")
    pl.add_argument("--nodes", type=int, default=1)
    pl.add_argument("--devices-per-node", type=int, help="default: the profile's")
    pl.add_argument("--seq-len", type=int, help="default: the config's train.seq_len, else "
                    "the model's max_seq_len")
    pl.add_argument("--global-batch", type=int, help="sequences a step (default: the "
                    "config's, else 8 a device)")
    pl.add_argument("--usable", type=float, default=0.9, help="share of a device's memory to "
                    "plan with (0.9)")
    pl.add_argument("--rows", type=int, default=10, help="layouts to show")
    pl.add_argument("--json", action="store_true", help="the entries as JSON")
    pl.set_defaults(func=cmd_plan)
    ca = sub.add_parser("calibrate", help="measure this machine's product, attention, "
                        "elementwise (and, under a launcher, all-reduce) speeds into a profile")
    ca.add_argument("--backend", default="cpu")
    ca.add_argument("--base", help="the profile to start from (default: cpu, or h100-sxm-80gb "
                    "on a GPU: its datasheet peak is MFU's)")
    ca.add_argument("--out", help="profile file to write (JSON)")
    ca.add_argument("--seconds", type=float, default=0.5, help="seconds per probe (0.5)")
    ca.set_defaults(func=cmd_calibrate)
    im = sub.add_parser("import", help="a Hugging Face model directory as one nuri model file "
                        "(what train --init starts from)")
    im.add_argument("directory", help="config.json and the safetensors weights (model_type "
                    "gpt2, llama, qwen2, mistral or phi3)")
    im.add_argument("--out", required=True, help="the model file to write (FILE.safetensors)")
    im.set_defaults(func=cmd_import)
    rp = sub.add_parser("report", help="tokens, device-hours, MFU and goodput of a run's "
                        "allocations, from its ledger")
    rp.add_argument("dir", help="the checkpoint (or run) directory holding ledger.jsonl")
    rp.add_argument("--png", help="plot to write (default: DIR/report.png)")
    rp.add_argument("--peak-flops", type=float, help="peak FLOP/s a device for MFU (default: "
                    "the run's device profile)")
    rp.add_argument("--json", action="store_true", help="the report as JSON")
    rp.set_defaults(func=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (see the module doc)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "train":
            return cmd_train(argv[1:])
        args = build_parser().parse_args(argv)
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
