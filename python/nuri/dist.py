"""Several processes: the launcher's process group, as nuri-train finds it.

One design choice to know: the launcher is read from the environment in C++
(``nuri/dist/launch.h``: torchrun-style RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, mpirun, srun,
the PMI mpiexecs),
exactly as for nuri-train; the ranks then meet over MPI or TCP. Only one thing is done here:
torchrun's default (static) rendezvous keeps its own store on MASTER_PORT, so nuri's ranks meet
on another port, which rank 0 picks and publishes through that store with PyTorch's client.

    import nuri
    pg = nuri.init_process_group()          # torchrun, mpirun, srun, mpiexec; alone: 0 of 1
    model = nuri.Model(cfg, pg.device("cuda"))   # this rank's GPU ("cuda:<local rank>")
    trainer = nuri.Trainer(model, train_cfg, data, process_group=pg)
"""

from __future__ import annotations

import datetime
import os
import socket

from . import _C

ProcessGroup = _C.ProcessGroup


def _port_from_torchrun_store(timeout_s: float) -> None:
    """Under torchrun's static rendezvous, MASTER_PORT is its agent's store: rank 0 takes a free
    port, publishes it in that store, and every rank meets on it (MASTER_PORT is rewritten)."""
    from torch.distributed import TCPStore  # torchrun is PyTorch's: torch is there

    rank = int(os.environ["RANK"])
    key = f"nuri/rendezvous-port/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/" \
          f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                     timeout=datetime.timedelta(seconds=timeout_s))
    if rank == 0:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        store.set(key, str(port))
    port = int(store.get(key))  # waits until rank 0 has set it
    os.environ["MASTER_PORT"] = str(port)
    os.environ["NURI_MASTER_PORT_FROM_STORE"] = "1"  # (an error then names no agent store)


_group: ProcessGroup | None = None  # the job's group, once its ranks have met


def init_process_group(timeout_s: float = 600.0) -> ProcessGroup:
    """This process's place in its job and the communicator over its ranks, from the launcher's
    environment (collective: every rank calls it). A process started alone is rank 0 of 1. The
    ranks meet once: a later call (``nuri.run`` without a process_group, a second run in a
    sweep) returns the same group.

    [in] timeout_s: seconds a collective may take before it fails naming the operation
    (NURI_COMM_TIMEOUT_S overrides it); a later call keeps the first call's.
    """
    global _group
    if _group is not None:
        return _group
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and \
            int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _port_from_torchrun_store(timeout_s)
    _group = _C.init_process_group(timeout_s)
    return _group
