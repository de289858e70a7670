"""Spawns the gloo processes of a distributed test, and gives up after a timeout (a process
that waits for another in a collective would otherwise hang the test run)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import torch.multiprocessing as mp

TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(world: int, out: Path, target: Callable, timeout_s: float = TIMEOUT_S) -> None:
    """Runs ``target(rank, world, port, str(out))`` in ``world`` processes; a TimeoutError if
    they do not all finish within ``timeout_s``."""
    context = mp.start_processes(
        target, args=(world, _free_port(), str(out)), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the {world} processes did not finish within {timeout_s} s")
