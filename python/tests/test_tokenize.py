"""``nuri tokenize`` (issue #25): a BPE tokenizer trained here with the ``tokenizers`` library on
tinyshakespeare (no download) turns text and JSON-lines into llm.c shards with end-of-text
between documents and a validation split; the shards are the same for 1 and 3 processes; a run
trains on the directory (its val shards as validation), refuses a model whose vocabulary is
smaller than the tokenizer's and shards another tokenizer wrote, and generation decodes with
the same tokenizer. Fine-tuning rows (prompt/response, chat with a template) get a loss mask,
and a model imported from transformers and fine-tuned on them learns the responses and not the
prompts.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

import nuri
from conftest import run_cli

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"


def paragraphs():
    """tinyshakespeare's speeches (../shared beside the checkout, as CI has it), or where a
    checkout has no shared/ the paragraphs of the license texts every Debian system has (the
    demo's corpus)."""
    if SHAKESPEARE.exists() and not os.environ.get("NURI_TEST_NO_SHARED"):
        texts = [SHAKESPEARE.read_text(encoding="utf-8")]
    else:
        licenses = sorted(p for p in Path("/usr/share/common-licenses").glob("*") if p.is_file())
        assert licenses, f"these tests read {SHAKESPEARE} or /usr/share/common-licenses"
        texts = [p.read_text(encoding="utf-8", errors="replace") for p in licenses]
    return [s.strip() for t in texts for s in t.split("\n\n") if s.strip()][:600]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Speeches as documents (paragraphs()): two JSON-lines files and a text file, and a
    byte-level BPE tokenizer of 400 ids trained on them."""
    d = tmp_path_factory.mktemp("corpus")
    speeches = paragraphs()
    assert len(speeches) == 600, len(speeches)
    (d / "docs").mkdir()
    for k, part in enumerate((speeches[:250], speeches[250:500])):
        with open(d / "docs" / f"part{k}.jsonl", "w", encoding="utf-8") as f:
            for s in part:
                f.write(json.dumps({"text": s, "id": len(s)}) + "\n")
    (d / "docs" / "tail.txt").write_text("\n\n".join(speeches[500:]), encoding="utf-8")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(speeches, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(d / "tokenizer.json"))
    return d, speeches


def read_shard(path):
    raw = np.fromfile(path, dtype=np.int32, count=256)
    assert raw[0] == 20240520 and raw[1] == 1  # llm.c, uint16
    return np.fromfile(path, dtype=np.uint16, offset=1024)


def test_shards_hold_every_document_with_end_of_text_and_a_validation_split(corpus, tmp_path):
    d, speeches = corpus
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    meta = nuri.tokenize([d / "docs"], tmp_path / "a", d / "tokenizer.json", val_every=50,
                         shard_tokens=20_000, progress=False)
    assert meta["tokenizer"]["vocab_size"] == 400 and meta["tokenizer"]["eot"] == eot
    assert meta["documents"] == {"train": 490, "val": 11}  # 500 rows and one text file
    assert len(meta["shards"]["train"]) > 1  # 20,000 tokens a shard
    train = np.concatenate([read_shard(tmp_path / "a" / n) for n in meta["shards"]["train"]])
    val = np.concatenate([read_shard(tmp_path / "a" / n) for n in meta["shards"]["val"]])
    assert meta["tokens"] == {"train": len(train), "val": len(val)}
    # Documents in order, each followed by end-of-text; documents 0, 50, 100 ... are val's.
    docs = speeches[:500] + ["\n\n".join(speeches[500:])]
    want = {"train": [], "val": []}
    for i, text in enumerate(docs):
        want["val" if i % 50 == 0 else "train"] += tok.encode(text).ids + [eot]
    assert train.tolist() == want["train"] and val.tolist() == want["val"]
    assert tok.decode(train[:200].tolist()).startswith(docs[1][:40])


def test_the_shards_do_not_depend_on_the_process_count(corpus, tmp_path):
    d, _ = corpus
    one = nuri.tokenize([d / "docs"], tmp_path / "one", d / "tokenizer.json", val_every=7,
                        shard_tokens=5000, progress=False)
    three = nuri.tokenize([d / "docs"], tmp_path / "three", d / "tokenizer.json", val_every=7,
                          shard_tokens=5000, processes=3, progress=False)
    assert one["shards"] == three["shards"] and one["tokens"] == three["tokens"]
    for split in ("train", "val"):
        for name in one["shards"][split]:
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "three" / name).read_bytes()


def test_an_error_stops_the_worker_processes_at_once(corpus, tmp_path, monkeypatch):
    """A failure while writing (a full disk, say) ends the pool: it does not go on reading and
    encoding the rest of the input before the error is seen (nor wait for it after Ctrl-C)."""
    d, _ = corpus
    from nuri import shards
    read = {"documents": 0}
    documents = shards._documents

    def counted(*args, **kwargs):
        for doc in documents(*args, **kwargs):
            read["documents"] += 1
            yield doc

    def full(self, ids, mask):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shards, "_documents", counted)
    monkeypatch.setattr(shards._ShardWriter, "add", full)
    many = tmp_path / "many.jsonl"
    with many.open("w", encoding="utf-8") as f:
        for i in range(40000):
            f.write(json.dumps({"text": f"document {i} of many"}) + "\n")
    with pytest.raises(OSError, match="No space left"):
        nuri.tokenize([many], tmp_path / "o", d / "tokenizer.json", processes=2, progress=False)
    assert 0 < read["documents"] < 20000, read


def test_a_run_trains_on_the_shards_and_generates_with_the_tokenizer(corpus, tmp_path):
    d, _ = corpus
    nuri.tokenize([d / "docs"], tmp_path / "data", d / "tokenizer.json", val_every=20,
                  progress=False)
    out = tmp_path / "run"
    proc = run_cli("train", "--model", "gpt2-tiny", "model.vocab_size=400", "--data",
                   str(tmp_path / "data"), "--steps", "30", "--micro-batch", "4", "--seq-len",
                   "64", "--lr", "3e-3", "--out", str(out), "sample.max_new_tokens=0",
                   cwd=tmp_path)
    assert "1 train shard" in proc.stdout and "validation its val shards" in proc.stdout
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert losses[-1] < losses[0] - 1.0  # it learns from the tokens
    # A model with fewer ids than the tokenizer is refused, naming both.
    proc = run_cli("train", "--model", "gpt2-tiny", "--data", str(tmp_path / "data"), "--steps",
                   "1", cwd=tmp_path, expect=1)
    assert ("the shards were written by tokenizer.json, whose vocabulary has 400 ids, more than "
            "the model's vocab_size 257") in proc.stderr
    # data.val naming a directory of shards: its val shards; one tokenized for validation alone
    # (--val-every 0) its train shards, but not when it is the training data's own.
    nuri.tokenize([d / "docs" / "tail.txt"], tmp_path / "held", d / "tokenizer.json",
                  val_every=0, progress=False)
    nuri.tokenize([d / "docs"], tmp_path / "all", d / "tokenizer.json", val_every=0,
                  progress=False)
    one_step = ("train", "--model", "gpt2-tiny", "model.vocab_size=400", "--steps", "1",
                "--micro-batch", "2", "--seq-len", "64", "sample.max_new_tokens=0")
    for val, want in (("data", f"validation {tmp_path / 'data'}: 1 val shard"),
                      ("held", f"validation {tmp_path / 'held'}: 1 train shard")):
        proc = run_cli(*one_step, "--data", str(tmp_path / "all"), "--val", str(tmp_path / val),
                       cwd=tmp_path)
        assert want in proc.stdout, proc.stdout
    proc = run_cli(*one_step, "--data", str(tmp_path / "all"), "--val", str(tmp_path / "all"),
                   cwd=tmp_path, expect=2)
    assert "is data.train's directory of shards, and it holds no val shards" in proc.stderr
    # Generation encodes and decodes with the same tokenizer.
    proc = run_cli("generate", "--run", str(out), "--tokenizer", str(d / "tokenizer.json"),
                   "--prompt", "KING HENRY", "--max-new-tokens", "20", "--temperature", "0",
                   cwd=tmp_path)
    assert proc.stdout.startswith("KING HENRY") and len(proc.stdout) > len("KING HENRY") + 5
    model = nuri.load(str(out / "model.safetensors"))
    small = Tokenizer(models.WordLevel({f"w{i}": i for i in range(500)}, unk_token="w0"))
    small.save(str(tmp_path / "big.json"))
    with pytest.raises(nuri.Error, match="its vocabulary has 500 ids, more than the model's "
                                         "vocab_size 400"):
        nuri.generate_text(model, "w1", tokenizer=tmp_path / "big.json")


def test_shards_of_another_tokenizer_are_refused(corpus, tmp_path):
    """data.tokenizer (--tokenizer) names the model's tokenizer; tokenize.json records which one
    wrote the shards (its SHA-256), so shards of another tokenizer with the same vocabulary size,
    which the id range check cannot tell apart, are refused, as is text with a tokenizer.json."""
    d, speeches = corpus
    nuri.tokenize([d / "docs"], tmp_path / "data", d / "tokenizer.json", val_every=20,
                  progress=False)
    other = Tokenizer(models.BPE())  # the same 400 ids, merges learned from other text
    other.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    other.decoder = decoders.ByteLevel()
    other.train_from_iterator([s.upper() for s in speeches], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    other.save(str(tmp_path / "other.json"))
    assert other.get_vocab_size() == 400
    args = ("train", "--model", "gpt2-tiny", "model.vocab_size=400", "--steps", "1",
            "--micro-batch", "2", "--seq-len", "32", "sample.max_new_tokens=0")
    proc = run_cli(*args, "--data", str(tmp_path / "data"), "--tokenizer",
                   str(tmp_path / "other.json"), cwd=tmp_path, expect=1)
    assert "these shards were written by " + str(d / "tokenizer.json") in proc.stderr
    assert "but data.tokenizer is " + str(tmp_path / "other.json") in proc.stderr
    proc = run_cli(*args, "--data", str(tmp_path / "data"), "--tokenizer", "bytes", cwd=tmp_path,
                   expect=1)
    assert "but data.tokenizer is the byte tokenizer" in proc.stderr
    proc = run_cli(*args, "--data", str(d / "docs" / "tail.txt"), "--tokenizer",
                   str(d / "tokenizer.json"), cwd=tmp_path, expect=1)
    assert "tail.txt is text, which nuri reads as byte tokens" in proc.stderr
    proc = run_cli(*args, "--data", str(tmp_path / "data"), "--tokenizer",
                   str(d / "tokenizer.json"), cwd=tmp_path)  # the one that wrote them
    assert "1 train shard" in proc.stdout


def test_bad_inputs_name_the_file_and_line(corpus, tmp_path):
    d, _ = corpus
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text"}\n', encoding="utf-8")
    with pytest.raises(nuri.Error, match=r"bad.jsonl:2: no 'text' field with a string \(keys: "
                                         r"body\)"):
        nuri.tokenize([bad], tmp_path / "o", d / "tokenizer.json", progress=False)
    bad.write_text('{"text": "fine"}\nnot json\n', encoding="utf-8")
    with pytest.raises(nuri.Error, match=r"bad.jsonl:2: not a JSON object"):
        nuri.tokenize([bad], tmp_path / "o", d / "tokenizer.json", progress=False)
    with pytest.raises(nuri.Error, match="no end-of-text token '<eos>'"):
        nuri.tokenize([d / "docs"], tmp_path / "o", d / "tokenizer.json", eot="<eos>",
                      progress=False)
    # A .json file of JSON lines (what datasets' to_json writes) is read as JSON-lines.
    bad.write_text('{"text": "fine"}\n{"text": "too"}\n', encoding="utf-8")
    bad.rename(tmp_path / "rows.json")
    meta = nuri.tokenize([tmp_path / "rows.json"], tmp_path / "j", val_every=0, progress=False)
    assert read_shard(tmp_path / "j" / meta["shards"]["train"][0]).tolist() == \
        list(b"fine") + [256] + list(b"too") + [256]
    # A .json file holding one JSON array of rows (Alpaca's layout) is read row by row.
    (tmp_path / "array.json").write_text(json.dumps([{"text": "ab"}, {"text": "c"}]),
                                         encoding="utf-8")
    meta = nuri.tokenize([tmp_path / "array.json"], tmp_path / "arr", val_every=0,
                         progress=False)
    assert read_shard(tmp_path / "arr" / meta["shards"]["train"][0]).tolist() == \
        list(b"ab") + [256] + list(b"c") + [256]
    (tmp_path / "array.json").write_text('[{"text": "ab"}, {"body": 1}]', encoding="utf-8")
    with pytest.raises(nuri.Error, match=r"array.json\[1\]: no 'text' field"):
        nuri.tokenize([tmp_path / "array.json"], tmp_path / "arr", val_every=0, progress=False)
    with pytest.raises(nuri.Error, match="missing.txt: no such file"):
        nuri.tokenize([tmp_path / "missing.txt"], tmp_path / "o", progress=False)
    # The byte tokenizer needs no file: ids are bytes, end-of-text 256, uint16 shards.
    (tmp_path / "t.txt").write_text("héllo", encoding="utf-8")
    meta = nuri.tokenize([tmp_path / "t.txt"], tmp_path / "b", val_every=0, progress=False)
    assert read_shard(tmp_path / "b" / meta["shards"]["train"][0]).tolist() == \
        list("héllo".encode()) + [256]
    assert os.path.exists(tmp_path / "b" / "tokenize.json")


def test_fine_tuning_learns_the_responses_only(tmp_path):
    """Prompt/response rows become tokens and a loss mask; a small model imported from
    transformers, fine-tuned on them, learns the responses and not the prompts (whose long
    run of one letter it would learn at once if it were trained on it)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    rows = [{"prompt": "A" * 24 + f" spell {w}:", "response": " " + " ".join(w)}
            for w in words for _ in range(12)]
    with open(tmp_path / "ft.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    meta = nuri.tokenize([tmp_path / "ft.jsonl"], tmp_path / "ft", kind="prompt-response",
                         val_every=0, progress=False)
    assert meta["masks"]["train"] == ["train_000000.mask.npy"]
    data = nuri.read_data(tmp_path / "ft")
    assert data.has_mask
    first = len(rows[0]["prompt"].encode()) + len(rows[0]["response"].encode()) + 1
    assert data.mask()[:first].tolist() == [0] * len(rows[0]["prompt"]) + [1] * (
        first - len(rows[0]["prompt"]))
    # A chat template renders roles; only the assistant's messages are trained on.
    with open(tmp_path / "chat.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                         {"role": "assistant", "content": "yo"}]}) + "\n")
    nuri.tokenize([tmp_path / "chat.jsonl"], tmp_path / "chat", kind="chat", val_every=0,
                  chat_template={"user": "U:{content}\n", "assistant": "A:{content}\n"},
                  progress=False)
    chat = nuri.read_data(tmp_path / "chat")
    assert bytes(chat.to_numpy()[:-1].tolist()).decode() == "U:hi\nA:yo\n"
    assert chat.mask().tolist() == [0] * 5 + [1] * 6

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=257, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=128))
    hf.save_pretrained(tmp_path / "base", safe_serialization=True)
    model = nuri.import_hf(tmp_path / "base")

    tokens = data.to_numpy()[:513].astype(np.int32)
    mask = data.mask()[:513]
    x = tokens[:-1].reshape(8, 64)
    response = np.where(mask[1:] == 1, tokens[1:], -100).reshape(8, 64).astype(np.int32)
    prompt = np.where(mask[1:] == 0, tokens[1:], -100).reshape(8, 64).astype(np.int32)
    before = (model.forward(x, response), model.forward(x, prompt))
    trainer = nuri.Trainer(model, nuri.TrainConfig(steps=80, micro_batch=8, seq_len=64,
                                                   lr=3e-3, warmup_steps=5, eval_every=0),
                           data)
    for _ in range(80):
        trainer.step()
    after = (model.forward(x, response), model.forward(x, prompt))
    assert after[0] < 0.3 * before[0], (before, after)   # the responses are learned
    assert after[1] > 0.8 * before[1], (before, after)   # the prompts are not


def test_fine_tuning_rows_are_encoded_whole_after_a_bos(tmp_path):
    """With a tokenizer, a row is encoded as one text (the model reads it so): a Llama-2-style
    tokenizer, which puts "▁" before the text of every encode call, would otherwise start the
    response with a word boundary the data does not have. A token is trained on where it
    overlaps the response; --bos puts the beginning-of-text token first, never trained on, and
    generation puts it before the prompt too."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    prompt, response = "Q: the capital of France? A:", "Paris, said the answer."
    tok.train_from_iterator([prompt + response] * 20 + ["Paris answer capital"] * 5,
                            trainers.BpeTrainer(vocab_size=90,
                                                special_tokens=["<unk>", "<s>", "</s>"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    whole = tok.encode(prompt + response, add_special_tokens=False)
    apart = tok.encode(prompt, add_special_tokens=False).ids + tok.encode(
        response, add_special_tokens=False).ids
    assert apart != whole.ids  # the case this test is about
    with open(tmp_path / "ft.jsonl", "w", encoding="utf-8") as f:
        for _ in range(3):
            f.write(json.dumps({"prompt": prompt, "response": response}) + "\n")
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    proc = run_cli("tokenize", "ft.jsonl", "--out", "ft", "--tokenizer", "tokenizer.json",
                   "--kind", "prompt-response", "--val-every", "0", "--bos", "<s>", "--eot",
                   "</s>", "--quiet", cwd=tmp_path)
    trained = [1 if end > len(prompt) else 0 for _, end in whole.offsets]
    assert f"beginning-of-text {bos}" in proc.stdout
    assert f"trained on {3 * sum(trained)} train and 0 val response tokens" in proc.stdout
    data = nuri.read_data(tmp_path / "ft")
    row = [bos] + whole.ids + [eos]
    assert data.to_numpy().tolist() == row * 3
    assert data.mask().tolist() == ([0] + trained + [1]) * 3
    assert 0 < sum(trained) < len(trained)
    meta = json.loads((tmp_path / "ft" / "tokenize.json").read_text())
    assert (meta["tokenizer"]["bos"], meta["tokenizer"]["bos_text"]) == (bos, "<s>")
    with pytest.raises(nuri.ConfigError, match="bos '<bos>' is not a token of"):
        nuri.tokenize([tmp_path / "ft.jsonl"], tmp_path / "o", tmp_path / "tokenizer.json",
                      kind="prompt-response", bos="<bos>", progress=False)

    # Generation puts the bos before the prompt: the same tokens as the shard's row.
    config = nuri.ModelConfig.preset("llama-tiny")
    config.vocab_size = tok.get_vocab_size()  # every id it draws decodes to text
    model = nuri.Model(config, "cpu", 1)
    ids = row[:len(row) // 2]
    want = model.generate(ids, max_new_tokens=4, temperature=0.0)
    prefix = tok.decode(whole.ids[:len(ids) - 1])
    got = nuri.generate_text(model, prefix, max_new_tokens=4, temperature=0.0,
                             tokenizer=tmp_path / "tokenizer.json", bos="<s>")
    assert tok.encode(prefix, add_special_tokens=False).ids == whole.ids[:len(ids) - 1]
    assert got == tok.decode(want, skip_special_tokens=False) and got
    without = nuri.generate_text(model, prefix, max_new_tokens=4, temperature=0.0,
                                 tokenizer=tmp_path / "tokenizer.json")
    assert without != got  # the bos changes what the model reads
    # generate --run finds the tokenizer and its bos in the run's tokenize.json.
    (tmp_path / "run").mkdir()
    nuri.save(model, tmp_path / "run" / "model.safetensors")
    (tmp_path / "run" / "config.json").write_text(json.dumps(
        {"data": {"train": str(tmp_path / "ft")}, "sample": {}}))
    proc = run_cli("generate", "--run", "run", "--prompt", prefix, "--max-new-tokens", "4",
                   "--temperature", "0", cwd=tmp_path)
    assert proc.stdout == prefix + got + "\n"
    proc = run_cli("generate", "--run", "run", "--prompt", prefix, "--max-new-tokens", "4",
                   "--temperature", "0", "--bos", "", cwd=tmp_path)
    assert proc.stdout == prefix + without + "\n"
    # A run that names its tokenizer (data.tokenizer) still takes the shards' bos.
    (tmp_path / "run" / "config.json").write_text(json.dumps(
        {"data": {"train": str(tmp_path / "ft"), "tokenizer": str(tmp_path / "tokenizer.json")},
         "sample": {}}))
    proc = run_cli("generate", "--run", "run", "--prompt", prefix, "--max-new-tokens", "4",
                   "--temperature", "0", cwd=tmp_path)
    assert proc.stdout == prefix + got + "\n"


def test_fine_tuning_data_that_trains_nothing_is_refused(tmp_path):
    rows = tmp_path / "chat.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "human", "content": "hi"},
                                             {"role": "gpt", "content": "yo"}]}) + "\n",
                    encoding="utf-8")
    with pytest.raises(nuri.ConfigError, match="the chat template has no 'assistant' role "
                                               r"\(roles: human, gpt\)"):
        nuri.tokenize([rows], tmp_path / "o", kind="chat", val_every=0, progress=False,
                      chat_template={"human": "H:{content}\n", "gpt": "G:{content}\n"})
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n",
                    encoding="utf-8")
    with pytest.raises(nuri.Error, match="the chat data holds no token to train on"):
        nuri.tokenize([rows], tmp_path / "o", kind="chat", val_every=0, progress=False,
                      chat_template={"user": "U:{content}\n", "assistant": "A:{content}\n"})
    assert not (tmp_path / "o").exists()
    # Assistant messages that are all empty: the template's text around them ("A:" and its
    # newline) would be the only trained tokens, the role's markers and no answer.
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": ""}]}) + "\n",
                    encoding="utf-8")
    with pytest.raises(nuri.Error, match="every assistant message is empty"):
        nuri.tokenize([rows], tmp_path / "o", kind="chat", val_every=0, progress=False,
                      chat_template={"user": "U:{content}\n", "assistant": "A:{content}\n"})
    assert not (tmp_path / "o").exists()
    proc = run_cli("tokenize", "chat.jsonl", "--out", "o", "--kind", "chat", "--chat-template",
                   "template.json", cwd=tmp_path, expect=2)
    assert "--chat-template: 'template.json' is neither a file nor a JSON object" in proc.stderr


def test_packed_rows_never_cross_a_training_window(tmp_path):
    """``tokenize --pack 64`` lays prompt/response rows so that none crosses a multiple of 64
    in the stream (where the sampler cuts its windows), filling the gaps with end-of-texts that
    are not trained on: every row of at most 64 tokens lies inside one window, in order and
    whole; shards hold whole windows and the stream ends one token past its last; a row longer
    than a window starts one and is counted; the data trains with seq_len 64 and another is
    refused by name, as is packing text."""
    rng = np.random.default_rng(3)
    rows = [{"prompt": "Q" * int(rng.integers(1, 30)) + "?",
             "response": " " + "a" * int(rng.integers(1, 20))} for _ in range(200)]
    rows.insert(57, {"prompt": "L" * 80, "response": " long"})
    with open(tmp_path / "ft.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    proc = run_cli("tokenize", "ft.jsonl", "--out", "packed", "--kind", "prompt-response",
                   "--val-every", "10", "--pack", "64", "--shard-tokens", "1000", cwd=tmp_path)
    assert "packed for seq_len 64: " in proc.stdout, proc.stdout
    assert "1 row(s) longer than 64 tokens span several windows" in proc.stdout, proc.stdout
    meta = json.loads((tmp_path / "packed" / "tokenize.json").read_text())
    assert meta["pack"] == 64 and meta["cut_rows"] == {"train": 1, "val": 0}
    shards = [read_shard(tmp_path / "packed" / n) for n in meta["shards"]["train"]]
    assert len(shards) > 2 and all(len(s) == 960 for s in shards[:-1])  # 15 windows each

    data = nuri.read_data(tmp_path / "packed")
    assert data.packed_window == 64
    tokens, mask = data.to_numpy().astype(np.int64), data.mask()
    assert len(tokens) % 64 == 1 and len(tokens) == meta["tokens"]["train"]
    pad = (tokens == 256) & (mask == 0)
    assert int(pad.sum()) == meta["pad_tokens"]["train"] > 0
    ends = np.flatnonzero((tokens == 256) & (mask == 1))
    starts = [int(i) for i in np.flatnonzero(tokens != 256) if i == 0 or tokens[i - 1] == 256]
    want = [r for i, r in enumerate(rows) if i % 10]
    assert len(starts) == len(ends) == len(want)
    for s, e, r in zip(starts, ends, want):
        text = r["prompt"] + r["response"]
        assert bytes(tokens[s:e].tolist()).decode() == text
        assert mask[s:e].tolist() == [0] * len(r["prompt"]) + [1] * len(r["response"])
        if e - s + 1 <= 64:
            assert s // 64 == e // 64, (s, e)  # one window holds the whole row
        else:
            assert s % 64 == 0  # a long row starts a window
    assert nuri.read_data(tmp_path / "packed").slice(64, 640).packed_window == 64
    assert nuri.read_data(tmp_path / "packed").slice(1, 640).packed_window == 0

    model = nuri.Model(nuri.ModelConfig.preset("gpt2-tiny"), "cpu", 1)
    trainer = nuri.Trainer(model, nuri.TrainConfig(steps=2, micro_batch=2, seq_len=64,
                                                   eval_every=0), data)
    assert np.isfinite(trainer.step()["loss"])
    with pytest.raises(nuri.Error, match=r"was packed for sequences of 64 tokens \(nuri tokenize "
                                         r"--pack 64.*a sequence length of 32, not a multiple "
                                         r"of it, would cut its rows. Train with seq_len 64"):
        nuri.Trainer(model, nuri.TrainConfig(steps=2, micro_batch=2, seq_len=32), data)
    nuri.Trainer(model, nuri.TrainConfig(steps=1, micro_batch=1, seq_len=128), data)  # 2 windows
    # The validation tenth held out of packed data starts where a window does, as the train
    # part ends (one token shared: its last target), and both keep the packing.
    train, val = nuri.split_validation(data)
    windows = (len(data) - 1) // 64
    assert len(train) == (windows - windows // 10) * 64 + 1
    assert len(train) + len(val) == len(data) + 1
    assert train.packed_window == val.packed_window == 64
    proc = run_cli("train", "--model", "gpt2-tiny", "--data", "packed", "--steps", "1",
                   "--seq-len", "32", "--micro-batch", "2", "--max-new-tokens", "0", cwd=tmp_path,
                   expect=None)
    assert proc.returncode != 0 and "was packed for sequences of 64 tokens" in proc.stderr
    # A run says that the packed rows see the ones before them, until the document mask keeps
    # each to itself (its separator: the end-of-text tokenize.json records).
    for flags, said in [([], "note: the data's rows were packed (tokenize --pack), and each "
                             "attends to the rows before it in its window; --document-mask"),
                        (["--document-mask", "end"], "documents: attention stays inside "
                                                     "documents, each ending with token 256")]:
        proc = run_cli("train", "--model", "gpt2-tiny", "--data", "packed", "--steps", "1",
                       "--seq-len", "64", "--micro-batch", "2", "--max-new-tokens", "0",
                       "--eval-batches", "1", *flags, cwd=tmp_path)
        assert said in proc.stdout, proc.stdout
    (tmp_path / "t.txt").write_text("some text\n\nmore text\n")
    with pytest.raises(nuri.ConfigError, match="pack is for fine-tuning rows"):
        nuri.tokenize([tmp_path / "t.txt"], tmp_path / "o", pack=64, progress=False)
