"""Bad input to the Python package (an audit's findings): each gets an error that says what is
wrong and what to do, and loses nothing: an export or tokenize that fails leaves its output
directory as it was, exports refuse a run's own directory and a checkpoint's own files, models
that hold part of themselves are not saved, and generate finds the tokenizer a run trained with.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import nuri
from nuri.report import PARTS
from conftest import corpus_text, run_cli

TRAIN = ("train", "--model", "gpt2-tiny", "--steps", "2", "--micro-batch", "2", "--seq-len",
         "32", "--eval-every", "0", "--eval-batches", "1", "--max-new-tokens", "0")


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file below `directory` (hidden ones too) and its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


@pytest.fixture
def trained(tmp_path: Path) -> Path:
    """tmp_path/run (config.json, model.safetensors, ...) and its checkpoints tmp_path/ck."""
    (tmp_path / "corpus.txt").write_text(corpus_text(5000))
    run_cli(*TRAIN, "--data", "corpus.txt", "--ckpt-dir", "ck", "--out", "run", cwd=tmp_path)
    return tmp_path


def bpe_tokenizer(path: Path) -> Path:
    """A byte-level BPE tokenizer of 300 ids trained on the test corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus_text(5000).split("."), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(path))
    return path


def test_hf_export_refuses_a_run_directory(trained):
    before = snapshot(trained / "run")
    proc = run_cli("export", "ck", "--hf", "run", cwd=trained, expect=2)
    assert ("run holds a nuri run (run/config.json is nuri's), which a Hugging Face export "
            "would overwrite; name another directory (e.g. run/hf)") in proc.stderr
    assert snapshot(trained / "run") == before
    # A directory holding only a model file from nuri.save is refused too (its metadata says so).
    (trained / "saved").mkdir()
    shutil.copy(trained / "run" / "model.safetensors", trained / "saved")
    with pytest.raises(nuri.ConfigError, match=r"saved/model.safetensors is nuri's"):
        nuri.export_hf_checkpoint(trained / "ck", trained / "saved")
    # The suggested directory works, and so does exporting over an earlier export.
    run_cli("export", "ck", "--hf", "run/hf", cwd=trained)
    run_cli("export", "ck", "--hf", "run/hf", cwd=trained)
    assert json.loads((trained / "run" / "hf" / "config.json").read_text())["model_type"] == "gpt2"
    # --hf naming a file says so.
    proc = run_cli("export", "ck", "--hf", "corpus.txt", cwd=trained, expect=2)
    assert "corpus.txt is a file, not a directory" in proc.stderr


def test_a_failed_hf_export_leaves_the_directory_as_it_was(trained):
    nuri.export_hf_checkpoint(trained / "ck", trained / "hf")
    (trained / "hf" / "README.md").write_text("mine")
    before = snapshot(trained / "hf")
    assert sorted(before) == ["README.md", "config.json", "model.safetensors"]
    shutil.copytree(trained / "ck", trained / "bad")
    shard = next((trained / "bad").glob("step-*/rank-*.safetensors"))
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    with pytest.raises(nuri.Error, match="truncated"):
        nuri.export_hf_checkpoint(trained / "bad", trained / "hf")
    assert snapshot(trained / "hf") == before  # no new config.json, no temporary files
    with pytest.raises(nuri.Error, match="truncated"):
        nuri.export_hf_checkpoint(trained / "bad", trained / "new")
    assert not (trained / "new").exists()
    # A complete export replaces the earlier one's weights, sharded or not, and nothing else.
    nuri.export_hf_checkpoint(trained / "ck", trained / "hf", max_shard_bytes=200_000)
    names = sorted(os.listdir(trained / "hf"))
    assert names[:2] == ["README.md", "config.json"] and "model.safetensors" not in names
    assert names[-1] == "model.safetensors.index.json" and len(names) > 4
    nuri.export_hf_checkpoint(trained / "ck", trained / "hf")
    assert snapshot(trained / "hf") == before


def test_hf_export_writes_the_token_ids_it_is_given(trained):
    """`export --hf` takes generate()'s stop and pad ids from --token-ids-from (here nuri
    tokenize's output: its end-of-text id) and the --*-token-id flags; without an eos id it
    warns that generate() will not stop; a bad id is refused before anything is written."""
    proc = run_cli("export", "ck", "--hf", "hf", cwd=trained)
    assert "config.json's eos_token_id is null, so generate() in transformers will not stop" \
        in proc.stderr
    run_cli("tokenize", "corpus.txt", "--out", "shards", "--val-every", "0", cwd=trained)
    proc = run_cli("export", "ck", "--hf", "hf", "--token-ids-from", "shards", "--pad-token-id",
                   "0", cwd=trained)
    assert ("token ids eos_token_id=256, pad_token_id=0 (from shards and the command line)"
            in proc.stdout) and "warning" not in proc.stderr
    config = json.loads((trained / "hf" / "config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"]) == (256, 0)
    assert config["bos_token_id"] is None  # null: transformers' GPT-2 default (50256) is not
    # this model's
    proc = run_cli("export", "ck", "--hf", "hf2", "--token-ids-from", "run", cwd=trained,
                   expect=2)
    assert "run/config.json: not a Hugging Face model's config.json (it has no model_type)" \
        in proc.stderr
    before = snapshot(trained / "hf")
    vocab = nuri.load(trained / "run" / "model.safetensors").config.vocab_size
    proc = run_cli("export", "ck", "--hf", "hf", "--eos-token-id", str(vocab), cwd=trained,
                   expect=2)
    assert f"eos_token_id {vocab} is not a token id of the model (an integer in [0, {vocab}))" \
        in proc.stderr
    proc = run_cli("export", "ck", "--out", "m.safetensors", "--eos-token-id", "3", cwd=trained,
                   expect=2)
    assert "token ids go into a Hugging Face config.json; give --hf DIR" in proc.stderr
    assert snapshot(trained / "hf") == before and not (trained / "m.safetensors").exists()


def test_export_out_refuses_a_directory_and_the_checkpoints_own_files(trained):
    shard = next((trained / "ck").glob("step-*/rank-*.safetensors"))
    before = snapshot(trained / "ck")
    proc = run_cli("export", "ck", "--out", "run", cwd=trained, expect=2)
    assert "export: run is a directory; name the model file to write (e.g. " \
        "run/model.safetensors)" in proc.stderr
    rel = str(shard.relative_to(trained))
    proc = run_cli("export", "ck", "--out", rel, "--hf", "hf", cwd=trained, expect=2)
    assert f"export: {rel}: it is inside checkpoint directory " in proc.stderr
    assert "its files could be overwritten" in proc.stderr
    assert not (trained / "hf").exists()  # refused before anything was written
    with pytest.raises(nuri.ConfigError, match="inside checkpoint directory"):
        nuri.consolidate(shard.parent, shard.parent / "model.safetensors")
    proc = run_cli("export", "ck", "--out", "ck/latest", cwd=trained, expect=2)
    assert "export: ck/latest: it is " in proc.stderr and "a file of the checkpoints'" \
        in proc.stderr
    with pytest.raises(nuri.ConfigError, match="inside checkpoint directory"):
        nuri.export_hf_checkpoint(trained / "ck", shard.parent / "hf")
    assert snapshot(trained / "ck") == before
    # Into the Hugging Face export's own directory: nuri's layout would replace its weights.
    proc = run_cli("export", "ck", "--out", "hfx/model.safetensors", "--hf", "hfx", cwd=trained,
                   expect=2)
    assert "export: --out hfx/model.safetensors is inside the --hf directory hfx" in proc.stderr
    assert not (trained / "hfx").exists()
    run_cli("export", "ck", "--out", "model.safetensors", cwd=trained)
    assert nuri.load(trained / "model.safetensors").config.n_layer == 2


@pytest.mark.parametrize("part, held", [
    ({"shard": (0, 100)}, r"the ZeRO 3 shard \[0, 100\) of its \d+ weights"),
    ({"tensor_parallel": (1, 2)}, "tensor-parallel slice 1 of 2"),
    ({"pipeline_stage": (0, 1)}, r"the pipeline stage of blocks \[0, 1\) of 2"),
])
def test_a_model_that_holds_part_of_itself_is_not_saved(tmp_path, part, held):
    model = nuri.Model(nuri.ModelConfig.preset("gpt2-tiny"), **part)
    assert not model.holds_whole_model
    with pytest.raises(nuri.Error, match=f"holds only part of itself \\({held}\\).*"
                                         "nuri.consolidate"):
        nuri.save(model, tmp_path / "m.safetensors")
    with pytest.raises(nuri.Error, match=f"\\({held}\\).*python -m nuri export"):
        nuri.export_hf(model, tmp_path / "hf")
    assert os.listdir(tmp_path) == []


def test_save_to_a_directory_says_so(tmp_path):
    model = nuri.Model(nuri.ModelConfig.preset("gpt2-tiny"))
    with pytest.raises(nuri.Error, match=f"{tmp_path} is a directory; name the model file"):
        nuri.save(model, tmp_path)
    nuri.save(model, tmp_path / "m.safetensors")
    assert nuri.load(tmp_path / "m.safetensors").config == model.config


def test_a_failed_tokenize_keeps_the_earlier_shards(tmp_path):
    for name, text in (("a.txt", "first document"), ("b.txt", "second document")):
        (tmp_path / name).write_text(text)
    (tmp_path / "late_bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
    meta = nuri.tokenize([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "s8",
                         val_every=0, shard_tokens=8, progress=False)
    assert meta["shards"]["train"] == [f"train_{k:06d}.bin" for k in range(4)]  # 32 tokens
    before = snapshot(tmp_path / "s8")
    proc = run_cli("tokenize", "a.txt", "b.txt", "late_bad.jsonl", "--out", "s8", "--quiet",
                   cwd=tmp_path, expect=1)
    assert "late_bad.jsonl:2: no 'text' field" in proc.stderr
    assert snapshot(tmp_path / "s8") == before  # and no temporary directory left in it
    run_cli("tokenize", "late_bad.jsonl", "--out", "new", cwd=tmp_path, expect=1)
    assert not (tmp_path / "new").exists()
    # A good run replaces the shards, the earlier run's extra ones too; other files stay.
    (tmp_path / "s8" / "notes.txt").write_text("mine")
    meta = nuri.tokenize([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "s8",
                         val_every=0, progress=False)
    assert sorted(os.listdir(tmp_path / "s8")) == ["notes.txt", "tokenize.json",
                                                   "train_000000.bin"]
    assert nuri.read_data(tmp_path / "s8").to_numpy().tolist() == \
        list(b"first document") + [256] + list(b"second document") + [256]


@pytest.mark.parametrize("template, message", [
    ('{"user": "U: ", "assistant": "A:{content}"}', r"role 'user' \('U: '\) has no {content}, "
     "so the messages' text would be dropped"),
    ('[1, 2]', r"must be an object of role: text with {content}, got \[1, 2\] \(of type list\)"),
    ('7', r"must be an object of role: text with {content}, got 7 \(of type int\)"),
    ('{"user": "U:{content}", "assistant": {"x": 1}}', r"role 'assistant' has {'x': 1} "
     r"\(of type dict\), not a text"),
])
def test_a_chat_template_is_checked_up_front(tmp_path, template, message):
    (tmp_path / "chat.jsonl").write_text(json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    ) + "\n")
    with pytest.raises(nuri.ConfigError, match=message):
        nuri.tokenize([tmp_path / "chat.jsonl"], tmp_path / "out", kind="chat", val_every=0,
                      chat_template=json.loads(template), progress=False)
    proc = run_cli("tokenize", "chat.jsonl", "--out", "out", "--kind", "chat",
                   "--chat-template", template, cwd=tmp_path, expect=2)
    assert "nuri: tokenize: the chat template" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_one_document_and_val_every_gets_advice_that_works(tmp_path):
    (tmp_path / "file.txt").write_text("one document")
    proc = run_cli("tokenize", "file.txt", "--out", "d", "--val-every", "100000", cwd=tmp_path,
                   expect=1)
    assert "the input has 1 document(s), and documents 0, 100000, 200000, ... go to " \
        "validation" in proc.stderr
    assert "--val-every 0" in proc.stderr and "larger val_every" not in proc.stderr
    assert not (tmp_path / "d").exists()
    proc = run_cli("tokenize", "file.txt", "--out", "d", "--val-every", "0", cwd=tmp_path)
    assert "13 train tokens" in proc.stdout


def test_invalid_utf8_names_the_file_and_line(tmp_path):
    (tmp_path / "rows.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "\xff"}\n')
    with pytest.raises(nuri.Error, match=r"rows.jsonl:2: not UTF-8 text .*0xff"):
        nuri.tokenize([tmp_path / "rows.jsonl"], tmp_path / "o", progress=False)
    (tmp_path / "t.txt").write_bytes(b"ok \xff")
    tok = bpe_tokenizer(tmp_path / "tok.json")
    with pytest.raises(nuri.Error, match=r"t.txt: not UTF-8 text .*without --tokenizer"):
        nuri.tokenize([tmp_path / "t.txt"], tmp_path / "o", tok, progress=False)
    for p in (2, 3):  # the worker processes' path too
        with pytest.raises(nuri.Error, match=r"t.txt: not UTF-8 text"):
            nuri.tokenize([tmp_path / "t.txt"], tmp_path / "o", tok, processes=p, progress=False)
    # Bytes need no decoding: the byte tokenizer takes the file as it is.
    meta = nuri.tokenize([tmp_path / "t.txt"], tmp_path / "o", val_every=0, progress=False)
    assert meta["tokens"]["train"] == 5
    assert sorted(os.listdir(tmp_path)) == ["o", "rows.jsonl", "t.txt", "tok.json"]


def test_generate_uses_the_tokenizer_the_runs_shards_record(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "corpus.txt").write_text(corpus_text(5000))
    bpe_tokenizer(work / "tok.json")
    run_cli("tokenize", "corpus.txt", "--out", "shards", "--tokenizer", "tok.json",
            "--val-every", "0", cwd=work)
    run_cli(*TRAIN, "model.vocab_size=300", "--data", "shards", "--out", "run", cwd=work)
    assert json.loads((work / "run" / "config.json").read_text())["data"]["train"] == "shards"
    args = ("generate", "--run", "work/run", "--prompt", "the student", "--max-new-tokens",
            "12", "--temperature", "0")
    # From another directory: the run's relative data path is found beside the run.
    inferred = run_cli(*args, cwd=tmp_path).stdout
    assert inferred == run_cli(*args, "--tokenizer", "work/tok.json", cwd=tmp_path).stdout
    assert inferred != run_cli(*args, "--tokenizer", "bytes", cwd=tmp_path).stdout
    # --stop, a token by the tokenizer's name or by id, ends the text at its first draw.
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(work / "tok.json"))
    model = nuri.load(work / "run" / "model.safetensors")
    ids = model.generate(tok.encode("the student", add_special_tokens=False).ids, 12,
                         temperature=0)
    upto = ids[:ids.index(ids[4]) + 1]
    want = "the student" + tok.decode(upto, skip_special_tokens=False) + "\n"
    never = str(next(i for i in range(299, 0, -1) if i not in ids))
    for stop in (tok.id_to_token(ids[4]), str(ids[4])):
        assert run_cli(*args, "--stop", never, "--stop", stop, cwd=tmp_path).stdout == want
    os.rename(work / "tok.json", work / "moved.json")
    proc = run_cli(*args, cwd=tmp_path, expect=1)
    assert f"the run's shards were written by the tokenizer {work / 'tok.json'}, which is not " \
        "there; pass the model's tokenizer with --tokenizer FILE" in proc.stderr
    assert run_cli(*args, "--tokenizer", "work/moved.json", cwd=tmp_path).stdout == inferred
    os.rename(work / "shards", work / "gone")
    proc = run_cli(*args, cwd=tmp_path, expect=1)
    assert "the run's data (shards) is not there, so the tokenizer it was written with is not " \
        "known; pass the model's tokenizer with --tokenizer FILE" in proc.stderr
    # A byte-level run needs no tokenizer, as before.
    (work / "c.txt").write_text(corpus_text(5000))
    run_cli(*TRAIN, "--data", "c.txt", "--out", "bytes_run", cwd=work)
    run_cli("generate", "--run", "work/bytes_run", "--max-new-tokens", "5", cwd=tmp_path)


def test_generate_names_what_is_wrong(trained):
    model = nuri.load(trained / "run" / "model.safetensors")
    with pytest.raises(nuri.Error, match="missing.json: no such tokenizer file"):
        nuri.generate_text(model, "hi", tokenizer=trained / "missing.json")
    with pytest.raises(nuri.Error, match="corpus.txt: not a Hugging Face tokenizer.json"):
        nuri.generate_text(model, "hi", tokenizer=trained / "corpus.txt")
    with pytest.raises(nuri.ConfigError, match="seed must be an integer from 0"):
        nuri.generate_text(model, "hi", seed=-1)
    proc = run_cli("generate", "--run", "run", "--tokenizer", "missing.json", cwd=trained,
                   expect=1)
    assert "nuri: missing.json: no such tokenizer file" in proc.stderr
    proc = run_cli("generate", "--run", "run", "--seed", "-1", cwd=trained, expect=2)
    assert "argument --seed: expected an integer from 0 to 2**64 - 1, got '-1'" in proc.stderr
    for flag, value, message in (
            ("--temperature", "inf", "expected a finite number >= 0 (0: greedy), got 'inf'"),
            ("--max-new-tokens", str(10**20), "expected an integer from 0 to 2**31 - 1"),
            ("--top-k", "-3", "expected an integer from 0 to 2**31 - 1, got '-3'"),
            ("--top-p", "0", "expected a number in (0, 1] (1: no nucleus cut), got '0'"),
            ("--top-p", "nan", "expected a number in (0, 1] (1: no nucleus cut), got 'nan'")):
        proc = run_cli("generate", "--run", "run", flag, value, cwd=trained, expect=2)
        assert f"argument {flag}: {message}" in proc.stderr, proc.stderr
    proc = run_cli("generate", "--run", "no-such-run", cwd=trained, expect=2)
    assert "generate: --run no-such-run is not a directory (a run's --out)" in proc.stderr
    (trained / "stopped").mkdir(exist_ok=True)
    proc = run_cli("generate", "--run", "stopped", cwd=trained, expect=2)
    assert ("generate: stopped holds no model.safetensors (a run writes it at its end; a stopped "
            "or diverged one does not). Export its newest checkpoint") in proc.stderr
    config = trained / "run" / "config.json"
    for text, message in (("{bad", "not a readable run config (Expecting property name"),
                          ("[1]", "not a run config as nuri train writes it"),
                          ('{"sample": 3}', "not a run config as nuri train writes it"),
                          ('{"data": {"train": 5}}', "not a run config as nuri train writes it"),
                          ('{"sample": {"bogus": 1}}', "sample.bogus: unknown key")):
        config.write_text(text)
        proc = run_cli("generate", "--run", "run", cwd=trained, expect=2)
        assert f"nuri: {os.path.join('run', 'config.json')}: {message}" in proc.stderr, text
        assert "Traceback" not in proc.stderr
    proc = run_cli("generate", "--model", "run/model.safetensors", "--max-new-tokens", "3",
                   cwd=trained)  # what the message suggests
    assert proc.stdout.startswith("The ")


def test_single_paths_and_files_for_directories(tmp_path):
    (tmp_path / "file.txt").write_text("a document")
    meta = nuri.tokenize(str(tmp_path / "file.txt"), tmp_path / "d", val_every=0, progress=False)
    assert meta["documents"] == {"train": 1, "val": 0}
    assert meta["inputs"] == [str(tmp_path / "file.txt")]
    proc = run_cli("tokenize", "file.txt", "--out", "file.txt", cwd=tmp_path, expect=2)
    assert "tokenize: file.txt is a file, not a directory" in proc.stderr
    assert (tmp_path / "file.txt").read_text() == "a document"
    assert np.array_equal(nuri.read_data(tmp_path / "d").to_numpy(),
                          list(b"a document") + [256])
    with pytest.raises(nuri.Error, match="shard_tokens 2147483648 is 2\\*\\*31 or more"):
        nuri.tokenize(str(tmp_path / "file.txt"), tmp_path / "e", shard_tokens=2**31,
                      progress=False)


def test_an_end_of_text_token_without_a_tokenizer_is_refused(tmp_path):
    (tmp_path / "file.txt").write_text("a document")
    with pytest.raises(nuri.ConfigError, match="eot '</s>' names a token of a tokenizer, but "
                                               "none is given"):
        nuri.tokenize([tmp_path / "file.txt"], tmp_path / "d", eot="</s>", progress=False)
    assert not (tmp_path / "d").exists()


def test_tokenize_clears_what_a_killed_run_left(tmp_path):
    (tmp_path / "file.txt").write_text("a document\n" * 20)
    out = tmp_path / "d"
    (out / ".tokenize-killed").mkdir(parents=True)
    (out / ".tokenize-killed" / "train_000000.bin").write_bytes(b"partial")
    meta = nuri.tokenize([tmp_path / "file.txt"], out, val_every=0, progress=False)
    assert meta["documents"] == {"train": 1, "val": 0}
    assert sorted(p.name for p in out.iterdir()) == ["tokenize.json", "train_000000.bin"]


def test_damaged_run_files_are_passed_over_or_named(trained):
    """A ledger or metrics line cut short by a crash is passed over (the report and the loss
    plot go on); a ledger record that parses but holds the wrong thing is an error naming the
    line and the field; a tokenize.json whose tokenizer path is a number (a file descriptor to
    os.path) is refused."""
    ck, run = trained / "ck", trained / "run"
    ledger = (ck / "ledger.jsonl").read_bytes()
    whole = nuri.report(ck)
    (ck / "ledger.jsonl").write_bytes(b'{"event": "start", "id": "cut' + b"\xe2\x80\n" + ledger)
    assert nuri.report(ck) == whole
    end = json.loads(ledger.splitlines()[1])
    assert end["event"] == "end"
    for field, value in (("steps_done", "7"), ("wall", -1.0), ("parts", {"training": 1.0})):
        bad = dict(end, **{field: value})
        (ck / "ledger.jsonl").write_bytes(ledger.splitlines()[0] + b"\n" +
                                          json.dumps(bad).encode() + b"\n")
        with pytest.raises(nuri.Error, match=f"ledger.jsonl:2: the end record's "
                                             f"{'parts' if field == 'parts' else repr(field)}"):
            nuri.report(ck)
    assert "ledger.jsonl:2: the end record's" in run_cli("report", "ck", cwd=trained,
                                                         expect=1).stderr
    assert "run holds no ledger.jsonl: a run writes its ledger in its checkpoint directory" in \
        run_cli("report", "run", cwd=trained, expect=1).stderr
    metrics = (run / "metrics.jsonl").read_bytes()
    # A line cut short and a record without a loss are passed over; the session's own figures
    # and matplotlib backend are left as they were.
    import matplotlib
    import matplotlib.pyplot as plt
    mine, backend = plt.figure(), matplotlib.get_backend()
    (run / "metrics.jsonl").write_bytes(metrics + b'{"step": 9}\n{"step": 3, "lo')
    (run / "loss.png").unlink(missing_ok=True)
    assert nuri.plot_losses(run) is None and (run / "loss.png").stat().st_size > 0
    assert plt.fignum_exists(mine.number) and matplotlib.get_backend() == backend
    plt.close(mine)
    (run / "metrics.jsonl").write_bytes(metrics)
    (run / "metrics.jsonl").write_bytes(b'{"step": "x"}\n')
    assert nuri.plot_losses(run) == "no metrics to plot (metrics.jsonl holds no step records)"

    shards = trained / "shards"
    shards.mkdir()
    (shards / "tokenize.json").write_text(json.dumps(
        {"tokenizer": {"kind": "tokenizer.json", "path": 0, "sha256": "0" * 64}}))
    table = json.loads((run / "config.json").read_text())
    table["data"]["train"] = str(shards)
    (run / "config.json").write_text(json.dumps(table))
    err = run_cli("generate", "--run", "run", "--max-new-tokens", "2", cwd=trained,
                  expect=1).stderr
    assert "tokenize.json: no tokenizer record" in err and "are not strings" in err, err


def test_report_credits_unfinished_allocations_in_a_row_once(tmp_path):
    """Allocations killed before their end record, two in a row between finished ones: their
    checkpointed steps (from the last finished allocation's end to where the next one resumed)
    count once, and the steps an allocation ran past its last checkpoint are the tokens of the
    one that redid them."""
    def start(i):
        return {"event": "start", "id": f"a{i}", "time": float(i), "ranks": 2, "backend": "cpu",
                "layout": "dp 2", "tokens_per_step": 10, "flops_per_token": 1.0}

    def end(i, steps_from, steps_done):
        return {"event": "end", "id": f"a{i}", "wall": 5.0, "steps_from": steps_from,
                "steps_done": steps_done, "redone_steps": 0, "status": 0, "reason": "",
                "parts": {p: 1.0 for p in PARTS}}

    def write(records):
        (tmp_path / "ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    write([start(1), end(1, 0, 100), start(2), start(3), start(4), end(4, 300, 400)])
    rep = nuri.report(tmp_path)
    assert [r.get("tokens") for r in rep["allocations"]] == [1000, None, 2000, 1000]
    assert rep["total"]["tokens"] == 4000  # steps 0 to 400, each once
    # a1 ended past its last checkpoint (an error at step 120, its checkpoint at 100): steps
    # 101-120 are a3's, which redid them, not a1's too.
    write([start(1), end(1, 0, 120), start(2), start(3), end(3, 100, 200)])
    rep = nuri.report(tmp_path)
    assert [r.get("tokens") for r in rep["allocations"]] == [1000, 0, 1000]
    assert rep["total"]["tokens"] == 2000
    assert rep["allocations"][0]["steps_done"] == 120  # what it ran, shown as it was
    # The same with nothing killed between them.
    write([start(1), end(1, 0, 120), start(3), end(3, 100, 200)])
    assert nuri.report(tmp_path)["total"]["tokens"] == 2000
    # Taken back through `latest` after a divergence: a3 resumed step 500 after a1 (0-1000) and
    # a2 (1000-2000); steps 500-1000 are a3's alone, and a2's were all undone.
    write([start(1), end(1, 0, 1000), start(2), end(2, 1000, 2000), start(3), end(3, 500, 1500)])
    rep = nuri.report(tmp_path)
    assert [r.get("tokens") for r in rep["allocations"]] == [5000, 0, 10000]
    assert rep["total"]["tokens"] == 15000
    # The same with an allocation killed after checkpointing to 1500 before a3 resumed it, and
    # a4 taking the run back to step 500: 0-500 are a1's, 500-1500 a4's, nothing else counts.
    write([start(1), end(1, 0, 1000), start(2), start(3), end(3, 1500, 2000),
           start(4), end(4, 500, 1500)])
    rep = nuri.report(tmp_path)
    assert [r.get("tokens") for r in rep["allocations"]] == [5000, 0, 0, 10000]
    assert rep["total"]["tokens"] == 15000


def test_a_loss_mask_that_does_not_fit_its_shard_is_refused(tmp_path):
    """Each shard's mask is checked against that shard: two masks swapped between shards of
    other lengths (the same total) would shift every bit between them."""
    rows = [{"prompt": f"question {i} " * (i % 7 + 1), "response": f"answer {i} " * (i % 5 + 1)}
            for i in range(200)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = nuri.tokenize([tmp_path / "rows.jsonl"], tmp_path / "d", kind="prompt-response",
                         val_every=0, shard_tokens=4000, progress=False)
    masks = meta["masks"]["train"]
    assert len(masks) >= 2
    first, last = tmp_path / "d" / masks[0], tmp_path / "d" / masks[-1]
    assert first.stat().st_size != last.stat().st_size
    a, b = first.read_bytes(), last.read_bytes()
    first.write_bytes(b)
    last.write_bytes(a)
    with pytest.raises(nuri.Error, match=f"mask {masks[0]} has .* values, its shard "
                                         f"{meta['shards']['train'][0]} 4000 tokens"):
        nuri.read_data(tmp_path / "d")
    # A value that is no mask's (a flipped bit), named as a mask value at its byte in the file,
    # not as a token id of another tokenizer.
    first.write_bytes(a)
    last.write_bytes(b)
    nuri.read_data(tmp_path / "d")
    flipped = bytearray(a)
    header = len(a) - 4000  # a uint8 .npy: the header, then one byte a token
    flipped[header + 17] = 3
    first.write_bytes(bytes(flipped))
    with pytest.raises(nuri.Error) as info:
        nuri.read_data(tmp_path / "d")
    assert (f"{masks[0]}: loss mask value 3 at index 17 (byte offset {header + 17}; 0: not "
            "trained on, 1: trained on): the file is corrupted" in str(info.value)), info.value
    assert "tokenizer" not in str(info.value)
