"""Times jdopt's native dual-cone solver against the per-row qpsolvers reference.

The work is one full UPGrad weighting: ``project_weights(diag(1/m), G)``, m problems sharing
one Gramian. Gramians come from ``J = A B`` (``A [m, r]``, ``B [r, 1000]``, Gaussian), normalised
by their trace and regularised by ``1e-4 I`` as UPGrad does: "rand" is full rank (``r = m``),
"lowrank" has ``r = 20``.

For each (m, family) it prints the native solver's median time, its relative KKT residual, the
largest relative difference to the reference (``max_i ‖v_i − v_i^ref‖∞ / ‖v_i^ref‖∞``) and the
reference's time (quadprog, one QP per row, as TorchJD does; OSQP with tight tolerances too with
``--osqp``). The reference takes seconds at m = 256 and minutes beyond: ``--reference-max-m``.

Usage::

    python benchmarks/dual_cone.py
    python benchmarks/dual_cone.py --sizes 64 256 --reference-max-m 0 --device cuda
    python benchmarks/dual_cone.py --sizes 32 --plan   # what runs, attempt by attempt
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import add_device_argument, synchronizer, timed_call

from jdopt._linalg import normalize, regularize
from jdopt.aggregation._dual_cone import describe, kkt_residual, plan_for, project_weights

FAMILIES = {"rand": None, "lowrank": 20}


def make_gramian(m: int, rank: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    left = torch.randn(m, rank, generator=generator, dtype=torch.float64)
    right = torch.randn(rank, 1000, generator=generator, dtype=torch.float64)
    jacobian = (left @ right).to(device)
    gramian = jacobian @ jacobian.T
    return regularize(normalize((gramian + gramian.T) / 2, 1e-4), 1e-4)


def median_time(function: Callable[[], torch.Tensor], device: torch.device, budget: float) -> float:
    """Median wall time in seconds, after two warm-up calls, over at least 3 repetitions."""
    function()
    function()
    sync = synchronizer(device)
    times: list[float] = []
    while len(times) < 3 or (sum(times) < budget and len(times) < 200):
        times.append(timed_call(function, sync))
    return statistics.median(times)


def relative_difference(weights: torch.Tensor, reference: torch.Tensor) -> float:
    scale = reference.abs().amax(dim=1).clamp_min(torch.finfo(reference.dtype).tiny)
    return float(((weights - reference).abs().amax(dim=1) / scale).max())


def run(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads")
    references = ["quadprog", *(["osqp"] if args.osqp else [])]
    for name in references:  # import qpsolvers and the backends before timing them
        project_weights(torch.ones(1, 1), torch.ones(1, 1), solver=name)
    header = f"{'m':>5} {'family':>8} {'native ms':>10} {'KKT':>8}"
    for name in references:
        header += f" {'diff ' + name:>14} {name + ' ms':>12}"
    print(header)
    for m in args.sizes:
        for family in args.families:
            gramian = make_gramian(m, FAMILIES[family] or m, device)
            preferences = torch.eye(m, dtype=gramian.dtype, device=device) / m
            weights = project_weights(preferences, gramian)
            solve = functools.partial(project_weights, preferences, gramian)
            seconds = median_time(solve, device, args.budget)
            residual = float(kkt_residual(weights, preferences, gramian).max())
            line = f"{m:>5} {family:>8} {seconds * 1e3:>10.2f} {residual:>8.1e}"
            for name in references:
                if m > args.reference_max_m:
                    line += f" {'-':>14} {'-':>12}"
                    continue
                start = time.perf_counter()
                reference = project_weights(preferences, gramian, solver=name)
                elapsed = time.perf_counter() - start
                difference = relative_difference(weights, reference)
                line += f" {difference:>14.1e} {elapsed * 1e3:>12.1f}"
            print(line, flush=True)
            if args.plan:
                print("      " + describe(plan_for(gramian)).replace("\n", "\n      "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024])
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument(
        "--budget", type=float, default=1.0, help="seconds of timed calls per case (default: 1)"
    )
    parser.add_argument(
        "--reference-max-m",
        type=int,
        default=256,
        help="largest m for which the (slow, per-row) reference runs, once (default: 256)",
    )
    parser.add_argument("--osqp", action="store_true", help="also compare with OSQP (slow)")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print the solver's plan for each case (see the "
        "table in jdopt/aggregation/_dual_cone/__init__.py)",
    )
    run(parser.parse_args())


if __name__ == "__main__":
    main()
