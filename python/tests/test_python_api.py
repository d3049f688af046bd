"""The Python API: training a tiny model, save/load, data files, generation, and errors that
arrive as Python exceptions (nuri.Error with the C++ message, TypeError/ValueError for wrong
argument types) instead of crashes."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from safetensors.numpy import save_file

import nuri
from conftest import corpus_text


def tiny_trainer(preset: str = "gpt2-tiny", steps: int = 20, seed: int = 1):
    text = corpus_text(20000, seed=seed)
    data = nuri.TokenFile.from_array(np.frombuffer(text.encode(), np.uint8).astype(np.uint32),
                                     "corpus", 257)
    train, val = nuri.split_validation(data)
    tc = nuri.TrainConfig()
    tc.steps, tc.micro_batch, tc.seq_len, tc.lr, tc.warmup_steps = steps, 4, 32, 3e-3, 2
    tc.eval_batches, tc.seed = 4, seed
    model = nuri.Model(nuri.ModelConfig.preset(preset), "cpu", seed)
    return model, nuri.Trainer(model, tc, train, val), tc


def test_version_and_build_info():
    info = nuri.build_info()
    assert nuri.__version__ == info["version"] and info["version"]
    assert "cpu" in info["backends"] and info["blas"] in ("openblas", "eigen")
    assert isinstance(info["cuda"], bool) and isinstance(info["cuda_architectures"], list)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_training_a_tiny_model_from_python_lowers_the_loss(preset):
    model, trainer, tc = tiny_trainer(preset)
    val_before = trainer.evaluate()
    stats = [trainer.step() for _ in range(20)]
    val_after = trainer.evaluate()
    assert [s["step"] for s in stats] == list(range(1, 21)) and trainer.steps_done == 20
    assert not any(s["skipped"] for s in stats) and trainer.skipped_steps == 0
    assert stats[0]["loss"] == pytest.approx(np.log(257), abs=0.15)  # uniform at init
    assert np.mean([s["loss"] for s in stats[-3:]]) < stats[0]["loss"] - 1.5
    assert val_after < val_before - 1.5
    assert all(s["lr"] == pytest.approx(nuri.learning_rate(tc, s["step"] - 1))
               for s in stats)
    assert stats[-1]["peak_bytes"] > 0 and stats[-1]["tokens_per_second"] > 0


def test_same_seed_same_losses_and_data_order():
    runs = []
    for _ in range(2):
        _, trainer, _ = tiny_trainer(steps=4, seed=3)
        runs.append([trainer.step()["loss"] for _ in range(4)])
        assert trainer.data_position == (0, 4)
    assert runs[0] == runs[1]


def test_save_and_load_hold_one_tensor_at_a_time(tmp_path):
    """nuri.save writes from the model's own memory and nuri.load reads into it, a tensor at a
    time: the Python-side memory they take is a tensor's, not a model's (load held every tensor
    beside the model it filled: twice the model's memory for an 8B model; this assertion failed
    on it)."""
    import tracemalloc

    model = nuri.Model(nuri.ModelConfig("gpt2-tiny", n_layer=16), seed=1)
    params = model.parameters()
    total = sum(a.nbytes for a in params.values())
    largest = max(a.nbytes for a in params.values())
    assert total > 30 * largest  # many tensors, none large
    tracemalloc.start()
    try:
        nuri.save(model, tmp_path / "m.safetensors")
        saving = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        back = nuri.load(tmp_path / "m.safetensors")
        loading = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert saving < 4 * largest, (saving, largest, total)
    assert loading < 4 * largest, (loading, largest, total)
    for name, a in back.parameters().items():
        np.testing.assert_array_equal(a, params[name], err_msg=name)


def test_two_threads_on_one_model_take_turns():
    """generate() on one thread while another steps the trainer of the same model: the calls
    take turns (generate re-plans the activations a step computes in, which used to free them
    under it), and the steps' losses are those of steps with no thread beside them."""
    import threading

    model, trainer, _ = tiny_trainer(steps=8)
    alone = [trainer.step()["loss"] for _ in range(4)]
    model, trainer, _ = tiny_trainer(steps=8)
    stop = threading.Event()
    errors: list[BaseException] = []

    def sample() -> None:
        try:
            while not stop.is_set():
                model.generate([1, 2, 3], 4, temperature=0)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    t = threading.Thread(target=sample)
    t.start()
    try:
        beside = [trainer.step()["loss"] for _ in range(4)]
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert beside == alone


def test_a_trainer_shows_the_grad_accum_it_derives_from_the_global_batch():
    text = corpus_text(20000, seed=2)
    data = nuri.TokenFile.from_array(np.frombuffer(text.encode(), np.uint8).astype(np.uint32),
                                     "corpus", 257)
    tc = nuri.TrainConfig()
    tc.micro_batch, tc.seq_len, tc.grad_accum, tc.global_batch = 2, 32, 7, 12
    model = nuri.Model(nuri.ModelConfig.preset("gpt2-tiny"), "cpu", 1)
    trainer = nuri.Trainer(model, tc, data)
    assert trainer.config.grad_accum == 6 and trainer.config.global_batch == 12
    assert tc.grad_accum == 7  # the caller's config is not changed
    trainer.config.grad_accum = 1  # a copy: the trainer's stays
    assert trainer.config.grad_accum == 6


def test_save_then_load_gives_the_same_logits(tmp_path):
    for preset in ("gpt2-tiny", "llama-tiny"):  # tied + biases; untied, RoPE, SwiGLU, GQA
        model, trainer, _ = tiny_trainer(preset, steps=3)
        for _ in range(3):
            trainer.step()
        path = tmp_path / f"{preset}.safetensors"
        nuri.save(model, path)
        loaded = nuri.load(path)
        assert loaded.config.to_dict() == model.config.to_dict()
        assert list(loaded.parameters()) == list(model.parameters())
        tokens = np.arange(2 * 16, dtype=np.int32).reshape(2, 16) % 257
        np.testing.assert_array_equal(loaded.logits(tokens), model.logits(tokens))
        assert loaded.forward(tokens, tokens) == model.forward(tokens, tokens)


def nan_at(a, i):
    a = a.copy()
    a.reshape(-1)[i] = np.nan
    return a


def test_load_names_the_bad_tensor(tmp_path):
    model = nuri.Model(nuri.ModelConfig.preset("gpt2-tiny"))
    params = {k: np.array(v) for k, v in model.parameters().items()}
    meta = {"nuri_model_config": json.dumps(nuri.model_config_to_dict(model.config))}
    cases = {
        "missing": ({k: v for k, v in params.items() if k != "h.1.mlp.c_fc.bias"},
                    "tensor 'h.1.mlp.c_fc.bias' is missing"),
        "extra": ({**params, "lm_head.weight": params["wte.weight"]},
                  "tensor 'lm_head.weight' is not a parameter of this model"),
        "shape": ({**params, "wpe.weight": params["wpe.weight"][:64]},
                  "tensor 'wpe.weight' has shape [64, 64], the config needs [128, 64]"),
        "dtype": ({**params, "ln_f.weight": params["ln_f.weight"].astype(np.float16)},
                  "tensor 'ln_f.weight' is F16; nuri.load reads the float32 files"),
        "nan": ({**params, "h.0.attn.c_attn.weight": nan_at(params["h.0.attn.c_attn.weight"], 70)},
                "tensor 'h.0.attn.c_attn.weight' holds 1 non-finite values (the first at flat "
                "index 70: nan)"),
    }
    for name, (tensors, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=meta)
        with pytest.raises(nuri.Error, match=re.escape(message)):
            nuri.load(path)
    # bf16 (NumPy has none: refused by name before anything is read)
    import torch
    from safetensors.torch import save_file as save_torch
    save_torch({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in params.items()},
               str(tmp_path / "bf16.safetensors"), metadata=meta)
    with pytest.raises(nuri.Error, match="is BF16; nuri.load reads the float32 files"):
        nuri.load(tmp_path / "bf16.safetensors")
    save_file(params, str(tmp_path / "plain.safetensors"))
    with pytest.raises(nuri.Error, match="no 'nuri_model_config' metadata"):
        nuri.load(tmp_path / "plain.safetensors")
    assert nuri.load(tmp_path / "plain.safetensors", config=model.config) is not None
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(nuri.Error, match="not a readable safetensors file"):
        nuri.load(tmp_path / "junk.safetensors")


def test_read_data_tells_text_from_token_files(tmp_path):
    text = "héllo, tokens\n" * 20
    expected = np.frombuffer(text.encode(), np.uint8).astype(np.uint32)
    (tmp_path / "a.txt").write_text(text)
    nuri.write_token_file(str(tmp_path / "a.bin"), expected.tolist())
    np.save(tmp_path / "a.npy", expected)
    (tmp_path / "b.bin").write_text(text)  # text with a token-file name: refused unless said
    for name in ("a.txt", "a.bin", "a.npy"):
        tokens = nuri.read_data(tmp_path / name, vocab_size=257)
        np.testing.assert_array_equal(tokens.to_numpy(), expected)
    with pytest.raises(nuri.Error, match=r"b.bin: a .bin file without llm.c's header"):
        nuri.read_data(tmp_path / "b.bin")
    np.testing.assert_array_equal(nuri.read_data(tmp_path / "b.bin", format="text").to_numpy(),
                                  expected)
    expected.astype(np.uint16).tofile(tmp_path / "c.bin")  # nanoGPT's headerless train.bin
    np.testing.assert_array_equal(
        nuri.read_data(tmp_path / "c.bin", vocab_size=257, format="uint16").to_numpy(), expected)
    np.save(tmp_path / "d.npy", expected.astype(np.int64))  # any integer type
    np.testing.assert_array_equal(nuri.read_data(tmp_path / "d.npy").to_numpy(), expected)
    with pytest.raises(nuri.Error, match="cannot open data file"):
        nuri.read_data(tmp_path / "missing.txt")
    with pytest.raises(nuri.Error, match="is a directory without a tokenize.json"):
        nuri.read_data(tmp_path)
    with pytest.raises(nuri.Error, match="vocab"):
        nuri.read_data(tmp_path / "a.txt", vocab_size=100)
    train, val = nuri.split_validation(nuri.read_data(tmp_path / "a.txt"))
    assert len(val) == len(expected) // 10 and len(train) + len(val) == len(expected)
    np.testing.assert_array_equal(val.to_numpy(), expected[len(train):])


def test_a_trainer_refuses_data_beyond_the_vocabulary_before_its_first_step():
    ids = (np.arange(20000) % 200).astype(np.int32)
    ids[12345] = 5000
    model = nuri.Model(nuri.ModelConfig.preset("gpt2-tiny"), seed=1)
    config = nuri.TrainConfig(steps=10, micro_batch=2, seq_len=16)
    with pytest.raises(nuri.Error, match="token id 5000 at token index 12345 .* vocab_size 257"):
        nuri.Trainer(model, config, nuri.TokenFile.from_array(ids))


def test_generate_text_is_deterministic_for_a_seed():
    model, trainer, _ = tiny_trainer(steps=10)
    for _ in range(10):
        trainer.step()
    a = nuri.generate_text(model, "the ", max_new_tokens=30, seed=5)
    assert a == nuri.generate_text(model, "the ", max_new_tokens=30, seed=5)
    greedy = nuri.generate_text(model, "the ", max_new_tokens=30, temperature=0)
    assert greedy == nuri.generate_text(model, "the ", max_new_tokens=30, temperature=0, seed=9)
    assert 0 < len(a.encode("utf-8", "surrogateescape")) <= 30 * 3
    assert nuri.decode_bytes([104, 105, 256, 0xC3]) == "hi\n<|endoftext|>\n\ufffd"
    with pytest.raises(nuri.Error, match="prompt"):
        nuri.generate_text(model, "")


def test_generate_stops_at_the_tokens_given_and_takes_top_p():
    """stop: an id, a sequence or numpy ids, or (generate_text) a token by name; the tokens end
    with the first stop token drawn. top_p: a tiny nucleus is greedy. Bad ones are named."""
    model, trainer, _ = tiny_trainer(steps=10)
    for _ in range(10):
        trainer.step()
    prompt = list(b"the ")
    greedy = model.generate(prompt, 30, temperature=0)
    upto = greedy[:greedy.index(greedy[7]) + 1]
    never = next(i for i in range(model.config.vocab_size) if i not in greedy)
    for stop in (greedy[7], [greedy[7]], (never, greedy[7]), np.array([greedy[7]]),
                 np.int64(greedy[7])):
        assert model.generate(prompt, 30, temperature=0, stop=stop) == upto, stop
        assert trainer.generate(prompt, 30, temperature=0, stop=stop) == upto, stop
    assert model.generate(prompt, 30, temperature=1.0, seed=3, top_p=1e-6) == greedy
    sampled = [model.generate(prompt, 30, temperature=1.0, seed=s, top_p=0.5) for s in range(4)]
    assert sampled[0] == model.generate(prompt, 30, temperature=1.0, seed=0, top_p=0.5)
    assert sampled != [model.generate(prompt, 30, temperature=1.0, seed=s) for s in range(4)]
    # generate_text: the byte tokenizer's end-of-text token by name ends the text there.
    text = nuri.generate_text(model, "the ", 30, temperature=0, stop=greedy[7])
    assert text == nuri.decode_bytes(upto)
    eot = nuri.ByteTokenizer.EOT
    assert nuri.generate_text(model, "the ", 30, temperature=0, stop="<|endoftext|>") == \
        nuri.generate_text(model, "the ", 30, temperature=0, stop=eot)
    for bad, match in (("x", "stop takes token ids"), (True, "stop takes token ids"),
                       ([1.5], "stop takes token ids"), (2**40, "is not a token id"),
                       (-1, "stop token -1 is not a token id"),
                       (model.config.vocab_size, "is not a token id of the model")):
        with pytest.raises(nuri.Error, match=match):
            model.generate(prompt, 5, stop=bad)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(nuri.Error, match="top_p"):
            model.generate(prompt, 5, top_p=bad)
    with pytest.raises(nuri.ConfigError, match="stop token '<eos>' is not a token of"):
        nuri.generate_text(model, "the ", 5, stop="<eos>")


def test_cpp_errors_arrive_as_nuri_error_with_the_message():
    assert issubclass(nuri.Error, RuntimeError)
    model = nuri.Model(nuri.ModelConfig.preset("gpt2-tiny"))
    tokens = np.zeros((2, 8), np.int32)
    tokens[1, 3] = 300
    with pytest.raises(nuri.Error) as info:
        model.forward(tokens, np.zeros((2, 8), np.int32))
    assert isinstance(info.value, RuntimeError)
    assert "id 300 at batch 1, position 3 is outside the vocabulary [0, 257)" in str(info.value)
    with pytest.raises(nuri.Error, match="n_kv_head .3. must divide n_head .4."):
        cfg = nuri.ModelConfig.preset("gpt2-tiny")
        cfg.n_kv_head = 3
        nuri.Model(cfg)
    with pytest.raises(nuri.Error, match="no parameter named 'nope'"):
        model.parameter("nope")
    with pytest.raises(nuri.Error, match="fewer than one global batch"):
        tc = nuri.TrainConfig()
        tc.seq_len = 32
        nuri.Trainer(model, tc, nuri.TokenFile.from_array(list(range(40))))


def test_wrong_argument_types_raise_python_errors():
    model = nuri.Model(nuri.ModelConfig.preset("gpt2-tiny"))
    cfg = nuri.ModelConfig()
    calls = [
        (TypeError, lambda: nuri.Model(3)),  # a ModelConfig or a preset's name
        (TypeError, lambda: model.forward("abc", 1)),
        (TypeError, lambda: model.logits(np.zeros((2, 8), np.float32))),
        (TypeError, lambda: nuri.TokenFile.from_array("abc")),
        (ValueError, lambda: nuri.TokenFile.from_array([1, -1])),
        (TypeError, lambda: nuri.Trainer(model, "config", None)),
        (ValueError, lambda: setattr(cfg, "n_layer", "many")),  # a ConfigError naming it
        (ValueError, lambda: setattr(cfg, "norm", "batchnorm")),
        (TypeError, lambda: nuri.learning_rate("config", 3)),
    ]
    for error, call in calls:
        with pytest.raises(error):
            call()


def test_the_package_docstring_example_runs(tmp_path, monkeypatch):
    (tmp_path / "corpus.txt").write_text(corpus_text(20000))
    monkeypatch.chdir(tmp_path)
    lines = [line[4:] for line in nuri.__doc__.splitlines() if line.startswith("    ")]
    scope: dict = {}
    exec("\n".join(lines), scope)
    assert scope["stats"]["step"] == 50 and scope["stats"]["loss"] < 3.5
    assert nuri.load("model.safetensors").config.to_dict() == scope["cfg"].to_dict()


def test_run_from_python_writes_the_run(tmp_path):
    (tmp_path / "corpus.txt").write_text(corpus_text(20000))
    cfg = nuri.config_from_dict({
        "model": "gpt2-tiny", "data": {"train": str(tmp_path / "corpus.txt")},
        "out": str(tmp_path / "run"),
        "train": {"steps": 4, "micro_batch": 2, "seq_len": 16, "eval_every": 2,
                  "eval_batches": 1}, "sample": {"max_new_tokens": 0}})
    out = io.StringIO()
    result = nuri.run(cfg, stream=out)
    assert result["status"] == 0 and result["steps_done"] == 4 and result["stop_reason"] == ""
    assert result["val_loss"] < np.log(257) and result["peak_bytes"] > 0
    assert "step     4/4 | loss" in out.getvalue() and "step     2 | val loss" in out.getvalue()
    assert not (tmp_path / "run" / "sample.txt").exists()  # max_new_tokens = 0
    assert nuri.load_config(tmp_path / "run" / "config.json") == cfg
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[-1]["loss"] == pytest.approx(result["final_loss"], rel=1e-7)
    assert metrics[-1]["val_loss"] == pytest.approx(result["val_loss"], rel=1e-7)
    assert nuri.load(tmp_path / "run" / "model.safetensors").config == cfg.model


def test_ctrl_c_while_a_line_is_written_stops_at_the_steps_end_with_a_checkpoint(tmp_path):
    """Ctrl-C lands in Python code most often while a progress line is written: the
    KeyboardInterrupt raised there is the interrupt the run stops for at the step's end
    (checkpointed, status 130), not an exception out of the run on this rank alone."""
    class CtrlC(io.StringIO):
        raised = False

        def write(self, s):
            n = super().write(s)
            if not self.raised and "step     2/6" in s:
                self.raised = True
                raise KeyboardInterrupt
            return n

    cfg = nuri.apply_overrides(nuri.RunConfig(), [
        "model=gpt2-tiny", "train.steps=6", "train.micro_batch=2", "train.seq_len=32",
        "train.eval_every=0", "train.eval_batches=1", "sample.max_new_tokens=0", "log_every=1",
        f"checkpoint.dir={tmp_path / 'ck'}"])
    out = CtrlC()
    result = nuri.run(cfg, stream=out, plot=False)
    assert out.raised
    assert (result["status"], result["steps_done"], result["stop_reason"]) == (
        130, 2, "interrupted"), out.getvalue()
    assert result["checkpoint"].endswith("step-00000002")
    assert "interrupted at step 2/6" in out.getvalue() and "checkpointed" in out.getvalue()


def test_a_runs_output_hook_calls_nuri_while_another_thread_takes_turns(tmp_path):
    """nuri.run's output stream is a hook inside the run's call: its write() calling nuri (the
    run's thread takes the lock it holds again, and the GIL) does not deadlock beside another
    thread whose generate() calls wait for the lock with the GIL let go (the run holds the lock
    throughout, so they run before and after it); the run's loss is the run's alone, and every
    hook's and thread's result is the one each call gives alone."""
    import threading

    tokens = np.arange(16, dtype=np.int32).reshape(1, 16)
    probe = nuri.Model(nuri.ModelConfig.preset("gpt2-tiny"), "cpu", 5)
    want_logits = np.asarray(probe.logits(tokens))
    sampler = nuri.Model(nuri.ModelConfig.preset("gpt2-tiny"), "cpu", 6)
    want_tokens = sampler.generate([1, 2, 3], 4, temperature=0)

    class Hook(io.StringIO):
        calls = 0

        def write(self, s):
            got = np.asarray(probe.logits(tokens))
            np.testing.assert_array_equal(got, want_logits)
            self.calls += 1
            return super().write(s)

    def config(out):
        return nuri.apply_overrides(nuri.RunConfig(), [
            "model=gpt2-tiny", "train.steps=4", "train.micro_batch=2", "train.seq_len=32",
            "train.eval_every=0", "train.eval_batches=1", "sample.max_new_tokens=0",
            "log_every=1", f"out={tmp_path / out}"])

    alone = nuri.run(config("alone"), stream=io.StringIO(), plot=False)
    stop, sampled, errors = threading.Event(), [], []

    def sample():
        try:
            while not stop.is_set():
                sampled.append(sampler.generate([1, 2, 3], 4, temperature=0))
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    t = threading.Thread(target=sample)
    t.start()
    hook = Hook()
    try:
        beside = nuri.run(config("beside"), stream=hook, plot=False)
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert beside["status"] == alone["status"] == 0 and hook.calls > 4, hook.getvalue()
    assert beside["final_loss"] == alone["final_loss"]
    assert sampled and all(s == want_tokens for s in sampled)


def test_copy_weights_from_a_cpu_model_gives_its_logits():
    """How nuri.load and nuri.import_hf put a model read on the CPU on another backend: every
    weight copied (here CPU to CPU; on a GPU the same call fills the device's masters and its
    bf16 copy); another config or a source that is not the whole model refused."""
    cfg = nuri.ModelConfig.preset("llama-tiny")
    src = nuri.Model(cfg, "cpu", 3)
    dst = nuri.Model(cfg, "cpu", init="zeros")
    dst.copy_weights_from(src)
    tokens = np.arange(32, dtype=np.int32).reshape(2, 16) % cfg.vocab_size
    np.testing.assert_array_equal(np.asarray(dst.logits(tokens)), np.asarray(src.logits(tokens)))
    one = src.parameter("model.embed_tokens.weight")  # one tensor: a view, as parameters() gives
    np.testing.assert_array_equal(one, src.parameters()["model.embed_tokens.weight"])
    one[0, 0] = 7.0
    assert src.parameters()["model.embed_tokens.weight"][0, 0] == 7.0
    other = nuri.ModelConfig.preset("llama-tiny")
    other.n_layer = 1
    with pytest.raises(nuri.Error, match="copy_weights_from: the models' configs differ"):
        nuri.Model(other, "cpu", init="zeros").copy_weights_from(src)
    with pytest.raises(nuri.Error, match="both models must hold all of their weights"):
        nuri.Model(cfg, "cpu", 1, pipeline_stage=(0, 1)).copy_weights_from(src)


def test_config_equality_and_checkpoint_reads_from_threads(tmp_path):
    """Configs compare with anything (None is another value, not a TypeError); a checkpoint
    reader's tensors read from several threads at once (it opens its files on first use, under
    a lock) equal one thread's reads."""
    from concurrent.futures import ThreadPoolExecutor

    assert nuri.TrainConfig() == nuri.TrainConfig() and nuri.TrainConfig() != None  # noqa: E711
    _, trainer, _ = tiny_trainer(steps=2)
    trainer.step()
    ck = trainer.save_checkpoint(str(tmp_path / "ck"))
    reader = nuri._C.CheckpointReader(ck)
    names = reader.names()
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(reader.read, names))
    fresh = nuri._C.CheckpointReader(ck)
    assert len(names) > 8
    for name, a in zip(names, got):
        np.testing.assert_array_equal(a, fresh.read(name), err_msg=name)


def test_an_output_stream_that_fails_stops_the_run_then_raises(tmp_path):
    """Another exception from the output stream (a closed pipe) stops the run at the step's end
    as an interrupt does, every rank together and checkpointed, and is raised afterwards."""
    class Broken(io.StringIO):
        def write(self, s):
            if "step     2/6" in s:
                raise BrokenPipeError("the reader went away")
            return super().write(s)

    cfg = nuri.apply_overrides(nuri.RunConfig(), [
        "model=gpt2-tiny", "train.steps=6", "train.micro_batch=2", "train.seq_len=32",
        "train.eval_every=0", "train.eval_batches=1", "sample.max_new_tokens=0", "log_every=1",
        f"checkpoint.dir={tmp_path / 'ck'}"])
    with pytest.raises(BrokenPipeError, match="the reader went away"):
        nuri.run(cfg, stream=Broken(), plot=False)
    assert sorted(p.name for p in (tmp_path / "ck").glob("step-*")) == ["step-00000002"]
