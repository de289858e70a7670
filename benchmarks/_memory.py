"""Peak memory of a training step on the CPU: how far the resident set grows during it.

Each measurement runs in a fresh subprocess whose allocator hands every block over 64 KiB back
to the system when it is freed (``MALLOC_MMAP_THRESHOLD_``), so the resident set follows the
live tensors. After a warm-up step, the kernel's peak counter is reset (``/proc/self/clear_refs``)
and the peak of the next steps above the resident set before them is reported. On CUDA the
allocator's own peak counter is used instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import torch


def peak_growth_bytes(step: Callable[[], None], device: str, repeats: int = 3) -> int:
    step()
    where = torch.device(device)
    if where.type == "cuda":
        torch.cuda.synchronize(where)
        torch.cuda.reset_peak_memory_stats(where)
        base = torch.cuda.memory_allocated(where)
        for _ in range(repeats):
            step()
        torch.cuda.synchronize(where)
        return torch.cuda.max_memory_allocated(where) - base
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak resident set
    base = _status("VmRSS")
    for _ in range(repeats):
        step()
    return (_status("VmHWM") - base) * 1024


def _status(field: str) -> int:
    """A field of /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def measure_in_subprocess(script: str, args: list[str]) -> int:
    """Runs ``script --memory-of ... args`` in a new interpreter and returns its byte count."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, check=True, env=env
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["bytes"]
