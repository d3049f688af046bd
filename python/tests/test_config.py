"""Run configs: the one schema behind config files, overrides, flags and the Python classes;
presets, tables, unknown keys and wrong types named, TOML/JSON files, every setting round-tripped
through C++ and Python, and Hugging Face config.json files of the GPT-2 and Llama families."""

from __future__ import annotations

import json

import pytest

import nuri

TINY = {"model": "gpt2-tiny", "train": {"steps": 5, "seq_len": 32}}


def error_of(d) -> str:
    with pytest.raises(nuri.ConfigError) as info:
        nuri.config_from_dict(d)
    return str(info.value)


def test_the_classes_properties_are_the_schema():
    ref = nuri.reference()
    by_section = {}
    for s in ref:
        by_section.setdefault(s["section"], []).append(s["key"])
    classes = {"model": nuri.ModelConfig, "train": nuri.TrainConfig,
               "parallel": nuri.ParallelConfig, "checkpoint": nuri.CheckpointConfig,
               "data": nuri.DataConfig, "sample": nuri.SampleConfig}
    assert set(by_section) == {"", *classes}
    for section, cls in classes.items():
        keys = [k for k in by_section[section] if not (section == "model" and k == "preset")]
        assert list(cls().to_dict()) == keys, section
    assert set(by_section[""]) == {"backend", "out", "log_every", "quiet", "expect_val_below",
                                   "layout", "profile"}
    # Every flag is unique and names its key (dashes for underscores) unless the schema says.
    flags = [s["flag"] for s in ref]
    assert len(set(flags)) == len(flags)
    renamed = {s["path"]: s["flag"] for s in ref if s["flag"] != "--" + s["key"].replace("_", "-")}
    assert renamed == {"model.preset": "--model", "checkpoint.dir": "--ckpt-dir",
                       "data.train": "--data"}


def test_keyword_construction_and_defaults():
    tc = nuri.TrainConfig(steps=7, lr=1e-3)
    assert (tc.steps, tc.lr, tc.micro_batch) == (7, 0.001, nuri.TrainConfig().micro_batch)
    assert tc == nuri.TrainConfig(lr=1e-3, steps=7) and tc != nuri.TrainConfig()
    with pytest.raises(nuri.ConfigError, match="train.stepz: unknown key"):
        nuri.TrainConfig(stepz=3)
    with pytest.raises(nuri.ConfigError, match=r"train.lr: expected a number > 0, got 'fast'"):
        tc.lr = "fast"
    with pytest.raises(nuri.ConfigError, match=r"parallel.zero_stage: expected an integer in "
                                                r"\[0, 3\], got 4"):
        nuri.ParallelConfig(zero_stage=4)
    cfg = nuri.RunConfig()
    cfg.train.lr = 5e-3  # sections change in place
    assert cfg.train.lr == 0.005 and cfg.preset == "demo" and cfg.backend == "cpu"


def test_preset_name_and_table_give_the_preset_with_overrides():
    cfg = nuri.config_from_dict(TINY)
    assert cfg.model.to_dict() == nuri.ModelConfig.preset("gpt2-tiny").to_dict()
    assert cfg.preset == "gpt2-tiny"
    assert (cfg.train.steps, cfg.train.seq_len) == (5, 32)
    assert cfg.train.micro_batch == nuri.TrainConfig().micro_batch  # untouched default
    cfg = nuri.config_from_dict({"model": {"n_layer": 3, "bias": True, "preset": "llama-tiny"},
                                 "train": {"seq_len": 64}})
    assert (cfg.model.n_layer, cfg.model.bias, cfg.model.mlp) == (3, True, "swiglu")
    assert cfg.model.n_kv_head == nuri.ModelConfig.preset("llama-tiny").n_kv_head


def test_n_head_alone_keeps_full_attention_full():
    # Every front end: n_kv_head follows n_head given alone on a model with full attention (it
    # once stayed the preset's 12, making GPT-2 with 24 heads grouped-query unasked); a
    # grouped-query preset keeps its kv heads; n_kv_head given is what it says.
    assert nuri.ModelConfig("gpt2-124M", n_head=24).n_kv_head == 24
    assert nuri.ModelConfig("gpt2-124M", n_head=24, n_kv_head=6).n_kv_head == 6
    # n_kv_head given first, as the preset's own count: still what it says.
    assert nuri.ModelConfig("gpt2-124M", n_kv_head=12, n_head=24).n_kv_head == 12
    assert nuri.model_config_from_dict(
        {"preset": "gpt2-124M", "n_kv_head": 12, "n_head": 24}).n_kv_head == 12
    assert nuri.config_from_dict(
        {"model": {"preset": "gpt2-124M", "n_kv_head": 12, "n_head": 24}}).model.n_kv_head == 12
    assert nuri.ModelConfig("llama-1B", n_head=16).n_kv_head == 4
    assert nuri.model_config_from_dict({"preset": "gpt2-124M", "n_head": 16}).n_kv_head == 16
    assert nuri.model_config_from_dict({"n_head": 16}).n_kv_head == 16
    assert nuri.model_config_from_dict({"preset": "llama-1B", "n_head": 16}).n_kv_head == 4
    cfg = nuri.config_from_dict({"model": {"preset": "gpt2-124M", "n_head": 16}})
    assert (cfg.model.n_head, cfg.model.n_kv_head) == (16, 16)
    cfg.model.n_head = 32  # an attribute too
    assert cfg.model.n_kv_head == 32
    gqa = nuri.config_from_dict({"model": {"n_head": 8, "n_kv_head": 2}})
    gqa.model.n_head = 16  # grouped-query stays
    assert gqa.model.n_kv_head == 2
    with pytest.raises(nuri.Error,
                       match=r"n_kv_head \(4\) must divide n_head \(2\): set n_kv_head"):
        nuri.ModelConfig("llama-1B", n_head=2)


def test_defaults_without_a_model_are_the_demo():
    cfg = nuri.config_from_dict({})
    assert cfg.preset == "demo" and cfg.model.to_dict() == nuri.ModelConfig.preset("demo").to_dict()
    assert cfg.model.num_params() == 3_290_880  # nuri-train's demo (README: 3.3M parameters)
    assert (cfg.backend, cfg.out, cfg.log_every, cfg.data.train) == ("cpu", "", 10, "")
    assert cfg == nuri.RunConfig()


def test_device_is_another_name_for_backend():
    assert nuri.config_from_dict({"device": "cpu"}).backend == "cpu"
    assert nuri.config_from_dict({"device": "cpu", "backend": "cpu"}).backend == "cpu"
    assert "device ('cuda') and backend ('cpu') name the same setting" in error_of(
        {"device": "cuda", "backend": "cpu"})
    assert "backend: 'tpu' is not in this build of nuri; backends: cpu" in error_of(
        {"device": "tpu"})
    assert "device: expected a string, got 3" in error_of({"device": 3})
    assert "backend: 'cuda:x' is not in this build" in error_of({"backend": "cuda:x"})


@pytest.mark.parametrize("d, message", [
    ({"colour": 1}, "colour: unknown key; known keys: backend, checkpoint, data"),
    ({"model": {"preset": "gpt2-tiny", "colour": 1}},
     "model.colour: unknown key; known keys: bias"),
    ({"train": {"learning_rate": 1}}, "train.learning_rate: unknown key; known keys: beta1"),
    ({"data": {"test": "x"}}, "data.test: unknown key; known keys: format, tokenizer, train, val"),
    ({"sample": {"n": 3}}, "sample.n: unknown key"),
    ({"parallel": {"zero": 1}}, "parallel.zero: unknown key; known keys: bucket_mb, "
                                "keep_gathered, overlap, pp, pp_timeline, sequence_parallel, tp, zero_stage"),
    ({"checkpoint": {"every": 1}}, "checkpoint.every: unknown key; known keys: async_save, check_data, dir"),
])
def test_unknown_keys_are_named(d, message):
    assert message in error_of(d)


@pytest.mark.parametrize("d, message", [
    ({"train": {"lr": "fast"}}, "train.lr: expected a number > 0, got 'fast'"),
    ({"data": {"format": "raw"}},
     "data.format: 'raw' is not one of auto, text, llmc, npy, uint16, uint32"),
    ({"train": {"steps": True}}, "train.steps: expected an integer >= 1, got true"),
    ({"train": {"steps": 2.5}}, "train.steps: expected an integer >= 1, got 2.5"),
    ({"train": {"steps": 0}}, "train.steps: expected an integer >= 1, got 0"),
    ({"train": {"seed": -1}}, "train.seed: expected an integer >= 0, got -1"),
    ({"train": {"lr": False}}, "train.lr: expected a number > 0, got false"),
    ({"train": {"beta2": 1}}, "train.beta2: expected a number in [0, 1), got 1"),
    ({"model": {"preset": "gpt2-tiny", "bias": 1}}, "model.bias: expected true or false, got 1"),
    ({"model": {"preset": "gpt2-tiny", "d_model": "64"}}, "model.d_model: expected an integer"),
    ({"model": 3}, "model: expected a table, got 3"),
    ({"train": [1]}, "train: expected a table, got a list"),
    ({"data": {"train": 5}}, "data.train: expected a string, got 5"),
    ({"sample": {"temperature": "hot"}}, "sample.temperature: expected a number >= 0, got 'hot'"),
    ({"log_every": "often"}, "log_every: expected an integer >= 1"),
    ({"checkpoint": {"keep": 0}}, "checkpoint.keep: expected an integer in [1, 1073741824], got 0"),
    ({"checkpoint": {"signals": "TERM,KILL"}}, "checkpoint.signals: signal 'KILL' is not one"),
    ({"parallel": {"bucket_mb": 0}},
     "parallel.bucket_mb: expected a number in (0, 1048576], got 0"),
    ({"parallel": {"zero_stage": 4}}, "parallel.zero_stage: expected an integer in [0, 3], got 4"),
    ({"train": {"recompute": "some"}},
     "train.recompute: expected one of 'none', 'selective', 'full', got 'some'"),
    ({"train": {"recompute_every": 0}}, "train.recompute_every: expected an integer >= 1"),
])
def test_wrong_types_and_ranges_are_named(d, message):
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


def test_cross_field_checks_arrive_as_config_errors():
    msg = error_of({"model": {"preset": "gpt2-tiny", "n_head": 5}})
    assert msg.startswith("model: n_head (5) must divide d_model (64)")
    with pytest.raises(nuri.Error):  # a ConfigError is a nuri.Error and a ValueError
        nuri.config_from_dict({"train": {"steps": 0}})
    with pytest.raises(ValueError, match="train.steps"):
        nuri.config_from_dict({"train": {"steps": 0}})
    assert "train.seq_len (200) exceeds model.max_seq_len (128)" in error_of(
        {"model": "gpt2-tiny", "train": {"seq_len": 200}})
    assert "model.preset: unknown preset 'gpt2-huge'; presets: demo, gpt2-tiny" in error_of(
        {"model": "gpt2-huge"})


def test_overrides_parse_values_and_name_bad_keys():
    base = nuri.config_from_dict(TINY)
    cfg = nuri.apply_overrides(base, [
        "train.lr=1e-3", "model.n_layer=4", "train.on_nonfinite=stop", "sample.prompt=1984",
        "data.train=some/file.txt", 'sample.prompt="Once upon"', "log_every=2", "backend=cpu",
        "parallel.zero_stage=2", "checkpoint.async_save=true"])
    assert abs(cfg.train.lr - 1e-3) < 1e-9 and cfg.model.n_layer == 4
    assert cfg.train.on_nonfinite == "stop" and cfg.sample.prompt == "Once upon"
    assert cfg.data.train == "some/file.txt" and cfg.log_every == 2
    assert cfg.parallel.zero_stage == 2 and cfg.checkpoint.async_save
    assert base.model.n_layer == 2  # the input is not modified
    reset = nuri.apply_overrides(cfg, ["model=llama-tiny", "model.n_layer=3"])
    assert reset.model.mlp == "swiglu" and reset.model.n_layer == 3 and reset.preset == "llama-tiny"
    for item, message in [("train.lr=fast", "train.lr: expected a number > 0, got 'fast'"),
                          ("model.colour=red", "model.colour: unknown key; known keys: bias"),
                          ("optim.lr=1", "optim.lr: unknown section 'optim'"),
                          ("lr=1", "lr: unknown key; known keys: backend"),
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
    assert set(d["model"]) == {"preset", *nuri.ModelConfig().to_dict()}
    assert set(d["train"]) == set(nuri.TrainConfig().to_dict())
    js = tmp_path / "run.json"
    js.write_text(json.dumps(d))
    again = nuri.load_config(js)
    assert again == cfg and again.to_dict() == d


def other_value(s):
    """A valid value of setting s different from its default."""
    d = s["default"]
    if s["kind"] == "bool":
        return not d
    if s["kind"] == "choice":
        return next(c for c in s["choices"] if c != d)
    if s["kind"] == "str":
        return {"backend": "cpu", "preset": "llama-tiny", "signals": "USR2",
                "format": "uint16"}.get(s["key"], "x.txt")
    if s["path"] in ("model.n_head", "model.n_kv_head", "model.vocab_size", "model.max_seq_len"):
        return d  # constrained by other fields; model.d_model and model.d_ff vary instead
    if s["path"] == "parallel.zero_stage":
        return 2
    if s["path"] == "model.d_model":
        return d * 2  # still a multiple of n_head
    if s["path"] == "model.head_dim":
        return 32  # even, as RoPE needs
    if s["path"] == "model.sliding_window":
        return 4096  # no shorter than the sequences
    if s["kind"] == "int":
        return d + 3
    return d * 0.5 if d else 0.25


def test_every_setting_round_trips_through_json_toml_overrides_and_flags(tmp_path):
    ref = nuri.reference()
    values = {s["path"]: other_value(s) for s in ref}
    values["backend"] = "cpu"
    values["layout"] = "auto"  # the two texts that name one of a few things
    values["profile"] = "rtx-4090"
    changed = [p for p, v in values.items()
               if v != next(s["default"] for s in ref if s["path"] == p)]
    assert len(changed) >= len(ref) - 6  # all but the few constrained ones differ from defaults
    table: dict = {}
    for s in ref:
        if s["key"] == "preset":
            continue
        (table.setdefault(s["section"], {}) if s["section"] else table)[s["key"]] = values[s["path"]]
    table["model"]["preset"] = ""
    cfg = nuri.config_from_dict(table)  # Python dict -> C++
    for s in ref:
        if s["key"] == "preset":
            continue
        section = getattr(cfg, s["section"]) if s["section"] else cfg
        got = getattr(section, s["key"])
        assert got == pytest.approx(values[s["path"]]), s["path"]
    # C++ -> JSON -> Python -> C++, and a JSON file, and TOML written here
    assert nuri.RunConfig.from_json(cfg.to_json()) == cfg
    assert nuri.config_from_dict(json.loads(cfg.to_json())) == cfg
    lines = []
    for section, t in [("", {k: v for k, v in table.items() if not isinstance(v, dict)}),
                       *[(k, v) for k, v in table.items() if isinstance(v, dict)]]:
        if section:
            lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in t.items()]
    (tmp_path / "all.toml").write_text("\n".join(lines) + "\n")
    assert nuri.load_config(tmp_path / "all.toml") == cfg
    # KEY=VALUE overrides and command-line flags of every setting
    overrides = [f"{s['path']}={json.dumps(values[s['path']])}" for s in ref if s["key"] != "preset"]
    assert nuri.apply_overrides(nuri.RunConfig(), ["model.preset=''", *overrides]) == cfg
    argv = ["--model", ""]
    for s in ref:
        if s["key"] == "preset":
            continue
        v = values[s["path"]]
        if s["kind"] == "bool":
            argv.append(s["flag"] if v else "--no-" + s["flag"][2:])
        else:
            argv += [s["flag"], str(v)]
    assert nuri._C.parse_run_args(argv) == cfg


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
    broken = tmp_path / "broken.json"
    broken.write_text('{"train": {"lr": 1e-3,}}')
    with pytest.raises(nuri.ConfigError, match="broken.json: not valid JSON"):
        nuri.load_config(broken)


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
                                       "mlp_bias": True,
                                       "tie_word_embeddings": True, "intermediate_size": 688})
    assert (small.d_model, small.n_head, small.n_kv_head, small.d_ff) == (256, 8, 8, 688)
    assert (small.rope_theta, small.bias, small.tied_embeddings) == (500000.0, True, True)


@pytest.mark.parametrize("hf, message", [
    ({"model_type": "bert"},
     "model_type 'bert' is not supported; nuri reads 'gpt2', 'llama', 'qwen2', 'mistral' and "
     "'phi3'"),
    ({}, "model_type None is not supported"),
    ({**GPT2_HF, "activation_function": "relu"}, "activation_function 'relu' is not supported"),
    ({**TINYLLAMA_HF, "rope_scaling": {"type": "yarn", "factor": 2.0}},
     "rope_scaling type 'yarn' is not supported; nuri implements 'linear' and 'llama3'"),
    ({**TINYLLAMA_HF, "attention_bias": True},
     r"attention_bias (True) and mlp_bias (False) differ"),
    ({**TINYLLAMA_HF, "sliding_window": 4096}, "llama config key 'sliding_window' is not "
     "implemented by nuri"),
    ({**TINYLLAMA_HF, "hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({**TINYLLAMA_HF, "num_key_value_heads": 5}, "n_kv_head (5) must divide n_head (32)"),
    ({**GPT2_HF, "n_layer": "12"}, "n_layer: expected an integer >= 1, got '12'"),
])
def test_hf_configs_nuri_cannot_run_are_rejected_clearly(hf, message):
    with pytest.raises(nuri.ConfigError) as info:
        nuri.model_config_from_hf(hf)
    assert message in str(info.value)


def test_the_type_stubs_are_generated_from_the_schema():
    import nuri.stubs
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "nuri" / "_C.pyi").read_text()
    part = text[text.index(nuri.stubs.BEGIN):text.index(nuri.stubs.END) + len(nuri.stubs.END)]
    assert part == nuri.stubs.generated(), "run `python -m nuri.stubs --write` (PYTHONPATH=" \
                                           "build/python) after changing a settings table"
    for s in nuri.reference():
        assert f"    {s['key']}: " in part, s["path"]
