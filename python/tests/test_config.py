"""Run configs: presets, tables, unknown keys and wrong types named, overrides, TOML/JSON files,
and Hugging Face config.json files of the GPT-2 and Llama families."""

from __future__ import annotations

import json

import pytest

import nuri
from nuri.config import MODEL_FIELDS, TRAIN_FIELDS

TINY = {"model": "gpt2-tiny", "train": {"steps": 5, "seq_len": 32}}


def error_of(d) -> str:
    with pytest.raises(nuri.ConfigError) as info:
        nuri.config_from_dict(d)
    return str(info.value)


def test_schema_matches_the_extension_fields():
    assert set(MODEL_FIELDS) == set(nuri.ModelConfig().to_dict())
    assert set(TRAIN_FIELDS) == set(nuri.TrainConfig().to_dict())


def test_preset_name_and_table_give_the_preset_with_overrides():
    cfg = nuri.config_from_dict(TINY)
    assert cfg.model.to_dict() == nuri.ModelConfig.preset("gpt2-tiny").to_dict()
    assert cfg.preset == "gpt2-tiny"
    assert (cfg.train.steps, cfg.train.seq_len) == (5, 32)
    assert cfg.train.micro_batch == nuri.TrainConfig().micro_batch  # untouched default
    cfg = nuri.config_from_dict({"model": {"preset": "llama-tiny", "n_layer": 3, "bias": True},
                                 "train": {"seq_len": 64}})
    assert (cfg.model.n_layer, cfg.model.bias, cfg.model.mlp) == (3, True, "swiglu")
    assert cfg.model.n_kv_head == nuri.ModelConfig.preset("llama-tiny").n_kv_head


def test_defaults_without_a_model_are_gpt2_124m():
    cfg = nuri.config_from_dict({})
    assert cfg.model.num_params() == 124_439_808
    assert (cfg.backend, cfg.out, cfg.log_every, cfg.data.train) == ("cpu", None, 10, None)


def test_device_is_another_name_for_backend():
    assert nuri.config_from_dict({"device": "cpu"}).backend == "cpu"
    assert nuri.config_from_dict({"device": "cpu", "backend": "cpu"}).backend == "cpu"
    assert "device ('cuda') and backend ('cpu') name the same setting" in error_of(
        {"device": "cuda", "backend": "cpu"})
    assert "device: 'tpu' is not in this build of nuri; backends: cpu" in error_of({"device": "tpu"})
    assert "device: expected a string, got 3" in error_of({"device": 3})


@pytest.mark.parametrize("d, message", [
    ({"colour": 1}, "colour: unknown key; known keys: backend, data, device, log_every"),
    ({"model": {"preset": "gpt2-tiny", "colour": 1}},
     "model.colour: unknown key; known keys: bias"),
    ({"train": {"learning_rate": 1}}, "train.learning_rate: unknown key; known keys: beta1"),
    ({"data": {"test": "x"}}, "data.test: unknown key; known keys: train, val"),
    ({"sample": {"n": 3}}, "sample.n: unknown key"),
])
def test_unknown_keys_are_named(d, message):
    assert message in error_of(d)


@pytest.mark.parametrize("d, message", [
    ({"train": {"lr": "fast"}}, "train.lr: expected a number, got 'fast'"),
    ({"train": {"steps": True}}, "train.steps: expected an integer, got true"),
    ({"train": {"steps": 2.5}}, "train.steps: expected an integer, got 2.5"),
    ({"train": {"seed": -1}}, "train.seed: expected a non-negative integer"),
    ({"train": {"lr": False}}, "train.lr: expected a number, got false"),
    ({"model": {"preset": "gpt2-tiny", "bias": 1}}, "model.bias: expected true or false, got 1"),
    ({"model": {"preset": "gpt2-tiny", "d_model": "64"}}, "model.d_model: expected an integer"),
    ({"model": 3}, "model: expected a table, got 3"),
    ({"train": [1]}, "train: expected a table, got a list"),
    ({"data": {"train": 5}}, "data.train: expected a string, got 5"),
    ({"sample": {"temperature": "hot"}}, "sample.temperature: expected a number, got 'hot'"),
    ({"log_every": "often"}, "log_every: expected an integer"),
])
def test_wrong_types_are_named_with_the_expected_type(d, message):
    assert message in error_of(d)


@pytest.mark.parametrize("field, value, allowed", [
    ("norm", "batchnorm", "'layernorm', 'rmsnorm'"), ("position", "alibi", "'learned', 'rope'"),
    ("mlp", "relu", "'gelu', 'swiglu'")])
def test_bad_enum_strings_list_the_allowed_values(field, value, allowed):
    msg = error_of({"model": {"preset": "gpt2-tiny", field: value}})
    assert msg == f"model.{field}: expected one of {allowed}, got '{value}'"
    assert "'skip', 'stop'" in error_of({"train": {"on_nonfinite": "retry"}})


def test_ints_are_accepted_for_numbers_and_integral_floats_for_ints():
    cfg = nuri.config_from_dict({"model": "gpt2-tiny",
                                 "train": {"lr": 1, "steps": 3.0, "seq_len": 32}})
    assert cfg.train.lr == 1.0 and cfg.train.steps == 3


def test_cpp_validation_arrives_as_a_config_error():
    msg = error_of({"model": {"preset": "gpt2-tiny", "n_head": 5}})
    assert msg.startswith("model: n_head (5) must divide d_model (64)")
    with pytest.raises(nuri.Error):  # a ConfigError is a nuri.Error and a ValueError
        nuri.config_from_dict({"train": {"steps": 0}})
    with pytest.raises(ValueError, match="train: steps"):
        nuri.config_from_dict({"train": {"steps": 0}})
    assert "train.seq_len (256) exceeds model.max_seq_len (128)" in error_of({"model": "gpt2-tiny"})
    assert "unknown preset 'gpt2-huge'; presets: gpt2-tiny" in error_of({"model": "gpt2-huge"})


def test_overrides_parse_values_and_name_bad_keys():
    base = nuri.config_from_dict(TINY)
    cfg = nuri.apply_overrides(base, [
        "train.lr=1e-3", "model.n_layer=4", "train.on_nonfinite=stop", "sample.prompt=1984",
        "data.train=some/file.txt", 'sample.prompt="Once upon"', "log_every=2", "backend=cpu"])
    assert abs(cfg.train.lr - 1e-3) < 1e-9 and cfg.model.n_layer == 4
    assert cfg.train.on_nonfinite == "stop" and cfg.sample.prompt == "Once upon"
    assert cfg.data.train == "some/file.txt" and cfg.log_every == 2
    assert base.model.n_layer == 2  # the input is not modified
    reset = nuri.apply_overrides(cfg, ["model=llama-tiny", "model.n_layer=3"])
    assert reset.model.mlp == "swiglu" and reset.model.n_layer == 3 and reset.preset == "llama-tiny"
    for item, message in [("train.lr=fast", "train.lr: expected a number, got 'fast'"),
                          ("model.colour=red", "model.colour: unknown key; known keys: bias"),
                          ("optim.lr=1", "optim.lr: unknown section 'optim'"),
                          ("lr=1", "lr: not a value to override"),
                          ("train.lr", "override 'train.lr': expected KEY=VALUE"),
                          ("model.norm=batch", "model.norm: expected one of 'layernorm'")]:
        with pytest.raises(nuri.ConfigError) as info:
            nuri.apply_overrides(base, [item])
        assert message in str(info.value)


def test_toml_and_json_files_round_trip(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('model = "llama-tiny"\nout = "runs/x"\n[train]\nsteps = 7\nseq_len = 64\n'
                    'lr = 2e-3\n[data]\ntrain = "a.txt"\nval = "b.bin"\n[sample]\ntop_k = 5\n')
    cfg = nuri.load_config(toml)
    assert (cfg.train.steps, cfg.data.val, cfg.sample.top_k, cfg.out) == (7, "b.bin", 5, "runs/x")
    d = cfg.to_dict()
    assert d["train"]["lr"] == 0.002  # the shortest decimal of the float32, not 0.0020000000949
    assert set(d["model"]) == {"preset", *MODEL_FIELDS} and set(d["train"]) == set(TRAIN_FIELDS)
    js = tmp_path / "run.json"
    js.write_text(json.dumps(d))
    again = nuri.load_config(js)
    assert again == cfg and again.to_dict() == d


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = \n")
    with pytest.raises(nuri.ConfigError, match="bad.toml: not valid TOML"):
        nuri.load_config(bad)
    typed = tmp_path / "typed.toml"
    typed.write_text("[train]\nlr = 'fast'\n")
    with pytest.raises(nuri.ConfigError, match="typed.toml: train.lr: expected a number"):
        nuri.load_config(typed)
    with pytest.raises(nuri.ConfigError, match="cannot read config"):
        nuri.load_config(tmp_path / "missing.toml")
    other = tmp_path / "run.yaml"
    other.write_text("model: gpt2-tiny\n")
    with pytest.raises(nuri.ConfigError, match="must end in .toml or .json"):
        nuri.load_config(other)


# Hugging Face config.json files as published (openai-community/gpt2, TinyLlama-1.1B).
GPT2_HF = {
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1, "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256,
    "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024,
    "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1,
    "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
    "summary_type": "cls_index", "summary_use_proj": True, "vocab_size": 50257,
}
TINYLLAMA_HF = {
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 5632, "max_position_embeddings": 2048, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 22, "num_key_value_heads": 4,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.31.0.dev0", "use_cache": True,
    "vocab_size": 32000,
}


def test_hf_gpt2_config_gives_gpt2_124m(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(GPT2_HF))
    for source in (GPT2_HF, tmp_path / "config.json", tmp_path):  # dict, file, directory
        cfg = nuri.model_config_from_hf(source)
        assert cfg.to_dict() == nuri.ModelConfig.preset("gpt2-124M").to_dict()
    assert cfg.num_params() == 124_439_808
    medium = nuri.model_config_from_hf({**GPT2_HF, "n_embd": 1024, "n_layer": 24, "n_head": 16,
                                        "n_inner": 2048, "layer_norm_epsilon": 1e-6})
    assert (medium.d_model, medium.n_layer, medium.n_head, medium.n_kv_head) == (1024, 24, 16, 16)
    assert medium.d_ff == 2048 and abs(medium.norm_eps - 1e-6) < 1e-12
    assert (medium.norm, medium.position, medium.mlp, medium.bias) == (
        "layernorm", "learned", "gelu", True)


def test_hf_llama_config_gives_tinyllama():
    cfg = nuri.model_config_from_hf(TINYLLAMA_HF)
    assert cfg.to_dict() == nuri.ModelConfig.preset("llama-1B").to_dict()
    assert cfg.num_params() == 1_100_048_384
    assert (cfg.n_kv_head, cfg.d_ff, cfg.norm, cfg.position, cfg.mlp) == (
        4, 5632, "rmsnorm", "rope", "swiglu")
    assert (cfg.bias, cfg.tied_embeddings) == (False, False)
    small = nuri.model_config_from_hf({**TINYLLAMA_HF, "hidden_size": 256, "num_hidden_layers": 2,
                                       "num_attention_heads": 8, "num_key_value_heads": None,
                                       "rope_theta": 500000.0, "attention_bias": True,
                                       "tie_word_embeddings": True, "intermediate_size": 688})
    assert (small.d_model, small.n_head, small.n_kv_head, small.d_ff) == (256, 8, 8, 688)
    assert (small.rope_theta, small.bias, small.tied_embeddings) == (500000.0, True, True)


@pytest.mark.parametrize("hf, message", [
    ({"model_type": "bert"}, "model_type 'bert' is not supported; nuri reads 'gpt2' and 'llama'"),
    ({}, "model_type None is not supported"),
    ({**GPT2_HF, "activation_function": "relu"}, "activation_function 'relu' is not supported"),
    ({**TINYLLAMA_HF, "rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({**TINYLLAMA_HF, "hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({**TINYLLAMA_HF, "num_key_value_heads": 5}, "n_kv_head (5) must divide n_head (32)"),
    ({**GPT2_HF, "n_layer": "12"}, "n_layer: expected an integer, got '12'"),
])
def test_hf_configs_nuri_cannot_run_are_rejected_clearly(hf, message):
    with pytest.raises(nuri.ConfigError) as info:
        nuri.model_config_from_hf(hf)
    assert message in str(info.value)
