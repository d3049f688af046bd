"""Bad input to the Python API's C++ side: each call that crashed the interpreter, accepted a value
that could not be meant, or answered with another shape than asked, now answers with an error
that names what is wrong (or, for NumPy's scalars and logits, with what was meant)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nuri

TINY = "gpt2-tiny"  # vocab_size 257, padded to 320 columns


def tiny_config():
    return nuri.ModelConfig.preset(TINY)


def test_none_for_the_model_or_the_data_is_an_error_not_a_crash():
    data = nuri.TokenFile.from_array(np.arange(5000) % 257)
    cfg = nuri.TrainConfig(micro_batch=2, seq_len=16)
    with pytest.raises(nuri.Error, match="Trainer: model is None"):
        nuri.Trainer(None, cfg, data)
    with pytest.raises(nuri.Error, match="Trainer: train is None"):
        nuri.Trainer(nuri.Model(tiny_config()), cfg, None)
    with pytest.raises(nuri.Error, match="split_validation: no data"):
        nuri.split_validation(None)


def test_logits_have_the_vocabularys_columns_and_give_forwards_loss():
    model = nuri.Model(tiny_config(), seed=3)
    tokens = np.array([[5, 80, 200, 7, 9, 31]], np.int32)
    targets = np.array([[80, 200, 7, 9, 31, 256]], np.int32)
    logits = model.logits(tokens)
    assert logits.shape == (1, 6, 257) and logits.flags["C_CONTIGUOUS"]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    loss = -np.take_along_axis(logp[0], targets[0][:, None], axis=1).mean()
    assert math.isclose(loss, model.forward(tokens, targets), rel_tol=1e-5)


def test_numpy_scalars_are_settings_values():
    cfg = nuri.TrainConfig(steps=np.int64(5), lr=np.float32(1e-3))
    assert cfg.steps == 5
    assert math.isclose(cfg.lr, 1e-3, rel_tol=1e-6)
    model = tiny_config()
    model.n_layer, model.bias = np.int32(3), np.bool_(False)
    assert (model.n_layer, model.bias) == (3, False)
    run = nuri.config_from_dict({"train": {"steps": np.int64(3), "lr": np.float64(2e-3)}})
    assert run.train.steps == 3
    with pytest.raises(nuri.ConfigError, match=r"train.steps: expected an integer >= 1, got 0"):
        nuri.TrainConfig(steps=np.int64(0))


def test_a_config_dict_names_the_key_of_a_value_json_cannot_carry():
    with pytest.raises(nuri.ConfigError, match="train.lr: expected a finite number, got nan"):
        nuri.config_from_dict({"train": {"lr": float("nan")}})
    with pytest.raises(nuri.ConfigError, match="^my.toml: train.lr: expected a finite number"):
        nuri.RunConfig.from_dict({"train": {"lr": float("inf")}}, "my.toml")
    with pytest.raises(nuri.ConfigError, match=r"model.d_ff: expected a number, a string, a "
                                               r"bool, a list or a table, got \{1, 2\}"):
        nuri.config_from_dict({"model": {"d_ff": {1, 2}}})


def test_values_that_crashed_the_interpreter_are_errors(tmp_path):
    """Each of these ended the process (a stack overflow, a division by zero, or a read past a
    mapping) or silently meant something else."""
    loop: dict = {}
    loop["train"] = loop
    with pytest.raises(nuri.ConfigError, match="nested more than 64 levels deep"):
        nuri.config_from_dict(loop)
    pg = nuri.init_process_group()
    with pytest.raises(nuri.Error, match="process grid"):
        pg.tp_index(65536, 65536)
    model = nuri.Model(tiny_config(), seed=1)
    tokens = np.ones((1, 8), dtype=np.int64)
    # 2^64 - 100 through a cast to int64 was -100: the ignore index, a step learning nothing
    with pytest.raises(ValueError, match="value 18446744073709551516 at flat index 0 does not "
                                         "fit int32"):
        model.forward(tokens, np.full((1, 8), 2**64 - 100, dtype=np.uint64))
    # (the three counts wrap around to exactly the model's 4 blocks)
    with pytest.raises(nuri.Error, match="the stage split's blocks sum past 2\\^63 at stage 1"):
        nuri.pipeline_stages(nuri.ModelConfig(TINY, n_layer=4), 3, 16, [2**63 - 1, 2**63 - 1, 6])
    with pytest.raises(nuri.Error, match=r"max_new_tokens \(1152921504606846976\) must be in"):
        model.generate([1, 2, 3], 2**60)
    with pytest.raises(nuri.Error, match="layout grad_accum is 1000000000; it must be at most"):
        nuri.estimate_memory(tiny_config(), {"pp": 2, "grad_accum": 10**9}, 16, "cpu")
    with pytest.raises(nuri.Error, match="layout pp x grad_accum is 8388608; it must be at most"):
        nuri.estimate_memory(tiny_config(), {"pp": 2, "grad_accum": 2**22}, 16, "cpu")
    # A plan's own layouts stay inside: a large global batch plans (its pipelines skipped where
    # their schedules would pass the bound), and one past 2^22 sequences is named.
    assert nuri.plan(tiny_config(), "cpu", devices_per_node=2, seq_len=16,
                     global_batch=2**21).entries
    with pytest.raises(nuri.Error, match="global batch 8388608 sequences"):
        nuri.plan(tiny_config(), global_batch=2**23)
    with pytest.raises(nuri.Error, match="more than nuri plans for"):
        nuri.plan(tiny_config(), devices_per_node=2**31 - 1)
    data = nuri.TokenFile.from_array(list(range(10)))
    for start, n in [(1, 2**63 - 1), (2**62, 2**62)]:
        with pytest.raises(nuri.Error, match="is outside"):
            data.slice(start, n)
    # A checkpoint manifest nested a million deep: refused as it parses (dumping it for its
    # meta data recursed a million levels).
    deep = "[" * 1_000_000 + "]" * 1_000_000
    (tmp_path / "ck" / "step-00000001").mkdir(parents=True)
    (tmp_path / "ck" / "step-00000001" / "manifest.json").write_text(
        '{"format": "nuri-checkpoint", "meta": ' + deep + "}")
    with pytest.raises(nuri.Error, match="nested more than 64 levels deep"):
        nuri._C.CheckpointReader(str(tmp_path / "ck"))


def test_token_arrays_are_one_stream_of_valid_ids():
    with pytest.raises(ValueError, match=r"tokens must be 1-D .* got shape \(2, 3\)"):
        nuri.TokenFile.from_array(np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="tokens: none given"):
        nuri.TokenFile.from_array([])
    with pytest.raises(ValueError, match="token 9223372036854775813 at index 1 is not a valid"):
        nuri.TokenFile.from_array(np.array([1, 2**63 + 5], np.uint64))
    assert len(nuri.TokenFile.from_array(np.array([1, 2**32 - 1], np.uint64))) == 2
    with pytest.raises(nuri.Error, match="vocab_size -5"):
        nuri.TokenFile.from_array([1, 2], vocab_size=-5)


def test_arrays_in_the_other_byte_order_are_refused():
    with pytest.raises(TypeError, match="other byte order"):
        nuri.Tensor.from_numpy(np.arange(3, dtype=">f4"))
    t = nuri.Tensor.from_numpy(np.arange(3, dtype="<f4"))
    np.testing.assert_array_equal(t.numpy(), [0, 1, 2])


def test_models_too_large_to_count_or_to_hold_are_refused_at_once():
    cfg = tiny_config()
    cfg.d_ff = 2**62
    with pytest.raises(nuri.Error, match="too many to count in 64 bits"):
        nuri.Model(cfg)
    cfg = tiny_config()
    cfg.n_layer = 10**9  # 5e13 parameters: laying them out alone took minutes before
    with pytest.raises(nuri.Error, match=r"need \d+ GiB for their f32 weights alone, more than "
                                         r"this machine's"):
        nuri.Model(cfg)
    # A ZeRO 3 shard of a model too large for the machine is judged by its own size.
    cfg = tiny_config()
    cfg.d_ff = 2**33  # 2.2e12 parameters in two blocks: 8 TiB of f32 weights
    with pytest.raises(nuri.Error, match="need 8256 GiB for their f32 weights alone"):
        nuri.Model(cfg)
    part = nuri.Model(cfg, shard=(0, 1000))
    assert part.held_range == (0, 1000) and not part.holds_whole_model


def test_layouts_and_plans_out_of_range_are_named():
    cpu = "cpu"
    cfg = tiny_config()
    for key, value in [("dp", 0), ("micro_batch", 0), ("grad_accum", -1)]:
        with pytest.raises(nuri.Error, match=f"layout {key} is {value}; it must be at least 1"):
            nuri.estimate_memory(cfg, {key: value}, 16, cpu)
    with pytest.raises(nuri.Error, match="seq_len is 0"):
        nuri.estimate_memory(cfg, {}, 0, cpu)
    with pytest.raises(nuri.Error, match="layout zero is 4"):
        nuri.estimate_step_time(cfg, {"zero": 4}, 16, cpu)
    with pytest.raises(nuri.Error, match=r"usable fraction of each device's memory is 5; give "
                                         r"one in \(0, 1\]"):
        nuri.plan(cfg, usable_fraction=5)
    with pytest.raises(nuri.Error, match="global batch -4 sequences"):
        nuri.plan(cfg, global_batch=-4)
    with pytest.raises(nuri.Error, match="seconds_per_probe is -1"):
        nuri.calibrate("cpu", seconds_per_probe=-1)


def test_generation_and_steps_refuse_values_that_cannot_be_meant():
    model = nuri.Model(tiny_config(), seed=1)
    with pytest.raises(nuri.Error, match=r"top_k \(-1\) must be >= 0"):
        model.generate([1, 2, 3], 5, top_k=-1)
    with pytest.raises(nuri.Error, match="loss_scale is nan"):
        model.backward(float("nan"))
    with pytest.raises(nuri.Error, match="learning_rate: step -5"):
        nuri.learning_rate(nuri.TrainConfig(), -5)
    model.parameters()["h.1.mlp.c_fc.weight"][3, 4] = np.inf
    with pytest.raises(nuri.Error, match="not a finite number: its weights hold a NaN or an "
                                         "infinity"):
        model.generate([1, 2, 3], 5, temperature=0)


def test_a_saved_model_file_with_a_flipped_byte_fails_its_checksum(tmp_path):
    model = nuri.Model(tiny_config(), seed=5)
    path = tmp_path / "m.safetensors"
    nuri.save(model, path)
    back = nuri.load(path)
    np.testing.assert_array_equal(back.parameters()["wte.weight"], model.parameters()["wte.weight"])
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x04  # a bit of the last tensor's last value
    path.write_bytes(bytes(data))
    with pytest.raises(nuri.Error, match="m.safetensors fails its checksum: its tensors are not "
                                         "the ones nuri wrote"):
        nuri.load(path)


def test_a_save_that_fails_is_a_nuri_error_naming_the_file(tmp_path):
    model = nuri.Model(tiny_config(), seed=5)
    path = tmp_path / "missing" / "m.safetensors"
    with pytest.raises(nuri.Error, match=r"nuri.save\(.*missing/m.safetensors\): .*No such file"):
        nuri.save(model, path)  # (safetensors' own error type, said as nuri's)
    assert not (tmp_path / "missing").exists()


def test_the_streaming_writer_takes_read_only_arrays(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    a.setflags(write=False)  # as np.load(..., mmap_mode="r") gives
    w = nuri._C.SafetensorsWriter(str(tmp_path / "t.safetensors"), [("a", [2, 3])])
    w.write("a", a)
    w.close()
    np.testing.assert_array_equal(nuri._C.SafetensorsReader(str(tmp_path / "t.safetensors"))
                                  .read("a"), a)


def test_a_model_to_be_loaded_starts_at_zeros_and_init_is_checked(tmp_path):
    # nuri.load and nuri.import_hf build their model with init="zeros": nothing is drawn from
    # the seed, and every weight is then the file's (a weight left at 0 would show here).
    model = nuri.Model(tiny_config(), seed=5)
    zeros = nuri.Model(tiny_config(), init="zeros")
    assert not any(np.any(w) for w in zeros.parameters().values())
    path = tmp_path / "m.safetensors"
    nuri.save(model, path)
    back = nuri.load(path)
    for name, w in model.parameters().items():
        np.testing.assert_array_equal(back.parameters()[name], w, err_msg=name)
    tokens = np.array([[5, 80, 200, 7]], np.int32)
    assert back.forward(tokens, tokens) == model.forward(tokens, tokens)
    with pytest.raises(nuri.Error, match="Model: init 'ones' is not one of random"):
        nuri.Model(tiny_config(), init="ones")


def test_a_presets_name_stands_for_its_config():
    """nuri.Model, the planner and ModelConfig take a preset's name (with keyword overrides for
    ModelConfig); an unknown name lists the presets."""
    by_name, by_config = nuri.Model("gpt2-tiny", seed=3), nuri.Model(
        nuri.ModelConfig.preset("gpt2-tiny"), seed=3)
    assert by_name.config == by_config.config
    np.testing.assert_array_equal(by_name.parameters()["wte.weight"],
                                  by_config.parameters()["wte.weight"])
    c = nuri.ModelConfig("llama-tiny", n_layer=3)
    want = nuri.ModelConfig.preset("llama-tiny")
    want.n_layer = 3
    assert c == want
    assert nuri.model_flops_per_token("llama-1B", 512) == nuri.model_flops_per_token(
        nuri.ModelConfig.preset("llama-1B"), 512)
    assert nuri.plan("gpt2-124M", "rtx-4090").text == nuri.plan(
        nuri.ModelConfig.preset("gpt2-124M"), "rtx-4090").text
    assert nuri.pipeline_stages("llama-tiny", 2, 64) == nuri.pipeline_stages(
        nuri.ModelConfig.preset("llama-tiny"), 2, 64)
    for make in (lambda: nuri.Model("gpt3"), lambda: nuri.plan("gpt3"),
                 lambda: nuri.ModelConfig("gpt3")):
        with pytest.raises(nuri.ConfigError, match="model: unknown preset 'gpt3'; presets: demo, "
                                                   "gpt2-tiny"):
            make()
    with pytest.raises(nuri.ConfigError, match="model.n_layr: unknown key"):
        nuri.ModelConfig("gpt2-tiny", n_layr=2)
    with pytest.raises(nuri.ConfigError, match="model.n_layer: expected an integer >= 1, got 0"):
        nuri.ModelConfig("gpt2-tiny", n_layer=0)


def test_models_data_and_trainers_say_what_they_are():
    model = nuri.Model("gpt2-tiny")
    assert repr(model) == (f"Model({model.parameter_count} parameters on cpu: "
                           f"{model.config.summary()})")
    assert repr(nuri.Model("llama-tiny", pipeline_stage=(1, 2))).endswith("; blocks [1, 2))")
    data = nuri.TokenFile.from_array(np.arange(600) % 256, name="bytes.bin")
    assert repr(data) == "TokenFile(600 tokens from bytes.bin)"
    trainer = nuri.Trainer(model, nuri.TrainConfig(steps=3, micro_batch=2, seq_len=16), data)
    trainer.step()
    assert repr(trainer) == "Trainer(step 1 of 3, 0 skipped, data-parallel over 1)"


def test_a_model_file_and_a_hugging_face_directory_are_not_mistaken(tmp_path):
    model = nuri.Model("gpt2-tiny")
    nuri.export_hf(model, tmp_path / "hf")
    with pytest.raises(nuri.Error, match=r"hf\): a directory; it reads one model file .* A "
                                         r"Hugging Face model directory is read by "
                                         r"nuri.import_hf\(DIR\)"):
        nuri.load(tmp_path / "hf")
    with pytest.raises(nuri.Error, match=r"model.safetensors\): a file; it reads a Hugging Face "
                                         r"model directory .* is read by nuri.load\(FILE\)"):
        nuri.import_hf(tmp_path / "hf" / "model.safetensors")
