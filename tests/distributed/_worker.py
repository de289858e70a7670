"""The body of each spawned process: join the gloo group, run every scenario, save results."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ._scenarios import SCENARIOS, make_iwrm_model, run


def worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        for name in SCENARIOS:
            model = make_iwrm_model()
            ddp = nn.parallel.DistributedDataParallel(
                model, find_unused_parameters=name.endswith("unused")
            )
            run(name, model, ddp, rank, world)
            params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            gathered = [torch.empty_like(params) for _ in range(world)]
            dist.all_gather(gathered, params)
            if rank == 0:
                torch.save(torch.stack(gathered), Path(out) / f"{name}.pt")
            dist.barrier()
    finally:
        dist.destroy_process_group()
    _exit_quietly()


def mismatch_worker(rank: int, world: int, port: int, out: str) -> None:
    """Rank 1 wraps a wider model: JDOptimizer must refuse, on every rank, before training."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        from jdopt import JDOptimizer

        model = nn.Linear(3, 2 + rank).double()
        ddp = _Wrapped(model)
        try:
            JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model=ddp, batch_dim=0)
        except ValueError as error:
            (Path(out) / f"refused{rank}.txt").write_text(str(error))
    finally:
        dist.destroy_process_group()
    _exit_quietly()


def decision_worker(rank: int, world: int, port: int, out: str) -> None:
    """Runs the one-decision cases (see ``_decisions``); each process saves what it did."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        from ._decisions import optimizer_cases, protocol_cases

        report = {"protocol": protocol_cases(rank), "optimizer": optimizer_cases(rank)}
        (Path(out) / f"decisions{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()
    _exit_quietly()


def collectives_worker(rank: int, world: int, port: int, out: str) -> None:
    """Runs the collectives' cases (see ``_collective_cases``); each process saves them."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        from ._collective_cases import collective_cases

        report = collective_cases(rank, world)
        (Path(out) / f"collectives{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()
    _exit_quietly()


class _Wrapped(nn.parallel.DistributedDataParallel):
    """A DDP model whose construction skips DDP's own (blocking) parameter check, to reach
    jdopt's check with models that differ between the processes."""

    def __init__(self, module: nn.Module) -> None:
        nn.Module.__init__(self)
        self.module = module


def _exit_quietly() -> None:
    """Ends a worker that succeeded without the interpreter's teardown, which gloo's threads
    can abort now and then ("terminate called without an active exception")."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
