"""Per-sample Jacobian descent over the global batch with DistributedDataParallel.

Each process holds a share of every batch. ``JDOptimizer(opt, model=ddp_model, batch_dim=0)``
makes the step exact Jacobian descent on the concatenation of all processes' per-sample losses:
every process builds the same global Gramian from the layers' gathered inputs and output
gradients, rank 0 computes the weights for all (or skips, or raises, for all), and the weighted
gradients are summed — the step one process would take on the whole batch. The data are generated.

Each process uses the GPU of its local rank (``LOCAL_RANK`` under torchrun) and NCCL when the
machine has a GPU for each of its processes; otherwise every process runs on the CPU, with gloo.

    torchrun --nproc_per_node=2 examples/ddp_iwrm.py
    python examples/ddp_iwrm.py --processes 2        # spawns the processes itself
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from jdopt import JDOptimizer
from jdopt.aggregation import UPGrad


def placement(local_rank: int, local_world: int, gpus: int) -> tuple[str, torch.device]:
    """The process group's backend and this process's device: NCCL and the GPU of the local
    rank when the machine has a GPU for each of its processes, gloo and the CPU otherwise."""
    if 0 < local_world <= gpus:
        return "nccl", torch.device("cuda", local_rank)
    return "gloo", torch.device("cpu")


def _gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _start(local_rank: int, local_world: int, **init) -> torch.device:
    """Joins the process group on this process's device (set first: NCCL uses it)."""
    backend, device = placement(local_rank, local_world, _gpus())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, **init)
    return device


def train(rank: int, world: int, device: torch.device, steps: int, batch: int) -> float:
    torch.manual_seed(0)  # the same initial model everywhere
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 1)).to(device)
    ddp = nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    jd = JDOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05), aggregator=UPGrad(), model=ddp, batch_dim=0
    )
    w = torch.randn(20, 1, generator=torch.Generator().manual_seed(1), device="cpu").to(device)
    losses = torch.zeros(1)
    for step in range(steps):
        g = torch.Generator().manual_seed(1000 * step + rank)  # each process its own share
        x = torch.randn(batch, 20, generator=g, device="cpu").to(device)
        y = torch.tanh(x @ w)
        losses = ((ddp(x) - y) ** 2).squeeze(1)  # [batch]: one loss per local sample
        jd.zero_grad()
        jd.step(losses)
        if rank == 0 and (step % max(steps // 5, 1) == 0 or step == steps - 1):
            print(f"step {step:4d}  mean local loss {float(losses.detach().mean()):.4f}")
    same = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    copies = [torch.empty_like(same) for _ in range(world)]
    dist.all_gather(copies, same)
    if rank == 0:
        print("parameters identical on every process:", all(torch.equal(c, same) for c in copies))
        print(f"weights of the last step: shape {tuple(jd.last_step.weights.shape)} (global batch)")
    return float(losses.detach().mean())


def _worker(rank: int, world: int, port: int, steps: int, batch: int) -> None:
    # One machine: the local rank is the rank.
    device = _start(rank, world, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        train(rank, world, device, steps, batch)
    finally:
        dist.destroy_process_group()
    # Skip the interpreter's teardown: gloo's threads can abort it now and then ("terminate
    # called without an active exception"), which would fail a run that succeeded.
    sys.stdout.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16, help="samples per process")
    parser.add_argument("--processes", type=int, default=2, help="without torchrun")
    args = parser.parse_args(argv)
    if "RANK" in os.environ:  # launched by torchrun
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = _start(local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        try:
            train(dist.get_rank(), dist.get_world_size(), device, args.steps, args.batch)
        finally:
            dist.destroy_process_group()
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(args.processes, port, args.steps, args.batch), nprocs=args.processes)


if __name__ == "__main__":
    main()
