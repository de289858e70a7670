"""Peak memory of a training step on the CPU: the growth of the process's maximum RSS.

Each measurement runs in a fresh subprocess: build the model and the batch, run one warm-up
step, record ``ru_maxrss``, run more steps, and report how much the maximum grew. On CUDA the
allocator's own peak counter is used instead.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable

import torch


def peak_growth_bytes(step: Callable[[], None], device: str, repeats: int = 3) -> int:
    step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(repeats):
            step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(repeats):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024


def measure_in_subprocess(script: str, args: list[str]) -> int:
    """Runs ``script --memory-of ... args`` in a new interpreter and returns its byte count."""
    out = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["bytes"]
