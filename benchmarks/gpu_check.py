"""One command for a machine with a CUDA GPU: what holds there, in one Markdown report.

It runs, each with its own time limit (about 8 minutes in all on an H100):

1. the environment: torch, CUDA, the GPU, the TF32 flags, jdopt;
2. the whole test suite with ``JDOPT_DEVICE=<device>`` (``tests/conftest.py`` sets the default
   device);
3. ``benchmarks/iwrm.py``, ``benchmarks/models.py`` and ``benchmarks/dual_cone.py`` on the
   device;
4. the host reads of steady-state ``step``s (``tests/utils/host_reads.py``) and their
   synchronisations (``torch.cuda.set_sync_debug_mode``), with TF32 off and on.

Usage::

    python benchmarks/gpu_check.py                      # report in gpu_report.md
    python benchmarks/gpu_check.py --report $OUT/gpu.md --skip models
    python benchmarks/gpu_check.py --device cpu --quick # a dry run of the script itself

A section that fails or runs out of time is reported as such; the others still run.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("env", "tests", "iwrm", "models", "dual_cone", "syncs")


def environment(device: torch.device) -> str:
    """The versions, the device and the TF32 flags, as Markdown lines."""
    import jdopt

    lines = [
        f"- python {platform.python_version()}, torch {torch.__version__}, jdopt "
        f"{jdopt.__version__}",
        f"- device `{device}`",
        f"- TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, cudnn "
        f"{torch.backends.cudnn.allow_tf32}",
    ]
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        lines.append(
            f"- {properties.name}, {properties.total_memory / 2**30:.0f} GiB, CUDA "
            f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
        )
    return "\n".join(lines)


def run(command: list[str], device: torch.device, limit: float) -> str:
    """Runs ``command`` from the repository's root with ``JDOPT_DEVICE`` set; returns its
    exit status, time and the tail of its output as Markdown."""
    environ = {**os.environ, "JDOPT_DEVICE": str(device)}
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=limit
        )
        status, output = f"exit {done.returncode}", done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        status = f"stopped after {limit:.0f} s"
        output = _text(expired.stdout) + _text(expired.stderr)
    tail = "\n".join(output.strip().splitlines()[-40:])
    seconds = time.perf_counter() - start
    return f"`{' '.join(command)}`: {status}, {seconds:.0f} s\n\n```\n{tail}\n```"


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""


def syncs(device: torch.device, quick: bool) -> str:
    """Host reads and synchronisations per steady-state step, for the autogram engine with
    UPGrad at B = 64 and 256 on an MLP and for a multi-task step with 4 tasks, TF32 off and
    on: the reads counted by ``tests/utils/host_reads.py`` (any device; the suite's budget is
    4) and, on CUDA, the synchronising calls that CUDA's sync debug mode reports."""
    cuda = device.type == "cuda"
    rows = ["| case | TF32 | host reads | syncs (debug mode) |", "|---|---|---|---|"]
    for tf32 in (False, True) if cuda else (False,):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        for name, step in _sync_cases(device, quick):
            reads = _count_reads(step)
            synced = _count_syncs(step) if cuda else "needs CUDA"
            rows.append(f"| {name} | {'on' if tf32 else 'off'} | {reads} | {synced} |")
    return "\n".join(rows)


def _sync_cases(device: torch.device, quick: bool) -> list[tuple[str, object]]:
    from torch import nn

    from jdopt import JDOptimizer

    cases = []
    for batch in (64,) if quick else (64, 256):
        model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).to(device)
        jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.01), model=model, batch_dim=0)
        x = torch.randn(batch, 32, device=device)
        y = torch.randint(0, 10, (batch,), device=device)

        def step(model=model, jd=jd, x=x, y=y) -> None:
            jd.zero_grad()
            jd.step(nn.functional.cross_entropy(model(x), y, reduction="none"))

        cases.append((f"autogram + UPGrad, MLP, B = {batch}", step))
    trunk = nn.Sequential(nn.Linear(32, 64), nn.ReLU()).to(device)
    heads = nn.ModuleList(nn.Linear(64, 1) for _ in range(4)).to(device)
    params = [*trunk.parameters(), *heads.parameters()]
    jd_mtl = JDOptimizer(torch.optim.SGD(params, lr=0.01), engine="autojac")
    x = torch.randn(64, 32, device=device)

    def mtl_step() -> None:
        jd_mtl.zero_grad()
        features = trunk(x)
        losses = torch.stack([head(features).pow(2).mean() for head in heads])
        jd_mtl.step(losses, features=features)

    cases.append(("autojac multi-task, 4 tasks", mtl_step))
    return cases


def _count_reads(step) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.utils.host_reads import HostReads

    for _ in range(5):  # past the first steps' measurements and caches
        step()
    with HostReads() as reads:
        step()
    return reads.total


def _count_syncs(step) -> int:
    for _ in range(5):  # past the first steps' measurements and caches
        step()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=os.environ.get("JDOPT_DEVICE", "cuda"))
    parser.add_argument("--report", default="gpu_report.md", help="the Markdown file written")
    parser.add_argument("--skip", nargs="*", default=[], choices=SECTIONS)
    parser.add_argument("--quick", action="store_true", help="small settings (a dry run)")
    args = parser.parse_args()
    device = torch.device(args.device)
    python, quick = sys.executable, args.quick
    commands = {
        "tests": ([python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"], 300),
        "iwrm": (
            [python, "benchmarks/iwrm.py", "--device", str(device), "--no-memory"]
            + (["--repeats", "3", "--batch", "16"] if quick else []),
            60,
        ),
        "models": (
            [python, "benchmarks/models.py", "--device", str(device), "--no-memory"]
            + (["--repeats", "2", "--warmup", "1", "--batch", "2"] if quick else []),
            120,
        ),
        "dual_cone": (
            [python, "benchmarks/dual_cone.py", "--device", str(device), "--reference-max-m", "0"]
            + (["--sizes", "32", "--budget", "0.1"] if quick else []),
            60,
        ),
    }
    parts = [f"# jdopt on `{device}`"]
    for section in SECTIONS:
        if section in args.skip:
            continue
        start = time.perf_counter()
        if section == "env":
            body = environment(device)
        elif section == "syncs":
            body = syncs(device, quick)
        else:
            command, limit = commands[section]
            body = run(command, device, limit)
        parts.append(f"## {section} ({time.perf_counter() - start:.0f} s)\n\n{body}")
        print(parts[-1], flush=True)
    Path(args.report).write_text("\n\n".join(parts) + "\n")
    print(f"report written to {args.report}")


if __name__ == "__main__":
    main()
