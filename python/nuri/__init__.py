"""nuri: a training runtime for decoder-only language models (C++ core, Python front end).

The classes come from the C++ extension ``nuri._C``; parameters and gradients are NumPy views of
nuri's own buffers (no copies), and every C++ ``nuri::Error`` arrives as ``nuri.Error`` (a
``RuntimeError``) with the C++ message.

    import nuri
    cfg = nuri.ModelConfig.preset("gpt2-tiny")
    model = nuri.Model(cfg, seed=1)
    train = nuri.TokenFile.from_array(list(open("corpus.txt", "rb").read()))
    tc = nuri.TrainConfig()
    tc.steps, tc.micro_batch, tc.seq_len, tc.lr, tc.warmup_steps = 50, 4, 64, 3e-3, 5
    trainer = nuri.Trainer(model, tc, train)
    for _ in range(tc.steps):
        stats = trainer.step()          # {"step", "loss", "lr", "grad_norm", ...}
    nuri.save(model, "model.safetensors")

Run configs (TOML/JSON, see ``nuri.config``) drive ``python -m nuri train`` and
``nuri.run_training(nuri.load_config("run.toml"), "runs/x")``.
"""

from ._C import (
    ByteTokenizer,
    Error,
    Model,
    ModelConfig,
    Tensor,
    TokenFile,
    TrainConfig,
    Trainer,
    build_info,
    learning_rate,
    text_file_to_tokens,
    write_token_file,
)
from .config import (
    ConfigError,
    DataConfig,
    RunConfig,
    SampleConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    model_config_from_dict,
    model_config_from_hf,
    model_config_to_dict,
)
from .io import decode_bytes, generate_text, load, read_data, save, split_validation
from .cli import run_training
from .hf import export_hf, import_hf

__version__: str = build_info()["version"]

__all__ = [
    "ByteTokenizer", "ConfigError", "DataConfig", "Error", "Model", "ModelConfig", "RunConfig",
    "SampleConfig", "Tensor", "TokenFile", "TrainConfig", "Trainer", "apply_overrides",
    "build_info", "config_from_dict", "decode_bytes", "export_hf", "generate_text", "import_hf",
    "learning_rate", "load", "load_config", "model_config_from_dict", "model_config_from_hf",
    "model_config_to_dict", "read_data", "run_training", "save", "split_validation",
    "text_file_to_tokens", "write_token_file", "__version__",
]
