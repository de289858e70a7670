"""The reads of device values on the host per step, counted on any device (``HostReads``).

On a GPU each read waits for the work queued before it, so a steady-state step reads at most
four times: JDOptimizer's checks once, and, with the solver's options for accelerators
(``SolverOptions.for_device``), the dual-cone solver twice (the facts of its plan, the final
check). The engines read nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from jdopt import JDOptimizer
from jdopt.aggregation import MeanWeighting, SolverOptions, UPGrad
from jdopt.aggregation._dual_cone import ON_ACCELERATORS, for_device
from tests.utils.device import DEVICE, draw, draw_integers, seeded
from tests.utils.host_reads import HostReads

BUDGET = 4


def _per_sample(batch: int, aggregator) -> Callable[[int], JDOptimizer]:
    """A step of an MLP with one loss per sample on a fresh batch, and its optimizer."""
    generator = seeded(batch)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).to(DEVICE)
    jd = JDOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.01),
        aggregator=aggregator,
        model=model,
        batch_dim=0,
        engine="autogram",
    )

    def step(_: int) -> JDOptimizer:
        x = draw(batch, 32, generator=generator)
        y = draw_integers(0, 10, (batch,), generator=generator)
        jd.zero_grad()
        jd.step(nn.functional.cross_entropy(model(x), y, reduction="none"))
        return jd

    return step


def _multi_task(engine: str, aggregator) -> Callable[[int], JDOptimizer]:
    """A step of a trunk with four task heads (``features=``), and its optimizer."""
    generator = seeded(7)
    trunk = nn.Sequential(nn.Linear(32, 64), nn.ReLU()).to(DEVICE)
    heads = nn.ModuleList(nn.Linear(64, 1) for _ in range(4)).to(DEVICE)
    params = [*trunk.parameters(), *heads.parameters()]
    model = trunk if engine == "autogram" else None
    jd = JDOptimizer(
        torch.optim.SGD(params, lr=0.01), aggregator=aggregator, model=model, engine=engine
    )

    def step(_: int) -> JDOptimizer:
        features = trunk(draw(64, 32, generator=generator))
        jd.zero_grad()
        jd.step(torch.stack([head(features).pow(2).mean() for head in heads]), features=features)
        return jd

    return step


CASES = {
    "autogram, B = 64": lambda a: _per_sample(64, a),
    "autogram, B = 256": lambda a: _per_sample(256, a),
    "autojac multi-task, 4 tasks": lambda a: _multi_task("autojac", a),
    "autogram multi-task (features=), 4 tasks": lambda a: _multi_task("autogram", a),
}
ENGINES = {
    "autogram, B = 64": "autogram",
    "autogram, B = 256": "autogram",
    "autojac multi-task, 4 tasks": "autojac-mtl",
    "autogram multi-task (features=), 4 tasks": "autogram-mtl",
}


def _reads_per_step(step: Callable[[int], JDOptimizer], warm_up: int = 3) -> list[int]:
    for index in range(warm_up):
        step(index)
    counts = []
    for index in range(warm_up, warm_up + 3):
        with HostReads() as reads:
            step(index)
        counts.append(reads.total)
    return counts


@pytest.mark.parametrize("case", list(CASES))
def test_a_steady_state_upgrad_step_reads_the_device_at_most_four_times(case: str) -> None:
    step = CASES[case](UPGrad(options=ON_ACCELERATORS))
    counts = _reads_per_step(step)
    assert step(99).last_step.engine == ENGINES[case]
    assert max(counts) <= BUDGET, counts


@pytest.mark.parametrize("case", list(CASES))
def test_jdoptimizer_and_the_engines_read_the_device_once_per_step(case: str) -> None:
    """With a weighting that reads nothing, what is left is JDOptimizer's checks."""
    counts = _reads_per_step(CASES[case](MeanWeighting()))
    assert counts == [1, 1, 1]


def test_the_default_solver_options_check_once_on_accelerators_only() -> None:
    assert not for_device(torch.device("cpu")).check_once
    assert for_device(torch.device("cuda")).check_once
    assert for_device(torch.device("cuda", 1)) == ON_ACCELERATORS
    assert SolverOptions(check_once=True) == ON_ACCELERATORS


def test_host_reads_counts_each_kind_of_read() -> None:
    """Nine reads, one of each kind, and arithmetic that reads nothing."""
    t = torch.arange(6.0, device=DEVICE)
    with HostReads() as reads:
        t.sum().item()
        bool(t.any())
        float(t.max())
        t.tolist()
        t.nonzero()
        t[t > 2]
        t.cpu().numpy()
        with torch.inference_mode():
            float(t.max())
            int(t.count_nonzero())
        t + 1
        t @ t
    assert reads.total == 9, reads.counts
