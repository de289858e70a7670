"""The distributed scenarios: each trains a tiny float64 model for a few steps.

``run(name, model, batch, rank, world)`` does the steps of scenario ``name`` on this process's
share of the global batch (``rank``/``world``; ``world = 1`` and ``rank = 0`` is the
single-process reference on the whole batch). Every scenario uses the same seeded model and
global batch, so the runs can be compared parameter by parameter.
"""

from __future__ import annotations

import torch
from torch import nn

import jdopt.aggregation as agg
from jdopt import JDOptimizer

GLOBAL_BATCH = 8
STEPS = 2


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 6), nn.Tanh(), nn.Conv1d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(12, 3)
    ).double()


class _Unsqueeze(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1)


def make_iwrm_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 6), nn.Tanh(), _Unsqueeze(), nn.Conv1d(1, 2, 3, padding=1), nn.Flatten(),
        nn.Linear(12, 3),
    ).double()  # fmt: skip


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10 + step)
    # Drawn on the CPU (the generator's device), then on this process's default device.
    x = torch.randn(GLOBAL_BATCH, 5, generator=g, dtype=torch.float64, device="cpu")
    y = torch.randn(GLOBAL_BATCH, 3, generator=g, dtype=torch.float64, device="cpu")
    return x.to(torch.get_default_device()), y.to(torch.get_default_device())


def _share(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    size = GLOBAL_BATCH // world
    return t[rank * size : (rank + 1) * size]


def _aggregator(name: str):
    if name.startswith("mgda"):
        return agg.MGDA()
    if name.startswith("pcgrad"):
        return agg.PCGrad(generator=torch.Generator().manual_seed(0))
    return agg.UPGrad()


SCENARIOS = [
    "upgrad_B",
    "mgda_B",
    "pcgrad_B",
    "upgrad_Bk",
    "upgrad_B_unused",
    "mtl_features",
    "tasks_no_model",
]


def run(name: str, model: nn.Module, wrapped: nn.Module, rank: int, world: int) -> None:
    """Trains ``model`` (wrapped as ``wrapped``, e.g. in DDP) for ``STEPS`` steps."""
    if name == "mtl_features":
        return _run_mtl(model, wrapped, rank, world)
    if name == "tasks_no_model":
        return _run_tasks(model, wrapped, rank, world)
    batch_dim = 0
    jd = JDOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5),
        aggregator=_aggregator(name),
        model=wrapped,
        batch_dim=batch_dim,
    )
    for step in range(STEPS):
        x, y = (_share(t, rank, world) for t in batch(step))
        errors = (wrapped(x) - y) ** 2  # [b, 3]
        losses = errors if name.endswith("Bk") else errors.mean(dim=1)
        jd.zero_grad()
        jd.step(losses)
    assert jd.last_step.engine == "autogram"
    return None


def _run_mtl(model: nn.Module, wrapped: nn.Module, rank: int, world: int) -> None:
    """Task losses (one per output column), Jacobian descent on the trunk (autojac)."""
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model=wrapped, engine="autojac")
    for step in range(STEPS):
        x, y = (_share(t, rank, world) for t in batch(step))
        features = wrapped(x)  # the trunk is the whole model here; heads are fixed maps
        losses = torch.stack([((features[:, k] - y[:, k]) ** 2).mean() for k in range(3)])
        jd.zero_grad()
        jd.step(losses, features=features)
    assert jd.last_step.engine == "autojac-mtl"


def _run_tasks(model: nn.Module, wrapped: nn.Module, rank: int, world: int) -> None:
    """Task losses and no ``model=``: the autojac engine on the optimizer's parameters."""
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=agg.MGDA())
    for step in range(STEPS):
        x, y = (_share(t, rank, world) for t in batch(step))
        losses = ((wrapped(x) - y) ** 2).mean(dim=0)  # [3]: one loss per output
        jd.zero_grad()
        jd.step(losses)
    assert jd.last_step.engine == "autojac"
