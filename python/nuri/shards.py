"""Text to token shards: ``nuri tokenize`` and ``nuri.tokenize()``.

Inputs are text files (each one document), JSON-lines files (``.jsonl``, or a ``.json`` file
named as an input: each line an object whose ``text`` field is one document; a ``.json`` file
may also hold one JSON array of such objects), or directories of them (every ``.txt``, ``.md``
and ``.jsonl`` file below, in path order). Each document is encoded with a Hugging Face
``tokenizer.json`` (the ``tokenizers`` library) or nuri's byte tokenizer, followed by the
end-of-text token, and the documents go, in input order, to ``train_NNNNNN.bin`` shards, except
every ``val_every``-th (documents 0, k, 2k, ...), which go to ``val_NNNNNN.bin``. Shards are in
llm.c's layout: uint16 tokens when the vocabulary has at most 65536 ids, else uint32, for every
shard alike. ``tokenize.json`` beside them records the tokenizer (its file's SHA-256 and
vocabulary size, the end-of-text id), the counts and the shards; nuri's data reader checks the
vocabulary against the model's when a run trains on the directory.

One design choice to know: the output depends only on the inputs, the tokenizer and the
settings, never on the number of processes: documents are numbered in input order before any
work is split, workers encode chunks of them, and the chunks are written back in order.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from multiprocessing import get_context
from typing import Any, Iterator, Sequence

import numpy as np

from . import _C
from .config import ConfigError

#: End-of-text tokens looked for in a tokenizer's vocabulary when none is named.
EOT_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>")
TEXT_SUFFIXES = (".txt", ".md", ".jsonl")


def _input_files(inputs: Sequence[str]) -> list[str]:
    files = []
    for path in inputs:
        path = os.fspath(path)
        if os.path.isdir(path):
            found = sorted(
                os.path.join(d, f) for d, _, names in os.walk(path) for f in names
                if f.endswith(TEXT_SUFFIXES))
            if not found:
                raise _C.Error(f"{path}: no {', '.join(TEXT_SUFFIXES)} files in this directory")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise _C.Error(f"{path}: no such file or directory")
    return files


def _fine_tuning_row(row: Any, kind: str, where: str, template: dict[str, str] | None
                     ) -> tuple[str, list[tuple[str, bool]], int]:
    """A prompt/response or chat row as its parts, (text, trained on) in order, and the
    characters of its responses or assistant messages themselves (a chat template's text
    around them is trained on too, but is no response to learn)."""
    if kind == "prompt-response":
        for key in ("prompt", "response"):
            if not isinstance(row.get(key), str):
                raise _C.Error(f"{where}: no {key!r} field with a string (keys: "
                               f"{', '.join(row)})")
        return ("ft", [(row["prompt"], False), (row["response"], True)], len(row["response"]))
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _C.Error(f"{where}: no 'messages' field with a list of messages (keys: "
                       f"{', '.join(row)})")
    parts = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(
                m.get("content"), str):
            raise _C.Error(f"{where}: message {k} needs a 'role' and a 'content' string")
        if m["role"] not in template:
            raise _C.Error(f"{where}: message {k} has role {m['role']!r}, which the chat "
                           f"template does not have (roles: {', '.join(template)})")
        parts.append((template[m["role"]].replace("{content}", m["content"]),
                      m["role"] == "assistant"))
    content = sum(len(m["content"]) for m in messages if m["role"] == "assistant")
    return ("ft", parts, content)


def _starts_with(path: str, prefix: bytes) -> bool:
    """Whether the file's first non-blank bytes are `prefix`."""
    with open(path, "rb") as f:
        return f.read(4096).lstrip().startswith(prefix)


def _rows(rows: list[Any], where: str, field: str, kind: str,
          template: dict[str, str] | None) -> Iterator[Any]:
    """The documents of parsed JSON rows: a text row's `field`, a fine-tuning row's parts."""
    for row in rows:
        if kind != "text":
            if not isinstance(row, dict):
                raise _C.Error(f"{where}: not a JSON object")
            yield _fine_tuning_row(row, kind, where, template)
            continue
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise _C.Error(f"{where}: no {field!r} field with a string "
                           f"(keys: {', '.join(row) if isinstance(row, dict) else '-'})")
        yield row[field]


def _documents(files: Sequence[str], field: str, kind: str = "text",
               template: dict[str, str] | None = None, decode: bool = False) -> Iterator[Any]:
    """Every document in input order: a .jsonl line's `field`, or a whole file (as text when
    `decode`, else bytes); fine-tuning rows (kind prompt-response or chat) as their parts."""
    for path in files:
        # A .json file named as an input is JSON-lines too (what datasets' to_json writes), or
        # a JSON array of rows; directories are searched for .jsonl only (a tokenizer.json
        # beside the data is not).
        lines = path.endswith((".jsonl", ".json"))
        if kind != "text" and not lines:
            raise _C.Error(f"{path}: {kind} data is JSON-lines (.jsonl), one example a line")
        if path.endswith(".json") and _starts_with(path, b"["):
            # A JSON array of rows (Alpaca's files, datasets' to_json(lines=False)): its rows
            # are read as a JSON-lines file's lines.
            try:
                with open(path, encoding="utf-8") as f:
                    rows = json.load(f)
            except (UnicodeDecodeError, ValueError, RecursionError) as e:
                raise _C.Error(f"{path}: not a JSON array of rows ({e})") from e
            for k, row in enumerate(rows):
                yield from _rows([row], f"{path}[{k}]", field, kind, template)
            continue
        if lines:
            with open(path, "rb") as f:
                for line_no, raw in enumerate(f, 1):
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise _C.Error(f"{path}:{line_no}: not UTF-8 text ({e}); JSON-lines "
                                       "files are UTF-8") from e
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except (ValueError, RecursionError) as e:
                        raise _C.Error(f"{path}:{line_no}: not a JSON object ({e})") from e
                    yield from _rows([row], f"{path}:{line_no}", field, kind, template)
        else:
            with open(path, "rb") as f:
                data = f.read()
            if not decode:
                yield data
                continue
            try:
                yield data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _C.Error(f"{path}: not UTF-8 text ({e}); a tokenizer.json reads text "
                               "(without --tokenizer its bytes are the tokens)") from e


_WORKER: dict[str, Any] = {}


def _start_worker(tokenizer_path: str | None) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # this process is one of the workers
    if tokenizer_path is not None:
        from tokenizers import Tokenizer
        _WORKER["tok"] = Tokenizer.from_file(tokenizer_path)
    else:
        _WORKER["tok"] = None


def _encode(doc: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """A document's ids, and for fine-tuning rows their loss mask (1: trained on)."""
    if not isinstance(doc, tuple):
        return _encode_text(doc), None
    parts = doc[1]
    tok = _WORKER["tok"]
    if tok is None:  # bytes: each part's bytes are its tokens
        ids = [_encode_text(text) for text, _ in parts]
        mask = [np.full(len(a), 1 if trained else 0, dtype=np.uint8)
                for a, (_, trained) in zip(ids, parts)]
        return np.concatenate(ids), np.concatenate(mask)
    # A tokenizer: the example is encoded whole, as the model will read it (a tokenizer that
    # prepends a space to each encode, or merges across the parts' seam, gives other tokens
    # for parts encoded one by one), and a token is trained on where its text overlaps a
    # trained part's.
    text = "".join(t for t, _ in parts)
    enc = tok.encode(text, add_special_tokens=False)
    trained = np.zeros(len(text) + 1, dtype=np.int64)  # prefix sums of trained characters
    at = 0
    for t, on in parts:
        if on:
            trained[at + 1:at + 1 + len(t)] = 1
        at += len(t)
    trained = np.cumsum(trained)
    mask = np.asarray([1 if trained[min(e, len(text))] > trained[min(b, len(text))] else 0
                       for b, e in enc.offsets], dtype=np.uint8)
    return np.asarray(enc.ids, dtype=np.uint32), mask


def _encode_text(doc: str | bytes) -> np.ndarray:
    tok = _WORKER["tok"]
    if tok is None:
        data = doc.encode("utf-8") if isinstance(doc, str) else doc
        return np.frombuffer(data, dtype=np.uint8).astype(np.uint32)
    if isinstance(doc, bytes):
        try:
            doc = doc.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _C.Error(f"a document is not UTF-8 text ({e}); the tokenizer reads text") from e
    return np.asarray(tok.encode(doc, add_special_tokens=False).ids, dtype=np.uint32)


def _encode_chunk(docs: list[Any]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    return [_encode(d) for d in docs]


def _chunks(docs: Iterator[str | bytes], size: int) -> Iterator[list[str | bytes]]:
    chunk: list[str | bytes] = []
    for d in docs:
        chunk.append(d)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _ShardWriter:
    """llm.c-layout shards of at most `shard_tokens` tokens: PREFIX_000000.bin, ...

    With `pack` T, rows (add_row) are laid so that none crosses a multiple of T in the stream
    of the shards one after another, where the sampler's windows start: a row that would is
    moved to the next window, the gap filled with `pad` tokens that are never trained (mask 0);
    a row longer than T starts a window and goes on into the next ones (counted in `cut`).
    Every shard but the last holds whole windows, and finish() ends the stream with whole
    windows and the one token more that the last window's last target is."""

    def __init__(self, out_dir: str, prefix: str, dtype: type, shard_tokens: int, masked: bool,
                 pack: int = 0, pad: int = 0):
        self.out_dir, self.prefix, self.dtype, self.limit = out_dir, prefix, dtype, shard_tokens
        self.masked = masked
        self.pack, self.pad = pack, pad
        if pack:
            self.limit = max(pack, shard_tokens // pack * pack)
        self.parts: list[np.ndarray] = []
        self.mask_parts: list[np.ndarray] = []
        self.held = 0
        self.files: list[str] = []
        self.masks: list[str] = []
        self.tokens = 0
        self.position = 0  # tokens added: where the next one goes in the stream
        self.pads = 0      # pad tokens added (pack)
        self.cut = 0       # rows longer than a window (pack)

    def add_row(self, ids: np.ndarray, mask: np.ndarray | None) -> None:
        if self.pack:
            into = self.position % self.pack
            if into and into + len(ids) > self.pack:
                self._pad(self.pack - into)
            self.cut += len(ids) > self.pack
        self.add(ids, mask)

    def _pad(self, n: int) -> None:
        self.pads += n
        self.add(np.full(n, self.pad, dtype=np.uint32),
                 np.zeros(n, dtype=np.uint8) if self.masked else None)

    def finish(self) -> None:
        if self.pack and self.position:
            self._pad(-self.position % self.pack + 1)
        self.flush()

    def add(self, ids: np.ndarray, mask: np.ndarray | None) -> None:
        self.position += len(ids)
        while len(ids):
            take = min(len(ids), self.limit - self.held)
            self.parts.append(ids[:take])
            if self.masked:
                self.mask_parts.append(mask[:take])
                mask = mask[take:]
            self.held += take
            ids = ids[take:]
            if self.held == self.limit:
                self.flush()

    def flush(self) -> None:
        if not self.held:
            return
        name = f"{self.prefix}_{len(self.files):06d}.bin"
        header = np.zeros(256, dtype=np.int32)
        # llm.c's headers: uint16 tokens under 20240520 version 1, uint32 under 20240801 version 7
        header[:3] = ((20240520, 1) if self.dtype == np.uint16 else (20240801, 7)) + (self.held,)
        path = os.path.join(self.out_dir, name)
        with open(path + ".tmp", "wb") as f:
            f.write(header.tobytes())
            f.write(np.concatenate(self.parts).astype(self.dtype).tobytes())
        os.replace(path + ".tmp", path)
        self.files.append(name)
        if self.masked:  # the loss mask beside the shard: a .npy of 0/1, one value a token
            mask_name = name[:-len(".bin")] + ".mask.npy"
            np.save(os.path.join(self.out_dir, mask_name), np.concatenate(self.mask_parts))
            self.masks.append(mask_name)
        self.tokens += self.held
        self.parts, self.mask_parts, self.held = [], [], 0


def tokenize(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
             tokenizer: str | os.PathLike | None = None, *, val_every: int = 200,
             shard_tokens: int = 100_000_000, processes: int = 1, eot: str | None = None,
             field: str = "text", progress: bool | None = None, kind: str = "text",
             chat_template: dict[str, str] | None = None, bos: str | None = None,
             pack: int = 0) -> dict[str, Any]:
    """Writes the token shards of `inputs` to `out_dir` (see the module doc) and returns what
    ``tokenize.json`` records.

    [in] tokenizer: a Hugging Face ``tokenizer.json``; None: bytes (ids 0..255, end-of-text 256).
    [in] val_every: every k-th document (0, k, 2k, ...) goes to the validation shards; 0: none.
    [in] eot: the end-of-text token's text; default: the first of EOT_CANDIDATES the tokenizer
         has.
    [in] bos: a beginning-of-text token's text (e.g. Llama 3's "<|begin_of_text|>", Llama 2's
         and Mistral's "<s>") put before every document, as the model was pretrained; in
         fine-tuning data never trained on as a target (text data has no mask: there the model
         learns that a document follows an end-of-text). Default: none.
    [in] processes: encoding processes (the shards do not depend on it).
    [in] progress: a progress bar on stderr (default: when stderr is a terminal).
    [in] kind: "text"; or fine-tuning data, JSON-lines of "prompt-response" rows (``prompt`` and
         ``response`` strings) or "chat" rows (``messages``: role and content each, rendered
         by ``chat_template``, a text per role with ``{content}`` where the message goes). The
         shards then get a loss mask beside them (``*.mask.npy``): 1 on the response's (the
         assistant messages') tokens and the end-of-text, 0 on the rest, which training does
         not learn to predict.
    [in] pack: fine-tuning rows laid out for training with seq_len `pack`: a row that would
         cross a window of that many tokens (where the sampler cuts the stream) starts the
         next one, the gap filled with end-of-text tokens that are not trained on, so no row's
         response is trained without its prompt; a row longer than a window still spans
         several (counted in ``cut_rows``). The data then trains with that seq_len (or a
         multiple) only. Shards then hold whole windows: shard_tokens rounded down to a
         multiple of `pack` (up to one window). 0: rows one after another, cut where a window
         ends.
    """
    if kind not in ("text", "prompt-response", "chat"):
        raise _C.Error(f"tokenize: kind {kind!r} is not text, prompt-response or chat")
    if kind == "chat" and not chat_template:
        raise _C.Error("tokenize: chat data needs a chat_template (a text per role with "
                       "{content}, e.g. {'user': '<|user|> {content}', 'assistant': ...})")
    if kind == "chat":
        _check_chat_template(chat_template)
    if isinstance(pack, bool) or not isinstance(pack, (int, np.integer)) or not (
            0 <= pack < 2**31):
        raise ConfigError(f"tokenize: pack {pack!r} is not a sequence length (an integer below "
                          "2**31; 0: no packing)")
    if pack and kind == "text":
        raise ConfigError("tokenize: pack is for fine-tuning rows (kind prompt-response or "
                          "chat); text documents are cut across windows, as pretraining reads "
                          "them")
    if shard_tokens < 1 or processes < 1 or val_every < 0:
        raise _C.Error("tokenize: shard_tokens and processes must be positive, val_every >= 0")
    if shard_tokens >= 2**31:  # the shard header's count is an int32
        raise _C.Error(f"tokenize: shard_tokens {shard_tokens} is 2**31 or more; a shard holds "
                       "fewer tokens (its header counts them in an int32)")
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"tokenize: {out_dir} is a file, not a directory; name the directory "
                          "to write the shards and tokenize.json into")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]  # one file or directory
    files = _input_files([os.fspath(p) for p in inputs])
    tok_path = os.path.abspath(os.fspath(tokenizer)) if tokenizer is not None else None
    if tok_path is None:
        for key, value, bytes_have in (
                ("eot", eot, "end a document with id 256"),
                ("bos", bos, "have no beginning-of-text token")):
            if value is not None:
                raise ConfigError(f"tokenize: {key} {value!r} names a token of a tokenizer, but "
                                  f"none is given: byte tokens {bytes_have}; give the "
                                  f"tokenizer.json (--tokenizer) or leave {key} out")
        info = {"kind": "bytes", "vocab_size": 257, "eot": 256, "eot_text": "<|endoftext|>"}
    else:
        from tokenizers import Tokenizer
        try:
            tok = Tokenizer.from_file(tok_path)
        except Exception as e:  # tokenizers raises its own exception types
            raise _C.Error(f"{tok_path}: not a Hugging Face tokenizer.json ({e})") from e
        vocab = tok.get_vocab(with_added_tokens=True)
        names = [eot] if eot is not None else [c for c in EOT_CANDIDATES if c in vocab]
        if not names or names[0] not in vocab:
            raise _C.Error(f"{tok_path}: no end-of-text token "
                           f"{names[0]!r} in its vocabulary" if names else
                           f"{tok_path}: none of {', '.join(EOT_CANDIDATES)} is in its "
                           "vocabulary; name the end-of-text token (--eot)")
        with open(tok_path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        info = {"kind": "huggingface", "path": tok_path, "sha256": digest,
                "vocab_size": max(vocab.values()) + 1, "eot": vocab[names[0]],
                "eot_text": names[0]}
        if bos is not None:
            if bos not in vocab:
                raise ConfigError(f"tokenize: bos {bos!r} is not a token of {tok_path}")
            info["bos"], info["bos_text"] = vocab[bos], bos
    dtype = np.uint16 if info["vocab_size"] <= 65536 else np.uint32
    # The shards are written to a hidden directory in out_dir and moved into place when all are
    # complete: an error leaves an earlier run's shards as they were.
    made = not os.path.isdir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    for debris in os.listdir(out_dir):  # an earlier tokenize killed while it wrote
        if debris.startswith(".tokenize-") and os.path.isdir(os.path.join(out_dir, debris)):
            shutil.rmtree(os.path.join(out_dir, debris), ignore_errors=True)
    work = tempfile.mkdtemp(prefix=".tokenize-", dir=out_dir)
    try:
        meta = _write_shards(work, files, field, kind, chat_template, tok_path, info, dtype,
                             val_every, shard_tokens, processes, progress, int(pack))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if made and not os.listdir(out_dir):
            os.rmdir(out_dir)
        raise
    written = os.listdir(work)
    # The old tokenize.json goes first: a directory caught between the old shards and the new
    # ones (the process killed) has none, so nothing reads it as shards until it is rewritten.
    if os.path.exists(os.path.join(out_dir, "tokenize.json")):
        os.remove(os.path.join(out_dir, "tokenize.json"))
    for stale in os.listdir(out_dir):  # an earlier run's shards would be read with these
        if stale not in written and stale.startswith(("train_", "val_")) and stale.endswith(
                (".bin", ".mask.npy")):
            os.remove(os.path.join(out_dir, stale))
    for name in sorted(written, key=lambda n: n == "tokenize.json"):  # tokenize.json last
        os.replace(os.path.join(work, name), os.path.join(out_dir, name))
    os.rmdir(work)
    return meta


def _check_chat_template(template: Any) -> None:
    """Raises ConfigError unless `template` is an object of role: text with {content}."""
    if not isinstance(template, dict):
        raise ConfigError(f"tokenize: the chat template must be an object of role: text with "
                          f"{{content}}, got {template!r:.60} (of type {type(template).__name__})")
    if "assistant" not in template:
        raise ConfigError(f"tokenize: the chat template has no 'assistant' role (roles: "
                          f"{', '.join(map(str, template))}); nuri trains on the assistant's "
                          "messages, so nothing would be learned. Name the role that answers "
                          "'assistant' in the data and the template (ShareGPT's 'gpt' and "
                          "Gemma's 'model' are such roles)")
    for role, text in template.items():
        if not isinstance(text, str):
            raise ConfigError(f"tokenize: the chat template's role {role!r} has "
                              f"{text!r:.60} (of type {type(text).__name__}), not a text with "
                              "{content}")
        if "{content}" not in text:
            raise ConfigError(f"tokenize: the chat template's text for role {role!r} "
                              f"({text!r:.60}) has no {{content}}, so the messages' text would "
                              f"be dropped; put {{content}} where it goes (e.g. "
                              f"\"<|{role}|>{{content}}\\n\")")


def _write_shards(out_dir: str, files: list[str], field: str, kind: str,
                  chat_template: dict[str, str] | None, tok_path: str | None,
                  info: dict[str, Any], dtype: type, val_every: int, shard_tokens: int,
                  processes: int, progress: bool | None, pack: int = 0) -> dict[str, Any]:
    """tokenize's shards and tokenize.json, written to the new directory `out_dir`."""
    masked = kind != "text"
    train = _ShardWriter(out_dir, "train", dtype, shard_tokens, masked, pack, info["eot"])
    val = _ShardWriter(out_dir, "val", dtype, shard_tokens, masked, pack, info["eot"])
    one, zero = np.ones(1, dtype=np.uint8), np.zeros(1, dtype=np.uint8)
    eot_id = np.asarray([info["eot"]], dtype=np.uint32)
    bos_id = np.asarray([info["bos"]] if "bos" in info else [], dtype=np.uint32)
    docs = {"train": 0, "val": 0}
    trained = {"train": 0, "val": 0}  # fine-tuning: response tokens (the end-of-texts apart)
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        try:
            from tqdm import tqdm
            bar = tqdm(unit=" documents", desc="tokenize", file=sys.stderr)
        except ImportError:
            bar = None
    pool = None
    finished = False
    responses = 0  # fine-tuning: characters of the responses themselves (_fine_tuning_row)

    def counted(docs: Iterator[Any]) -> Iterator[Any]:
        nonlocal responses
        for d in docs:
            if isinstance(d, tuple):
                responses += d[2]
            yield d

    documents = counted(_documents(files, field, kind, chat_template,
                                   decode=tok_path is not None))
    try:
        if processes > 1:
            pool = get_context("spawn").Pool(processes, _start_worker, (tok_path,))
            encoded = (ids for chunk in pool.imap(_encode_chunk, _chunks(documents, 64))
                       for ids in chunk)
        else:
            _start_worker(tok_path)
            encoded = (_encode(d) for d in documents)
        for i, (ids, mask) in enumerate(encoded):
            if len(ids) and int(ids.max()) >= info["vocab_size"]:
                raise _C.Error(f"document {i}: token id {int(ids.max())} is outside the "
                               f"tokenizer's vocabulary of {info['vocab_size']}")
            to_val = val_every > 0 and i % val_every == 0
            # [bos] ids eot: a bos is never a target (it follows the previous document's end)
            (val if to_val else train).add_row(
                np.concatenate([bos_id, ids, eot_id]),
                np.concatenate([zero[:len(bos_id)], mask, one]) if masked else None)
            docs["val" if to_val else "train"] += 1
            if masked:
                trained["val" if to_val else "train"] += int(mask.sum())
            if bar is not None:
                bar.update(1)
        finished = True
    finally:
        if pool is not None:
            # On an error (or Ctrl-C) the workers stop now: close() would let the pool go on
            # reading and encoding the rest of the input before the error is seen.
            if finished:
                pool.close()
            else:
                pool.terminate()
            pool.join()
        if bar is not None:
            bar.close()
    train.finish()
    val.finish()
    if not train.files and not docs["val"]:
        raise _C.Error(f"tokenize: the {len(files)} input file(s) ({files[0]}"
                       f"{', ...' if len(files) > 1 else ''}) hold no documents")
    if not train.files:
        raise _C.Error(f"tokenize: no training documents: the input has {docs['val']} "
                       f"document(s), and documents 0, {val_every}, {2 * val_every}, ... go "
                       "to validation; give more documents (more files, or the text split into "
                       "several files or JSON-lines rows), or val_every 0 (--val-every 0) for "
                       "no validation split")
    if masked and not (trained["train"] + trained["val"] and responses):
        raise _C.Error(f"tokenize: the {kind} data holds no token to train on: every "
                       + ("response is empty" if kind == "prompt-response" else
                          "assistant message is empty, or there is none") +
                       " (only the end-of-text tokens would be learned)")
    meta = {"format": "llm.c", "dtype": np.dtype(dtype).name, "tokenizer": info,
            "inputs": [os.path.abspath(f) for f in files], "val_every": val_every,
            "documents": docs, "tokens": {"train": train.tokens, "val": val.tokens},
            "shards": {"train": train.files, "val": val.files}, "kind": kind}
    if masked:
        meta["masks"] = {"train": train.masks, "val": val.masks}
        meta["chat_template"] = chat_template
        meta["trained_tokens"] = trained
    if pack:
        meta["pack"] = pack
        meta["pad_tokens"] = {"train": train.pads, "val": val.pads}
        meta["cut_rows"] = {"train": train.cut, "val": val.cut}
    with open(os.path.join(out_dir, "tokenize.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    return meta
