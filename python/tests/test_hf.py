"""Hugging Face interop and checkpoints from Python (issue #10).

Export a nuri model as a Hugging Face directory, read it with the ``safetensors`` library and
check the layouts (GPT-2's Conv1D weights [in, out] with the ``transformer.`` prefix, the tied
head not stored, unpadded vocabularies), load it with ``transformers.from_pretrained`` and
compare its logits with nuri's, and import it back bit for bit. test_hf_models.py checks
checkpoints that ``transformers`` wrote, for every family nuri reads.
"""
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM

import nuri

LOGITS_TOL = 1e-5  # f32 on both sides, of the largest |logit|


def randomized(preset, seed=3):
    """A model with every parameter random (biases and norm weights too, so a wrong layout of
    any of them shows)."""
    model = nuri.Model(nuri.ModelConfig.preset(preset), seed=1)
    rng = np.random.default_rng(seed)
    for name, a in model.parameters().items():
        a[...] = rng.normal(0, 0.08, a.shape).astype(np.float32)
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight", "norm.weight",
                          "layernorm.weight")):
            a += 1
        if name in ("wte.weight", "model.embed_tokens.weight", "lm_head.weight"):
            a[model.config.vocab_size:] = 0  # nuri's padding rows stay zero
    return model


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_export_matches_the_hugging_face_layout_and_imports_back(preset, tmp_path):
    model = randomized(preset)
    nuri.export_hf(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    tensors = load_file(str(tmp_path / "model.safetensors"))  # the safetensors library reads it
    V = model.config.vocab_size
    if preset == "gpt2-tiny":
        assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"]
        assert "lm_head.weight" not in tensors  # tied, as transformers saves GPT-2
        C = cfg["n_embd"]
        assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (C, 3 * C)  # Conv1D [in, out]
        assert tensors["transformer.h.1.mlp.c_proj.weight"].shape == (cfg["n_inner"], C)
        assert tensors["transformer.wte.weight"].shape == (V, C)  # unpadded
    else:
        assert cfg["model_type"] == "llama" and cfg["num_key_value_heads"] == 2
        assert tensors["lm_head.weight"].shape == (V, cfg["hidden_size"])
        assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (
            2 * cfg["hidden_size"] // cfg["num_attention_heads"], cfg["hidden_size"])
    assert nuri.model_config_from_hf(tmp_path).to_dict() == model.config.to_dict()

    tokens = np.random.default_rng(0).integers(0, V, size=(2, 24)).astype(np.int32)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.from_numpy(tokens).long()).logits.numpy()
    ours = np.asarray(model.logits(tokens))[..., :V]
    err = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
    assert err < LOGITS_TOL, f"{preset}: logits differ by {err:.3g} of the largest"

    back = nuri.import_hf(tmp_path)
    for name, a in model.parameters().items():
        np.testing.assert_array_equal(back.parameters()[name], a, err_msg=name)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_packed_documents_are_each_what_hugging_face_computes_alone(preset, tmp_path):
    """With a document separator, nuri's logits over a packed window are transformers' logits of
    each document run by itself (positions from 0: GPT-2's position table is read from each
    document's start). Without it the later documents differ."""
    model = randomized(preset)
    nuri.export_hf(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    V = model.config.vocab_size
    sep = V - 1  # ends each document
    rng = np.random.default_rng(5)
    docs = [np.append(rng.integers(0, V - 1, size=n), sep).astype(np.int32) for n in (6, 9, 5)]
    packed = np.concatenate(docs)[None, :]
    plain = np.asarray(model.logits(packed))[0, :, :V]
    model.document_separator = sep
    ours = np.asarray(model.logits(packed))[0, :, :V]
    at = 0
    for i, doc in enumerate(docs):
        with torch.no_grad():
            theirs = hf(torch.from_numpy(doc[None, :]).long()).logits.numpy()[0]
        scale = np.max(np.abs(theirs))
        err = np.max(np.abs(ours[at:at + len(doc)] - theirs)) / scale
        assert err < LOGITS_TOL, f"{preset}: document {i} differs by {err:.3g} of the largest"
        if i > 0:
            assert np.max(np.abs(plain[at:at + len(doc)] - theirs)) / scale > 1e-2
        at += len(doc)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_greedy_generation_with_the_cache_is_what_hugging_face_generates(preset, tmp_path):
    """Model.generate with its key/value cache (each new token's row alone) continues a prompt
    as transformers' greedy generate() does (its own cache), and as nuri's whole forwards do."""
    model = randomized(preset)
    nuri.export_hf(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    prompt = [5, 80, 17, 200, 3]
    ours = model.generate(prompt, max_new_tokens=40, temperature=0)
    assert ours == model.generate(prompt, max_new_tokens=40, temperature=0, cache=False)
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False,
                             min_new_tokens=40, pad_token_id=0)[0, len(prompt):].tolist()
    assert ours == theirs
    # Stopping at a token, as transformers stops at its eos_token_ids: the tokens up to and
    # including the first of them drawn (here the 12th token and one never drawn).
    never = next(i for i in range(model.config.vocab_size) if i not in ours)
    stop = [never, ours[11]]
    stopped = model.generate(prompt, max_new_tokens=40, temperature=0, stop=stop)
    assert stopped == ours[:ours.index(ours[11]) + 1]
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False,
                             eos_token_id=stop, pad_token_id=0)[0, len(prompt):].tolist()
    assert stopped == theirs


def test_import_accepts_keys_without_the_transformer_prefix_and_old_buffers(tmp_path):
    model = randomized("gpt2-tiny")
    nuri.export_hf(model, tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    bare = {k[len("transformer."):]: v for k, v in tensors.items()}
    bare["h.0.attn.bias"] = np.tril(np.ones((1, 1, 8, 8), dtype=np.float32))  # older checkpoints
    # (older transformers kept the mask as uint8, or bool, which nuri reads no tensor of)
    bare["h.1.attn.bias"] = np.tril(np.ones((1, 1, 8, 8), dtype=np.uint8))
    bare["h.1.attn.masked_bias"] = np.ones((1,), dtype=np.bool_)
    save_file(bare, str(tmp_path / "model.safetensors"))
    back = nuri.import_hf(tmp_path)
    for name, a in model.parameters().items():
        np.testing.assert_array_equal(back.parameters()[name], a, err_msg=name)
    # Where such a tensor is a weight, it is named with its dtype.
    bare["h.0.ln_1.weight"] = np.ones(64, dtype=np.uint8)
    save_file(bare, str(tmp_path / "model.safetensors"))
    with pytest.raises(nuri.Error, match=r"tensor 'h.0.ln_1.weight' is U8, which nuri does not "
                                         r"read \(F32, BF16, F16, I32, I64\)"):
        nuri.import_hf(tmp_path)


def test_import_names_missing_extra_and_misshapen_tensors(tmp_path):
    model = randomized("gpt2-tiny")
    nuri.export_hf(model, tmp_path)
    path = str(tmp_path / "model.safetensors")
    good = load_file(path)

    def rewrite(edit):
        t = dict(good)
        edit(t)
        save_file(t, path)

    rewrite(lambda t: t.pop("transformer.h.1.ln_2.bias"))
    with pytest.raises(nuri.Error, match=r"tensor 'transformer.h.1.ln_2.bias' is missing"):
        nuri.import_hf(tmp_path)
    rewrite(lambda t: t.update({"transformer.h.7.mlp.c_fc.weight": np.zeros((2, 2), np.float32)}))
    with pytest.raises(nuri.Error, match=r"'transformer.h.7.mlp.c_fc.weight' is not a parameter"):
        nuri.import_hf(tmp_path)
    rewrite(lambda t: t.update({"transformer.h.1.mlp.c_proj.bias": np.full(64, np.inf, np.float32)}))
    with pytest.raises(nuri.Error, match=r"'transformer.h.1.mlp.c_proj.bias' holds 64 non-finite"):
        nuri.import_hf(tmp_path)
    rewrite(lambda t: t.update({"transformer.ln_f.weight": np.zeros(3, np.float32)}))
    with pytest.raises(nuri.Error, match=r"'transformer.ln_f.weight' has shape \[3\]"):
        nuri.import_hf(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(nuri.Error, match="truncated or not a safetensors file"):
        nuri.import_hf(tmp_path)


def test_trainer_checkpoints_resume_exactly_from_python(tmp_path):
    """Trainer.save_checkpoint / load_checkpoint from Python (the C++ checkpoints, issue #10):
    a run resumed by a new model and trainer takes the same steps as the run never stopped."""
    text = np.frombuffer(b"the quick brown fox jumps over the lazy dog. " * 200, dtype=np.uint8)
    data = nuri.TokenFile.from_array(text.astype(np.uint32))
    cfg = nuri.TrainConfig()
    cfg.steps, cfg.micro_batch, cfg.seq_len, cfg.warmup_steps, cfg.eval_every = 8, 2, 32, 2, 0

    def trainer(seed):
        model = nuri.Model(nuri.ModelConfig.preset("gpt2-tiny"), seed=seed)
        return model, nuri.Trainer(model, cfg, data)

    _, straight = trainer(1)
    want = [straight.step()["loss"] for _ in range(8)]
    _, first = trainer(1)
    for _ in range(3):
        first.step()
    assert first.save_checkpoint(str(tmp_path)).endswith("step-00000003")
    _, second = trainer(2)
    assert second.load_checkpoint(str(tmp_path)).endswith("step-00000003")
    assert second.steps_done == 3
    assert [second.step()["loss"] for _ in range(5)] == want[3:]
    # Other training data is refused, unless the caller says so.
    other = nuri.TokenFile.from_array(text[::-1].astype(np.uint32))
    model = nuri.Model(nuri.ModelConfig.preset("gpt2-tiny"), seed=4)
    elsewhere = nuri.Trainer(model, cfg, other)
    with pytest.raises(nuri.Error, match="saved training on other data: 9000 tokens"):
        elsewhere.load_checkpoint(str(tmp_path))
    assert elsewhere.steps_done == 0
    assert elsewhere.load_checkpoint(str(tmp_path), check_data=False).endswith("step-00000003")
    assert elsewhere.steps_done == 3
    (tmp_path / "step-00000003" / "manifest.json").unlink()
    with pytest.raises(nuri.Error, match="no committed checkpoint"):
        trainer(3)[1].load_checkpoint(str(tmp_path))


def test_a_checkpoint_that_fails_to_load_changes_nothing(tmp_path):
    """A load that fails (here: AdamW's moments missing, which the old code found only after
    it had replaced the weights) leaves the trainer's weights, moments and step as they were:
    every tensor to be read is checked for before anything is replaced."""
    import hashlib
    from safetensors import safe_open
    text = np.frombuffer(b"the quick brown fox jumps over the lazy dog. " * 200, dtype=np.uint8)
    data = nuri.TokenFile.from_array(text.astype(np.uint32))
    cfg = nuri.TrainConfig()
    cfg.steps, cfg.micro_batch, cfg.seq_len = 8, 2, 32
    saved = nuri.Trainer(nuri.Model(nuri.ModelConfig.preset("gpt2-tiny"), seed=1), cfg, data)
    saved.step()
    step_dir = tmp_path / "step-00000001"
    assert saved.save_checkpoint(str(tmp_path)).endswith(step_dir.name)
    # The same checkpoint without its moments, its manifest naming the rewritten file.
    rank_file = step_dir / "rank-00000-of-00001.safetensors"
    with safe_open(str(rank_file), "np") as f:
        metadata = f.metadata()
    tensors = {k: v for k, v in load_file(str(rank_file)).items() if not k.startswith("adamw.")}
    save_file(tensors, str(rank_file), metadata=metadata)
    manifest = json.loads((step_dir / "manifest.json").read_text())
    blob = rank_file.read_bytes()
    manifest["files"][rank_file.name] = {"bytes": len(blob),
                                         "sha256": hashlib.sha256(blob).hexdigest()}
    del manifest["ranges"]["adamw.m"], manifest["ranges"]["adamw.v"]
    del manifest["manifest_sha256"]  # edited on purpose: its own checksum goes
    (step_dir / "manifest.json").write_text(json.dumps(manifest))

    model = nuri.Model(nuri.ModelConfig.preset("gpt2-tiny"), seed=2)
    other = nuri.Trainer(model, cfg, data)
    other.step()
    other.step()
    before = {k: v.copy() for k, v in model.parameters().items()}
    with pytest.raises(nuri.Error, match="AdamW state 'adamw.m/.*' is missing"):
        other.load_checkpoint(str(tmp_path))
    assert other.steps_done == 2
    for name, a in model.parameters().items():
        np.testing.assert_array_equal(a, before[name], err_msg=name)
    # and it trains on as it would have: the moments are its own still
    model2 = nuri.Model(nuri.ModelConfig.preset("gpt2-tiny"), seed=2)
    twin = nuri.Trainer(model2, cfg, data)
    twin.step()
    twin.step()
    assert other.step()["loss"] == twin.step()["loss"]
    assert other.step()["loss"] == twin.step()["loss"]
