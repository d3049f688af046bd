"""Hugging Face interop and checkpoints from Python (issue #10).

Export a nuri model as a Hugging Face directory, read it with the ``safetensors`` library, run it
through a forward written against Hugging Face's layouts (GPT-2's Conv1D weights [in, out] with
the ``transformer.`` prefix; Llama's q/k/v/o and gate/up/down projections with the rotate-half
rotary embedding of ``transformers``), compare its logits with nuri's, and import it back bit
for bit.

``transformers`` itself is not installable next to Debian's torch 1.13 (its current releases need
torch 2), so the layouts are checked against this hand-written forward instead; the bound is the
parity test's (f32 nuri against float64: 2e-6 of the largest logit).
"""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file, save_file

import nuri

LOGITS_TOL = 2e-6


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


def hf_forward(cfg, t, tokens):
    """Logits [B, T, V] from Hugging Face-layout tensors t (float64), as transformers computes."""
    t = {k: torch.from_numpy(v).double() for k, v in t.items()}
    B, T = tokens.shape
    mask = torch.ones(T, T, dtype=torch.bool).tril()

    def attend(q, k, v, H, KV, D):
        q, k, v = q.view(B, T, H, D), k.view(B, T, KV, D), v.view(B, T, KV, D)
        return q, k, v

    def softmax_attn(q, k, v, H, KV, D):
        k, v = k.repeat_interleave(H // KV, dim=2), v.repeat_interleave(H // KV, dim=2)
        s = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D)
        s = s.masked_fill(~mask, float("-inf"))
        return torch.einsum("bhts,bshd->bthd", s.softmax(-1), v).reshape(B, T, H * D)

    if cfg["model_type"] == "gpt2":
        C, H = cfg["n_embd"], cfg["n_head"]
        D, eps = C // H, cfg["layer_norm_epsilon"]

        def conv1d(x, name):  # transformers' Conv1D: x @ W + b, W [in, out]
            return x @ t[name + ".weight"] + t[name + ".bias"]

        def ln(x, name):
            return F.layer_norm(x, (C,), t[name + ".weight"], t[name + ".bias"], eps)

        wte = t["transformer.wte.weight"]
        x = wte[tokens] + t["transformer.wpe.weight"][:T]
        for l in range(cfg["n_layer"]):
            p = f"transformer.h.{l}."
            q, k, v = conv1d(ln(x, p + "ln_1"), p + "attn.c_attn").split(C, -1)
            q, k, v = attend(q, k, v, H, H, D)
            x = x + conv1d(softmax_attn(q, k, v, H, H, D), p + "attn.c_proj")
            h = F.gelu(conv1d(ln(x, p + "ln_2"), p + "mlp.c_fc"), approximate="tanh")
            x = x + conv1d(h, p + "mlp.c_proj")
        return ln(x, "transformer.ln_f") @ wte.T
    # Llama
    C, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D, eps = C // H, cfg["rms_norm_eps"]

    def rms(x, name):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * t[name + ".weight"]

    def lin(x, name):
        return x @ t[name + ".weight"].T

    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    freqs = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos()[None, :, None, :], emb.sin()[None, :, None, :]

    def rotate_half(x):
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return torch.cat([-x2, x1], -1)

    x = t["model.embed_tokens.weight"][tokens]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        a = rms(x, p + "input_layernorm")
        q, k, v = attend(lin(a, p + "self_attn.q_proj"), lin(a, p + "self_attn.k_proj"),
                         lin(a, p + "self_attn.v_proj"), H, KV, D)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        x = x + lin(softmax_attn(q, k, v, H, KV, D), p + "self_attn.o_proj")
        m = rms(x, p + "post_attention_layernorm")
        x = x + lin(F.silu(lin(m, p + "mlp.gate_proj")) * lin(m, p + "mlp.up_proj"),
                    p + "mlp.down_proj")
    head = t["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else t["lm_head.weight"]
    return rms(x, "model.norm") @ head.T


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
    theirs = hf_forward(cfg, tensors, torch.from_numpy(tokens).long()).numpy()
    ours = np.asarray(model.logits(tokens))[..., :V]
    err = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
    assert err < LOGITS_TOL, f"{preset}: logits differ by {err:.3g} of the largest"

    back = nuri.import_hf(tmp_path)
    for name, a in model.parameters().items():
        np.testing.assert_array_equal(back.parameters()[name], a, err_msg=name)


def test_import_accepts_keys_without_the_transformer_prefix_and_old_buffers(tmp_path):
    model = randomized("gpt2-tiny")
    nuri.export_hf(model, tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    bare = {k[len("transformer."):]: v for k, v in tensors.items()}
    bare["h.0.attn.bias"] = np.tril(np.ones((1, 1, 8, 8), dtype=np.float32))  # older checkpoints
    save_file(bare, str(tmp_path / "model.safetensors"))
    back = nuri.import_hf(tmp_path)
    for name, a in model.parameters().items():
        np.testing.assert_array_equal(back.parameters()[name], a, err_msg=name)


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
    rewrite(lambda t: t.update({"transformer.ln_f.weight": np.zeros(3, np.float32)}))
    with pytest.raises(nuri.Error, match=r"'transformer.ln_f.weight' has shape \[3\]"):
        nuri.import_hf(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(nuri.Error, match="not a readable safetensors file"):
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
    (tmp_path / "step-00000003" / "manifest.json").unlink()
    with pytest.raises(nuri.Error, match="no committed checkpoint"):
        trainer(3)[1].load_checkpoint(str(tmp_path))
