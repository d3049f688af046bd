"""A run config trained by hand over nuri.Trainer, as a researcher's own loop would: the Python
API's side of tests/train/front_ends.sh. Writes each step's loss, gradient norm and validation
loss (rank 0) as JSON.
    python api_run.py RUN.toml OUT.json   (under any launcher: data-parallel over its ranks)"""
import json
import sys

import nuri

cfg = nuri.load_config(sys.argv[1])
pg = nuri.init_process_group()
data = nuri.read_data(cfg.data.train, cfg.model.vocab_size) if cfg.data.train \
    else nuri.default_corpus()
train, val = nuri.split_validation(data)
model = nuri.Model(cfg.model, pg.device(cfg.backend), cfg.train.seed)
trainer = nuri.Trainer(model, cfg.train, train, val, process_group=pg, parallel=cfg.parallel)
records = []
for _ in range(cfg.train.steps):
    st = trainer.step()
    record = {"step": st["step"], "loss": st["loss"], "lr": st["lr"],
              "grad_norm": st["grad_norm"]}
    if st["step"] % cfg.train.eval_every == 0 or st["step"] == cfg.train.steps:
        record["val_loss"] = trainer.evaluate()
    records.append(record)
if pg.rank == 0:
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump({"world_size": trainer.world_size, "steps": records}, f)
