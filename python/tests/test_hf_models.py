"""Real model families against the ``transformers`` library itself (issue #25): small random
Llama 3.x (llama3 and linear RoPE scaling, a head_dim that is not hidden / heads), Qwen2 (q/k/v
biases, tied embeddings), Mistral (sliding window), Phi-3 (fused q/k/v and gate/up weights) and
GPT-2 models written by
``save_pretrained`` (sharded with an index, and in bf16) give nuri the same logits; nuri's export
loads with ``from_pretrained`` and gives nuri's logits; greedy ``generate`` agrees token for
token; and configs nuri does not implement are refused by name.

Logits are compared in f32 on both sides: within 1e-5 of the largest |logit|.
"""
import json
import re

import numpy as np
import pytest
import torch
from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, MistralConfig, MistralForCausalLM, Phi3Config,
                          Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM)

import nuri
from conftest import run_cli

REL = 1e-5
V = 97  # not a multiple of 64: nuri's padded rows are exercised

COMMON = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              rms_norm_eps=1e-5, rope_theta=10000.0)


def hf_model(kind):
    """A small random model of one family, every parameter random (biases and norm weights too,
    so a wrong layout of any of them shows)."""
    torch.manual_seed({"llama3": 1, "llama-linear": 2, "qwen2": 3, "mistral": 4, "gpt2": 5,
                       "phi3": 6}[kind])
    if kind == "llama3":  # Llama 3.1's scaling; q and k 32 wide per head, hidden / heads = 16
        model = LlamaForCausalLM(LlamaConfig(
            **COMMON, head_dim=32, rope_scaling={
                "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 32}))
    elif kind == "llama-linear":
        model = LlamaForCausalLM(LlamaConfig(**COMMON, rope_scaling={"type": "linear",
                                                                     "factor": 4.0},
                                             tie_word_embeddings=True))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**COMMON, tie_word_embeddings=True))
    elif kind == "mistral":
        model = MistralForCausalLM(MistralConfig(**COMMON, sliding_window=64, head_dim=32))
    elif kind == "phi3":  # fused qkv_proj and gate_up_proj; a window as Phi-3-mini-4k's 2047
        model = Phi3ForCausalLM(Phi3Config(**COMMON, sliding_window=63, pad_token_id=0,
                                           eos_token_id=None))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4,
                                           n_positions=128))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.08)
            if name.endswith(("norm.weight", "ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p += 1
    return model.eval()


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.from_numpy(tokens).long()).logits.float().numpy()


def nuri_logits(model, tokens):
    return np.asarray(model.logits(tokens))[..., :V]


def assert_close(ours, theirs, what):
    err = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
    assert err < REL, f"{what}: logits differ by {err:.3g} of the largest"


TOKENS = np.random.default_rng(0).integers(0, V, size=(2, 40)).astype(np.int32)
KINDS = ["llama3", "llama-linear", "qwen2", "mistral", "phi3", "gpt2"]


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_checkpoints_import_export_and_generate_alike(kind, tmp_path):
    theirs = hf_model(kind)
    # Sharded (with model.safetensors.index.json) for two of them, one file for the others.
    shard = "60KB" if kind in ("llama3", "qwen2") else "100MB"
    theirs.save_pretrained(tmp_path / "hf", safe_serialization=True, max_shard_size=shard)
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists() == (shard == "60KB")
    ours = nuri.import_hf(tmp_path / "hf")
    c = ours.config
    if kind == "llama3":
        assert (c.rope_scaling, c.rope_factor, c.rope_original_max_len, c.head_dim,
                c.head_size()) == ("llama3", 8.0, 32, 32, 32)
    elif kind == "llama-linear":
        assert (c.rope_scaling, c.rope_factor, c.tied_embeddings) == ("linear", 4.0, True)
    elif kind == "qwen2":
        assert c.qkv_bias and not c.bias and c.tied_embeddings and c.sliding_window == 0
    elif kind == "mistral":
        assert c.sliding_window == 64 and c.head_size() == 32
    elif kind == "phi3":
        assert c.sliding_window == 63 and not c.bias and not c.tied_embeddings
    assert c.num_params() == sum(p.numel() for p in theirs.parameters())  # tied ones once
    assert_close(nuri_logits(ours, TOKENS), hf_logits(theirs, TOKENS), f"{kind} import")

    # nuri's export, sharded, read by from_pretrained as the same architecture.
    nuri.export_hf(ours, tmp_path / "out", max_shard_bytes=50_000)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out", torch_dtype=torch.float32)
    # Phi-3 goes out in Mistral's layout (its q/k/v and gate/up apart, its window kept).
    assert type(back) is (MistralForCausalLM if kind == "phi3" else type(theirs))
    assert_close(nuri_logits(ours, TOKENS), hf_logits(back.eval(), TOKENS), f"{kind} export")

    # Greedy generation, token for token.
    prompt = [int(t) for t in TOKENS[0, :7]]
    with torch.no_grad():
        want = theirs.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                               pad_token_id=0, attention_mask=torch.ones(1, 7, dtype=torch.long))
    got = ours.generate(prompt, max_new_tokens=12, temperature=0.0)
    assert got == want[0, 7:].tolist()


def test_bf16_checkpoints_are_read_exactly(tmp_path):
    theirs = hf_model("llama3").to(torch.bfloat16)
    theirs.save_pretrained(tmp_path, safe_serialization=True)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    ours = nuri.import_hf(tmp_path)
    # Every weight is the bf16 value, widened exactly to nuri's f32 master weights.
    state = {k: v.float().numpy() for k, v in theirs.state_dict().items()}
    for name, a in ours.parameters().items():
        want = state[name]
        np.testing.assert_array_equal(a[: want.shape[0]], want, err_msg=name)
    # transformers' own reading of the file into f32 (theirs.float() would keep RoPE's
    # frequency buffer rounded to bf16 by the cast above).
    widened = AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    assert_close(nuri_logits(ours, TOKENS), hf_logits(widened, TOKENS), "bf16 import")


def test_configs_nuri_does_not_implement_are_refused_by_name(tmp_path):
    base = hf_model("llama3").config.to_dict()

    def refused(change, match):
        with pytest.raises(nuri.ConfigError, match=match):
            nuri.model_config_from_hf({**base, **change})

    refused({"attn_logit_softcapping": 50.0}, r"key 'attn_logit_softcapping' is not implemented")
    # The same key set to null says the feature is off: read.
    assert nuri.model_config_from_hf({**base, "attn_logit_softcapping": None}) == \
        nuri.model_config_from_hf(base)
    refused({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
            r"rope_scaling type 'yarn' is not supported")
    refused({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
            r"llama3 needs low_freq_factor, high_freq_factor, original_max_position_embeddings")
    refused({"rope_scaling": {"rope_type": "linear", "factor": 2.0, "beta": 1}},
            r"rope_scaling key 'beta' \(linear\) is not supported")
    refused({"hidden_act": "gelu"}, r"hidden_act 'gelu' is not supported")
    refused({"attention_dropout": 0.1}, r"attention_dropout 0.1 is not supported")
    refused({"model_type": "gemma"}, r"model_type 'gemma' is not supported")
    refused({"attention_bias": True}, r"attention_bias \(True\) and mlp_bias \(False\) differ")
    # Phi-3's 128k models (longrope scaling) and a dropout nuri does not train with.
    base = hf_model("phi3").config.to_dict()
    refused({"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 8,
                              "long_factor": [2.0] * 8}},
            r"rope_scaling type 'longrope' is not supported")
    refused({"resid_pdrop": 0.1}, r"resid_pdrop 0.1 is not supported; nuri trains without dropout")


def test_a_sequence_longer_than_the_sliding_window_is_refused(tmp_path):
    theirs = hf_model("mistral")
    theirs.config.sliding_window = 16
    theirs.save_pretrained(tmp_path, safe_serialization=True)
    model = nuri.import_hf(tmp_path)
    assert model.config.sliding_window == 16
    with pytest.raises(nuri.Error, match=r"sequence length 40 is longer than the model's "
                                         r"sliding window \(16\).*seq_len <= 16"):
        model.logits(TOKENS)
    assert_close(nuri_logits(model, TOKENS[:, :16]), hf_logits(theirs, TOKENS[:, :16]),
                 "within the window")
    data = nuri.TokenFile.from_array(np.arange(1000) % V, vocab_size=V)
    with pytest.raises(nuri.Error, match="longer than the model's sliding window"):
        nuri.Trainer(model, nuri.TrainConfig(steps=1, micro_batch=1, seq_len=32), data)


def test_shard_indexes_that_do_not_match_their_files_are_refused(tmp_path):
    hf_model("qwen2").save_pretrained(tmp_path, safe_serialization=True, max_shard_size="60KB")
    path = tmp_path / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    key = next(iter(index["weight_map"]))
    other = sorted(set(index["weight_map"].values()) - {index["weight_map"][key]})[0]
    path.write_text(json.dumps({**index, "weight_map": {**index["weight_map"], key: other}}))
    with pytest.raises(nuri.Error, match=f"tensor '{key}' is listed in {other}, which does not "
                                         "hold it"):
        nuri.import_hf(tmp_path)
    path.write_text(json.dumps({**index, "weight_map": {**index["weight_map"],
                                                         key: "model-09-of-09.safetensors"}}))
    with pytest.raises(nuri.Error, match="model-09-of-09.safetensors is missing"):
        nuri.import_hf(tmp_path)
    path.write_text("{")
    with pytest.raises(nuri.Error, match="not a safetensors index"):
        nuri.import_hf(tmp_path)


def test_released_configs_read_as_transformers_reads_them(tmp_path):
    """Keys as the released configs write them: a null sliding window (Mistral v0.2 and later)
    is none, a left-out kv head count is the config class's default, keys with the value nuri
    computes with (Qwen2.5's use_mrope false, Phi-3's attention_bias false and auto_map, GPT-2's
    n_special) are read, and rope_scaling's "type" wins over "rope_type": each as the
    transformers config class reads it."""
    import transformers

    def both(cls, d):
        return nuri.model_config_from_hf(d), cls(**{k: v for k, v in d.items()
                                                    if k != "model_type"})

    small = {**COMMON, "num_attention_heads": 32}  # the kv heads the classes default to divide it
    del small["num_key_value_heads"]
    ours, theirs = both(transformers.MistralConfig, {"model_type": "mistral", **small,
                                                     "sliding_window": None})
    assert theirs.sliding_window is None and ours.sliding_window == 0
    assert ours.n_kv_head == theirs.num_key_value_heads == 8
    ours, theirs = both(transformers.MistralConfig, {"model_type": "mistral", **small,
                                                     "num_key_value_heads": None})
    assert ours.n_kv_head == theirs.num_key_value_heads == 32
    assert ours.sliding_window == theirs.sliding_window == 4096
    # Qwen2 windows the layers from max_window_layers on (default 28; these have 2): none here,
    # every one with 0, the second with 1; a window on any layer bounds nuri's sequences.
    for full, window in ((None, 0), (0, 4096), (1, 4096), (2, 0)):
        d = {"model_type": "qwen2", **small, "use_sliding_window": True, "use_mrope": False}
        ours, theirs = both(transformers.Qwen2Config,
                            d if full is None else {**d, "max_window_layers": full})
        assert theirs.sliding_window == 4096 and ours.sliding_window == window, full
        windowed = [i >= theirs.max_window_layers for i in range(theirs.num_hidden_layers)]
        assert bool(ours.sliding_window) == any(windowed), full
    assert ours.n_kv_head == theirs.num_key_value_heads == 32
    with pytest.raises(nuri.ConfigError, match="max_window_layers '28' is not an integer"):
        nuri.model_config_from_hf({**d, "max_window_layers": "28"})
    with pytest.raises(nuri.ConfigError, match="qwen2 config key 'use_mrope' is True; nuri "
                                               "implements only False"):
        nuri.model_config_from_hf({"model_type": "qwen2", **small, "use_mrope": True})
    ours = nuri.model_config_from_hf({"model_type": "phi3", **COMMON, "attention_bias": False,
                                      "auto_map": {"AutoConfig": "configuration_phi3.Phi3Config"}})
    assert ours.n_kv_head == 2 and ours.sliding_window == 0
    with pytest.raises(nuri.ConfigError, match="'attention_bias' is True"):
        nuri.model_config_from_hf({"model_type": "phi3", **COMMON, "attention_bias": True})
    gpt2 = {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": V,
            "n_special": 0, "predict_special_tokens": True}
    assert nuri.model_config_from_hf(gpt2).d_model == 64
    ours, theirs = both(transformers.LlamaConfig, {
        "model_type": "llama", **COMMON,
        "rope_scaling": {"type": "linear", "rope_type": "llama3", "factor": 2.0}})
    assert ours.rope_scaling == theirs.rope_scaling["rope_type"] == "linear"


def test_one_model_file_wins_over_an_index_beside_it(tmp_path):
    theirs = hf_model("qwen2")
    theirs.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="60KB")
    index = (tmp_path / "model.safetensors.index.json").read_text()
    for f in tmp_path.glob("model-*.safetensors"):
        f.unlink()
    theirs.save_pretrained(tmp_path, safe_serialization=True)  # one model.safetensors
    (tmp_path / "model.safetensors.index.json").write_text(index)  # a stale index beside it
    back = AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    assert_close(nuri_logits(nuri.import_hf(tmp_path), TOKENS), hf_logits(back, TOKENS),
                 "model.safetensors beside an index")


def test_a_hugging_face_model_is_imported_and_trained_from_the_command_line(tmp_path):
    """`python -m nuri import` writes a transformers model as one nuri model file (the same
    logits), and `python -m nuri train --init` starts a run from it, the model taken from the
    file: its first validation loss is transformers' own loss on the same validation windows
    (sample i of the held-out last 10 %: tokens [i·T, i·T + T], the next token each target)."""
    theirs = hf_model("llama3")
    theirs.save_pretrained(tmp_path / "hf", safe_serialization=True)
    run_cli("import", "hf", "--out", "llama.safetensors", cwd=tmp_path)
    assert_close(nuri_logits(nuri.load(tmp_path / "llama.safetensors"), TOKENS),
                 hf_logits(theirs, TOKENS), "the imported file")
    ids = np.random.default_rng(1).integers(0, V, size=20000).astype(np.uint16)
    np.save(tmp_path / "ids.npy", ids)
    B, T, batches = 2, 32, 3
    proc = run_cli("train", "--init", "llama.safetensors", "--data", "ids.npy", "--steps", "2",
                   "--micro-batch", str(B), "--seq-len", str(T), "--eval-every", "0",
                   "--eval-batches", str(batches), "--max-new-tokens", "0", cwd=tmp_path)
    assert "model: that of llama.safetensors" in proc.stdout, proc.stdout
    assert "initialized from llama.safetensors" in proc.stdout, proc.stdout
    first = float(re.search(r"^step +0 \| val loss ([0-9.]+)", proc.stdout, re.M).group(1))
    val = ids[len(ids) - len(ids) // 10:].astype(np.int64)
    windows = np.stack([val[i * T:i * T + T + 1] for i in range(B * batches)])
    with torch.no_grad():
        logits = theirs(torch.from_numpy(windows[:, :-1])).logits.float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V),
                                                 torch.from_numpy(windows[:, 1:]).reshape(-1))
    assert abs(first - loss.item()) < 2e-4, (first, loss.item())


def test_import_and_init_name_what_is_wrong(tmp_path):
    hf_model("qwen2").save_pretrained(tmp_path / "hf", safe_serialization=True)
    (tmp_path / "out").mkdir()
    assert "--out out is a directory" in run_cli("import", "hf", "--out", "out", cwd=tmp_path,
                                                 expect=2).stderr
    # A directory that is not there: said before the model is read, not after.
    assert "import: --out nowhere/m.safetensors: the directory " in run_cli(
        "import", "hf", "--out", "nowhere/m.safetensors", cwd=tmp_path, expect=2).stderr
    assert "nuri.import_hf(hf/config.json): a file" in run_cli(
        "import", "hf/config.json", "--out", "m.safetensors", cwd=tmp_path, expect=1).stderr
    assert not (tmp_path / "m.safetensors").exists()
    # Into the model's own directory: refused before anything is written (it would replace
    # the Hugging Face weights).
    weights = (tmp_path / "hf" / "model.safetensors").read_bytes()
    assert ("--out hf/model.safetensors is a file of the model directory hf, which it would "
            "replace; write the nuri model file elsewhere") in run_cli(
        "import", "hf", "--out", "hf/model.safetensors", cwd=tmp_path, expect=2).stderr
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() == weights
    # The Hugging Face weights file itself: not a nuri model file, and said so.
    np.save(tmp_path / "ids.npy", np.arange(20000, dtype=np.uint16) % V)
    err = run_cli("train", "--init", "hf/model.safetensors", "--steps", "1", "--vocab-size", "97",
                  "--data", "ids.npy", "--max-new-tokens", "0", cwd=tmp_path, expect=2).stderr
    assert "it records no nuri model config: a Hugging Face weights file?" in err, err


def test_token_ids_go_across_and_generate_stops_at_the_end_of_text(tmp_path):
    """A model imported from Hugging Face and exported again keeps the ids generate() stops at
    (hf_token_ids reads them; generation_config.json's win over config.json's), so the export
    ends its text where the original does; ids outside the vocabulary are refused before
    anything is written."""
    theirs = hf_model("qwen2")
    prompt = [int(t) for t in TOKENS[0, :7]]
    ones = torch.ones(1, 7, dtype=torch.long)
    with torch.no_grad():
        free = theirs.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                               pad_token_id=0, eos_token_id=None, attention_mask=ones)[0, 7:]
    stop = int(free[4])  # a token greedy decoding reaches at the fifth step
    first = free.tolist().index(stop)
    theirs.config.bos_token_id, theirs.config.eos_token_id = 1, 2
    theirs.generation_config.eos_token_id = [V - 1, stop]
    theirs.generation_config.pad_token_id = 0
    theirs.save_pretrained(tmp_path / "src", safe_serialization=True)
    ids = nuri.hf_token_ids(tmp_path / "src")
    assert ids == {"bos_token_id": 1, "eos_token_id": [V - 1, stop], "pad_token_id": 0}
    assert nuri.hf_token_ids(tmp_path / "src" / "config.json") == ids
    ours = nuri.import_hf(tmp_path / "src")

    nuri.export_hf(ours, tmp_path / "plain")  # no ids given: null, generate runs on
    plain = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert [plain[k] for k in ids] == [None] * 3
    nuri.export_hf(ours, tmp_path / "out", token_ids=ids)
    assert {k: json.loads((tmp_path / "out" / "config.json").read_text())[k] for k in ids} == ids
    for where, length in (("plain", 12), ("out", first + 1)):
        back = AutoModelForCausalLM.from_pretrained(tmp_path / where, torch_dtype=torch.float32)
        with torch.no_grad():
            got = back.eval().generate(torch.tensor([prompt]), max_new_tokens=12,
                                       do_sample=False, pad_token_id=0, attention_mask=ones)
        assert got[0, 7:].tolist() == free[:length].tolist(), where

    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    for bad, match in (({"eos_token_id": V + 64}, rf"eos_token_id {V + 64} is not a token id "
                                                  rf"of the model \(an integer in \[0, {V}\)\)"),
                       ({"eos_token_id": [2, -1]}, r"eos_token_id \[2, -1\] is not a token id"),
                       ({"pad_token_id": 1.5}, r"pad_token_id 1.5 is not a token id"),
                       ({"eos": 2}, r"'eos' is not a token id key")):
        with pytest.raises(nuri.ConfigError, match=match):
            nuri.export_hf(ours, tmp_path / "out", token_ids=bad)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before
    with pytest.raises(nuri.ConfigError, match=r"eos_token_id \[\] names no token"):
        nuri.export_hf(ours, tmp_path / "out", token_ids={"eos_token_id": []})
    with pytest.raises(nuri.ConfigError, match="neither a Hugging Face model directory"):
        nuri.hf_token_ids(tmp_path)
    # Malformed sources are named: a string id in generation_config.json, a bool end-of-text.
    (tmp_path / "src" / "generation_config.json").write_text('{"eos_token_id": "2"}')
    with pytest.raises(nuri.ConfigError, match=r"generation_config.json: eos_token_id '2' is "
                                               r"not a token id"):
        nuri.hf_token_ids(tmp_path / "src")
    (tmp_path / "tokenize.json").write_text('{"tokenizer": {"eot": true}}')
    with pytest.raises(nuri.ConfigError, match="tokenize.json: eos_token_id True is not a token"):
        nuri.hf_token_ids(tmp_path / "tokenize.json")

    # A Llama export without ids: null, not LlamaConfig's default eos_token_id 2, which would
    # stop generate() at token 2 of whatever tokenizer the model has.
    hf_model("llama3").save_pretrained(tmp_path / "llama", safe_serialization=True)
    nuri.export_hf(nuri.import_hf(tmp_path / "llama"), tmp_path / "llama_out")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "llama_out")
    assert back.config.eos_token_id is None and back.generation_config.eos_token_id is None
