"""Several processes from Python: torchrun itself starting ``python -m nuri train`` (its agent
keeps MASTER_PORT for its own store; nuri's ranks meet on a port published there), and the
process group's API under a torchrun-style start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import REPO, cli_env, free_port

TORCHRUN_SH = REPO / "tests" / "dist" / "torchrun.sh"
ARGS = ["--model", "gpt2-tiny", "--steps", "5", "--micro-batch", "2", "--seq-len", "32",
        "--eval-every", "0", "--eval-batches", "2", "--max-new-tokens", "0", "--log-every", "1",
        "--zero-stage", "2"]


def metrics(run: Path):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "step_seconds")}
            for r in rows]


def test_torchrun_starts_python_m_nuri_train(tmp_path):
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    # PyTorch 1.13 on Python 3.11 mis-parses its default --redirects/--tee ("0"); 2 (stderr to a
    # file, teed to the console) leaves stdout alone.
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(free_port()),
         "--redirects", "2", "--tee", "2", "--log_dir", str(tmp_path / "logs"),
         "-m", "nuri", "train", *ARGS, "--out", "torchrun"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "data parallel: 2 ranks (torchrun-style environment, gradients over tcp), ZeRO " \
           "stage 2, global batch 4 sequences" in proc.stdout
    ref = subprocess.run(["bash", str(TORCHRUN_SH), "-np", "2", sys.executable, "-m", "nuri",
                          "train", *ARGS, "--out", "ref"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    assert metrics(tmp_path / "torchrun") == metrics(tmp_path / "ref")


def test_process_group_rank_size_all_reduce_and_device(tmp_path):
    script = tmp_path / "pg.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        import numpy as np
        import nuri
        pg = nuri.init_process_group(timeout_s=60)
        x = np.full(3, pg.rank + 1, np.float32)
        pg.all_reduce(x)
        y = np.arange(4, dtype=np.float32) * (pg.rank + 1)
        pg.all_reduce(y, op="avg")
        pg.barrier()
        try:
            pg.all_reduce(np.zeros(2, np.float64))
            bad = ""
        except nuri.Error as e:
            bad = str(e)
        out = {"rank": pg.rank, "world": pg.world_size, "local": pg.local_rank,
               "launcher": pg.launcher, "backend": pg.backend, "sum": x.tolist(),
               "avg": y.tolist(), "device": pg.device("cpu"), "bad": bad}
        with open(sys.argv[1] + f".{pg.rank}", "w") as f:
            json.dump(out, f)
    """))
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(TORCHRUN_SH), "-np", "2", sys.executable, str(script),
                           str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for r in (0, 1):
        got = json.loads((tmp_path / f"out.{r}").read_text())
        assert (got["rank"], got["world"], got["local"]) == (r, 2, r)
        assert (got["launcher"], got["backend"], got["device"]) == (
            "torchrun-style environment", "tcp", "cpu")
        assert got["sum"] == [3.0, 3.0, 3.0] and got["avg"] == [0.0, 1.5, 3.0, 4.5]
        assert "writable C-contiguous float32 array" in got["bad"]
    alone = subprocess.run([sys.executable, str(script), str(tmp_path / "single")],
                           env={k: v for k, v in env.items()
                                if k not in ("RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK")},
                           capture_output=True, text=True, timeout=60)
    assert alone.returncode == 0, alone.stderr
    got = json.loads((tmp_path / "single.0").read_text())
    assert (got["world"], got["launcher"], got["backend"], got["sum"]) == (
        1, "single process", "single", [1.0, 1.0, 1.0])
    assert os.path.exists(tmp_path / "single.0")


def test_zero_stage_3_from_python_is_stage_2_bit_for_bit(tmp_path):
    """ZeRO 3 through python -m nuri train (each rank makes its shard of the model alone, then
    gathers units as it goes) computes ZeRO 2's run, with recomputation on top."""
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    runs = {}
    for stage, extra in (("2", []), ("3", ["--recompute", "full"]),
                         ("3", ["--keep-gathered"])):
        out = f"z{stage}{''.join(extra)}"
        args = ARGS[:-2]  # without its --zero-stage 2
        proc = subprocess.run(["bash", str(TORCHRUN_SH), "-np", "2", sys.executable, "-m",
                               "nuri", "train", *args, "--zero-stage", stage, *extra, "--out",
                               out], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"ZeRO stage {stage}, global batch 4" in proc.stdout
        runs[out] = metrics(tmp_path / out)
    losses = {k: [(r["loss"], r["grad_norm"], r["lr"]) for r in v] for k, v in runs.items()}
    first, *others = losses.values()
    assert all(r == first for r in others), losses
    peaks = {k: v[-1]["peak_bytes"] for k, v in runs.items()}
    assert peaks["z3--recomputefull"] < peaks["z2"], peaks  # what ZeRO 3 is for


def test_tensor_parallel_trainer_from_python_follows_one_process(tmp_path):
    """nuri.Trainer on a dp x tp grid: 2 ranks with tp = 2 (each rank's model built as its
    slice), with sequence parallelism, against one process on the same batches; both with a
    document mask (documents end at each ',')."""
    script = tmp_path / "tp.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        import nuri
        pg = nuri.init_process_group(timeout_s=120)
        tp = pg.world_size  # 1 when run alone: the reference
        cfg = nuri.ModelConfig.preset("gpt2-tiny")
        train = nuri.TrainConfig(steps=8, micro_batch=2, seq_len=32, eval_every=0, lr=3e-3,
                                 warmup_steps=2, document_mask="end", document_separator=44)
        data = nuri.TokenFile.from_array(
            nuri.ByteTokenizer().encode("to be or not to be, that is the question " * 200),
            vocab_size=257)
        model = nuri.Model(cfg, seed=7, tensor_parallel=(pg.tp_index(tp), tp))
        assert model.tensor_parallel == (pg.rank, tp)
        par = nuri.ParallelConfig(tp=tp, sequence_parallel=tp > 1)
        trainer = nuri.Trainer(model, train, data, process_group=pg, parallel=par)
        assert model.document_separator == 44
        losses = [trainer.step()["loss"] for _ in range(8)]
        if pg.rank == 0:
            json.dump(losses, open(sys.argv[1], "w"))
    """))
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(TORCHRUN_SH), "-np", "2", sys.executable, str(script),
                           str(tmp_path / "tp.json")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one.json")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stdout + one.stderr
    got = json.loads((tmp_path / "tp.json").read_text())
    want = json.loads((tmp_path / "one.json").read_text())
    assert len(got) == len(want) == 8
    for g, w in zip(got, want):
        assert abs(g - w) <= 1e-5 * w, (got, want)
    assert want[-1] < want[0] - 0.3


def test_pipeline_parallel_trainer_from_python_follows_one_process(tmp_path):
    """nuri.Trainer on a pipeline: 2 ranks with pp = 2 (each rank's model built as its stage of
    nuri.pipeline_stages), 1F1B over 4 micro-batches, against one process on the same batches
    (both with a document mask: documents end at each ',', each micro-batch its own bounds);
    the validation loss through the stages' forwards; and Trainer.generate through the stages,
    one process's tokens on both ranks (from the initial weights, which are one process's)."""
    script = tmp_path / "pp.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        import nuri
        pg = nuri.init_process_group(timeout_s=120)
        pp = pg.world_size  # 1 when run alone: the reference
        cfg = nuri.ModelConfig.preset("gpt2-tiny")
        train = nuri.TrainConfig(steps=8, micro_batch=2, grad_accum=4, seq_len=32, eval_every=0,
                                 eval_batches=2, lr=3e-3, warmup_steps=2, document_mask="end",
                                 document_separator=44)
        data = nuri.TokenFile.from_array(
            nuri.ByteTokenizer().encode("to be or not to be, that is the question " * 200),
            vocab_size=257)
        first = nuri.pipeline_stages(cfg, pp, train.seq_len)
        s = pg.pp_index(pp)
        model = nuri.Model(cfg, seed=7, pipeline_stage=(first[s], first[s + 1]))
        assert model.pipeline_stage == (first[s], first[s + 1])
        trainer = nuri.Trainer(model, train, data, data, process_group=pg,
                               parallel=nuri.ParallelConfig(pp=pp))
        assert model.document_separator == 44
        # (before training: the stages hold one process's initial weights, the same bits)
        tokens = trainer.generate([116, 111, 32], max_new_tokens=12, temperature=0.8, top_k=20,
                                  seed=3)
        losses = [trainer.step()["loss"] for _ in range(8)]
        losses.append(trainer.evaluate())
        json.dump({"first": first, "losses": losses, "tokens": tokens},
                  open(f"{sys.argv[1]}.{pg.rank}", "w"))
    """))
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(TORCHRUN_SH), "-np", "2", sys.executable, str(script),
                           str(tmp_path / "pp.json")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one.json")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stdout + one.stderr
    got = json.loads((tmp_path / "pp.json.0").read_text())
    want = json.loads((tmp_path / "one.json.0").read_text())
    assert json.loads((tmp_path / "pp.json.1").read_text())["tokens"] == got["tokens"]
    assert got["tokens"] == want["tokens"] and len(got["tokens"]) == 12, (got, want)
    assert got["first"] == [0, 1, 2] and want["first"] == [0, 2]
    assert len(got["losses"]) == len(want["losses"]) == 9
    for g, w in zip(got["losses"], want["losses"]):
        assert abs(g - w) <= 1e-5 * w, (got, want)
    assert want["losses"][7] < want["losses"][0] - 0.3


def test_ctrl_c_ends_a_wait_for_ranks_that_never_come(tmp_path):
    """Ctrl-C ends init_process_group waiting for a rank that never starts (as rank 0, accepting,
    and as rank 1, connecting) and a barrier the other rank never reaches, at once and with
    KeyboardInterrupt, not at the 60 s timeout."""
    script = tmp_path / "wait.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        import nuri
        pg = None
        if len(sys.argv) > 1:  # both ranks meet; rank 1 then never reaches the barrier
            pg = nuri.init_process_group(timeout_s=60)
            if pg.rank == 1:
                time.sleep(60)
        print("waiting", flush=True)
        t0 = time.monotonic()
        try:
            pg.barrier() if pg else nuri.init_process_group(timeout_s=60)
        except KeyboardInterrupt:
            print(f"interrupted after {time.monotonic() - t0:.1f} s", flush=True)
            sys.exit(7)
    """))

    def start(rank: int, port: int, *args: str) -> subprocess.Popen:
        env = {**cli_env(), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        return subprocess.Popen([sys.executable, str(script), *args], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def interrupt(proc: subprocess.Popen) -> None:
        assert proc.stdout.readline() == "waiting\n"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 7, out + err
        assert float(out.split("interrupted after ")[1].split()[0]) < 10, out

    for rank in (0, 1):
        interrupt(start(rank, free_port()))
    port = free_port()
    ranks = [start(0, port, "barrier"), start(1, port, "barrier")]
    try:
        interrupt(ranks[0])
    finally:
        ranks[1].kill()
        ranks[1].communicate()


def test_threads_share_a_process_group_and_ctrl_c_ends_only_the_callers_wait(tmp_path):
    """On each of 2 ranks, the main thread's barriers and all-reduces beside another thread's
    training steps: every sum right, the steps' losses those of steps alone. Then rank 0's main
    thread waits in a barrier rank 1 never reaches, holding the lock the stepping thread waits
    for; Ctrl-C ends that wait alone (KeyboardInterrupt at once), and the other thread's steps
    then run, not interrupted, to the same losses."""
    script = tmp_path / "threads.py"
    script.write_text(textwrap.dedent("""
        import sys, threading, time
        import numpy as np
        import nuri

        def trainer():
            text = bytes(range(32, 127)) * 200
            data = nuri.TokenFile.from_array(np.frombuffer(text, np.uint8).astype(np.uint32),
                                             "corpus", 257)
            tc = nuri.TrainConfig()
            tc.steps, tc.micro_batch, tc.seq_len, tc.warmup_steps = 6, 2, 32, 1
            return nuri.Trainer(nuri.Model(nuri.ModelConfig.preset("gpt2-tiny"), "cpu", 1),
                                tc, data)

        def steps_beside(work, delay=0.0):
            tr, losses, errors = trainer(), [], []

            def run():
                time.sleep(delay)
                try:
                    for _ in range(6):
                        losses.append(tr.step()["loss"])
                        ends.append(time.monotonic())
                except BaseException as e:
                    errors.append(repr(e))
            t = threading.Thread(target=run)
            t.start()
            try:
                work()
            finally:
                t.join()
            return losses, errors

        pg = nuri.init_process_group(timeout_s=60)
        ends = []  # when each step of the stepping thread ended
        alone_tr = trainer()
        alone = [alone_tr.step()["loss"] for _ in range(6)]
        sums = []

        def collectives():
            for i in range(30):
                pg.barrier()
                x = np.full(4, float(pg.rank + 1 + i), np.float32)
                pg.all_reduce(x)
                sums.append(float(x[0]))
        losses, errors = steps_beside(collectives)
        assert not errors and losses == alone, (errors, losses, alone)
        assert sums == [2.0 * i + 3 for i in range(30)], sums
        if pg.rank == 1:
            time.sleep(60)  # never reaches the barrier below
            sys.exit(0)
        caught = []

        def wait():
            print("waiting", flush=True)
            t0 = time.monotonic()
            try:
                pg.barrier()
            except KeyboardInterrupt:
                caught.append(time.monotonic() - t0)
                caught.append(time.monotonic())
        ends.clear()
        # (the stepping thread starts once the barrier holds the lock: its steps wait for it)
        losses, errors = steps_beside(wait, delay=0.3)
        assert not errors and losses == alone, (errors, losses, alone)
        assert caught, "the barrier was not interrupted"
        assert ends[0] >= caught[1], "the steps ran during the barrier, not after it"
        print(f"interrupted after {caught[0]:.1f} s", flush=True)
        sys.exit(7)
    """))
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = {**cli_env(), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        assert procs[0].stdout.readline() == "waiting\n", procs[0].communicate()
        time.sleep(1.0)
        procs[0].send_signal(signal.SIGINT)
        out, err = procs[0].communicate(timeout=60)
        assert procs[0].returncode == 7, out + err
        assert float(out.split("interrupted after ")[1].split()[0]) < 10, out
    finally:
        procs[1].kill()
        procs[1].communicate()


def test_calibrate_on_two_ranks_measures_their_all_reduce(tmp_path):
    """``python -m nuri calibrate`` under a 2-rank start: the ranks make as many all-reduces as
    rank 0's clock allows (each rank's own would leave one waiting for a call the other never
    makes), and rank 0 alone writes the profile."""
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(TORCHRUN_SH), "-np", "2", sys.executable, "-m", "nuri",
                           "calibrate", "--seconds", "0.02", "--out", "prof.json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    prof = json.loads((tmp_path / "prof.json").read_text())
    assert "2 ranks over tcp" in prof["source"], prof["source"]
    assert prof["collective_latency"] > 0 and prof["intra_node_bandwidth"] > 0
    assert proc.stdout.count("wrote prof.json") == 1
