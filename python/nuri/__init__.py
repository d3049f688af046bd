"""nuri: a training runtime for decoder-only language models (C++ core, Python front end).

The classes come from the C++ extension ``nuri._C``; parameters and gradients are NumPy views of
nuri's own buffers (no copies), and every C++ ``nuri::Error`` arrives as ``nuri.Error`` (a
``RuntimeError``) with the C++ message.

    import nuri
    cfg = nuri.ModelConfig.preset("gpt2-tiny")
    model = nuri.Model(cfg, seed=1)
    train = nuri.TokenFile.from_array(list(open("corpus.txt", "rb").read()))
    tc = nuri.TrainConfig(steps=50, micro_batch=4, seq_len=64, lr=3e-3, warmup_steps=5)
    trainer = nuri.Trainer(model, tc, train)
    for _ in range(tc.steps):
        stats = trainer.step()          # {"step", "loss", "lr", "grad_norm", ...}
    nuri.save(model, "model.safetensors")

A whole run, as nuri-train does it (resume, checkpoints, preemption, metrics, several processes
under torchrun, mpirun, srun or an mpiexec): ``nuri.run(nuri.load_config("run.toml"))``, or
``python -m nuri train --config run.toml``.
"""

import os as _os
import sys as _sys

# Open MPI's plugins are loaded with dlopen and look up libmpi's symbols globally: the extension
# (which links libmpi) must be loaded with RTLD_GLOBAL, as mpi4py loads libmpi.
_flags = _sys.getdlopenflags()
_sys.setdlopenflags(_flags | _os.RTLD_GLOBAL)
try:
    from . import _C
finally:
    _sys.setdlopenflags(_flags)

from ._C import (
    ByteTokenizer,
    Error,
    Model,
    Tensor,
    TokenFile,
    Trainer,
    build_info,
    learning_rate,
    pipeline_stages,
    text_file_to_tokens,
    write_token_file,
)
from .config import (
    CheckpointConfig,
    ConfigError,
    DataConfig,
    ModelConfig,
    ParallelConfig,
    RunConfig,
    SampleConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    model_config_from_dict,
    model_config_to_dict,
    reference,
)
from .dist import ProcessGroup, init_process_group
from .io import (consolidate, decode_bytes, default_corpus, generate_text, load, read_data, save,
                 split_validation)
from .training import plot_losses, run
from .hf import (export_hf, export_hf_checkpoint, hf_token_ids, import_hf,
                 model_config_from_hf)
from .plan import (PlanResult, calibrate, device_profile, device_profile_names, estimate_memory,
                   estimate_step_time, model_flops_per_token, plan)
from .report import format_report, plot_report, read_ledger, report
from .shards import tokenize

__version__: str = build_info()["version"]

__all__ = [
    "ByteTokenizer", "CheckpointConfig", "ConfigError", "consolidate", "export_hf_checkpoint", "DataConfig", "Error", "Model",
    "ModelConfig", "ParallelConfig", "ProcessGroup", "RunConfig", "SampleConfig", "Tensor",
    "TokenFile", "TrainConfig", "Trainer", "apply_overrides", "build_info", "config_from_dict",
    "decode_bytes", "default_corpus", "export_hf", "generate_text", "hf_token_ids", "import_hf",
    "init_process_group",
    "learning_rate", "load", "load_config", "model_config_from_dict", "model_config_from_hf",
    "model_config_to_dict", "pipeline_stages", "plot_losses", "read_data", "reference", "run", "save",
    "split_validation", "text_file_to_tokens", "write_token_file", "__version__",
    "PlanResult", "calibrate", "device_profile", "device_profile_names", "estimate_memory",
    "estimate_step_time", "model_flops_per_token", "plan", "format_report", "plot_report",
    "read_ledger", "report", "tokenize",
]
