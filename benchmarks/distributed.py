"""Communication and step time of exact JD under DDP vs DDP's plain gradient all-reduce.

Spawns ``--processes`` processes: NCCL with one GPU each (``cuda:i``, ``cuda:i+1``, …) when
``--device`` is ``cuda[:i]`` and there are enough GPUs, gloo on the CPU otherwise. Each trains
the reference MLP (784-256-256-10) on its own ``--batch`` samples per step, once with plain
DDP (SGD on the mean loss) and once with ``JDOptimizer(model=ddp, batch_dim=0)`` and UPGrad or
Mean. Reports, per process and step, the bytes each sends (DDP: the gradient buckets it
all-reduces, counted by a communication hook; jdopt: the factors it gathers, the weights and the
gradients it reduces) and median step times (between two synchronisations of the GPU).

    python benchmarks/distributed.py [--processes 2] [--batch 64] [--repeats 20] [--device DEVICE]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import add_device_argument, synchronizer, timed_call

from jdopt import JDOptimizer
from jdopt.aggregation import Mean, UPGrad
from jdopt.distributed import bytes_sent, reset_bytes_sent


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def _counting_hook(counter: list[int]):
    def hook(state, bucket):
        tensor = bucket.buffer()
        counter[0] += tensor.numel() * tensor.element_size()
        work = dist.all_reduce(tensor, async_op=True)
        return work.get_future().then(lambda fut: fut.value()[0] / dist.get_world_size())

    return hook


def choose_backend(device: str, processes: int) -> tuple[str, int | None]:
    """``("nccl", i)`` (process ``r`` on ``cuda:i+r``) for a CUDA ``device`` ``cuda[:i]`` with
    GPUs ``i … i+processes-1`` and NCCL; ``("gloo", None)`` (on the CPU) otherwise."""
    where = torch.device(device)
    if where.type != "cuda" or not torch.cuda.is_available() or not dist.is_nccl_available():
        return "gloo", None
    first = where.index or 0
    if first + processes > torch.cuda.device_count():
        return "gloo", None
    return "nccl", first


def _time(step, repeats: int, device: torch.device) -> float:
    sync = synchronizer(device)
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        dist.barrier()
        times.append(timed_call(step, sync))
    return statistics.median(times)


def _worker(
    rank: int, world: int, port: int, batch: int, repeats: int, first_gpu: int | None
) -> None:
    device = torch.device("cpu") if first_gpu is None else torch.device("cuda", first_gpu + rank)
    backend = "gloo" if first_gpu is None else "nccl"
    options = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        options["device_id"] = device  # NCCL's communicators and barriers use this GPU
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, **options
    )
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(batch, 784, generator=g), torch.randint(0, 10, (batch,), generator=g)
    x, y = x.to(device), y.to(device)  # drawn on the CPU: the same batches on every device
    device_ids = None if device.type == "cpu" else [device.index]
    results = {}

    plain_model = mlp().to(device)
    ddp = nn.parallel.DistributedDataParallel(plain_model, device_ids=device_ids)
    counter = [0]
    ddp.register_comm_hook(None, _counting_hook(counter))
    plain = torch.optim.SGD(plain_model.parameters(), lr=1e-3)

    def plain_step() -> None:
        plain.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        plain.step()

    counter[0] = 0
    results["DDP (mean loss)"] = (_time(plain_step, repeats, device), counter[0] / (repeats + 3))

    for name, aggregator in [("jdopt UPGrad", UPGrad()), ("jdopt Mean", Mean())]:
        model = mlp().to(device)
        jd_ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        jd = JDOptimizer(
            torch.optim.SGD(model.parameters(), lr=1e-3),
            aggregator=aggregator,
            model=jd_ddp,
            batch_dim=0,
        )

        def jd_step(jd=jd, jd_ddp=jd_ddp) -> None:
            jd.zero_grad()
            jd.step(F.cross_entropy(jd_ddp(x), y, reduction="none"))

        reset_bytes_sent()
        elapsed = _time(jd_step, repeats, device)
        results[name] = (elapsed, bytes_sent() / (repeats + 3))
    if rank == 0:
        base_time, base_bytes = results["DDP (mean loss)"]
        on = "" if device.type == "cpu" else f" on {torch.cuda.get_device_name(device)}"
        print(
            f"torch {torch.__version__}, {backend}{on}, {world} processes, {batch} samples per "
            "process"
        )
        print(f"{'':18s} {'step (ms)':>10} {'ratio':>6} {'sent/step (KB)':>15} {'ratio':>6}")
        for name, (elapsed, sent) in results.items():
            print(
                f"{name:18s} {elapsed * 1e3:10.2f} {elapsed / base_time:6.2f} "
                f"{sent / 1024:15.1f} {sent / base_bytes:6.2f}"
            )
    dist.destroy_process_group()
    # Skip the interpreter's teardown, which gloo's threads can abort now and then.
    sys.stdout.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    add_device_argument(parser)
    args = parser.parse_args(argv)
    backend, first_gpu = choose_backend(args.device, args.processes)
    if torch.device(args.device).type != "cpu" and backend == "gloo":
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        print(
            f"--device {args.device}: {gpus} GPU(s) or no NCCL for {args.processes} processes; "
            "gloo on the CPU instead"
        )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker_args = (args.processes, port, args.batch, args.repeats, first_gpu)
    mp.spawn(_worker, args=worker_args, nprocs=args.processes)


if __name__ == "__main__":
    main()
