"""The one-decision cases: each runs on every process and reports what it did.

``decide_once`` alone (the collective), then JDOptimizer steps where only one process meets a
non-finite Gramian or an error: every process must do the same thing (all step with rank 0's
weights, all skip, or all raise the same error), and none may wait for another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

import jdopt.aggregation as agg
from jdopt import JDOptimizer
from jdopt.distributed._decision import Slot, decide_once

from ._scenarios import batch

Report = dict[str, object]


def _outcome(run: Callable[[], object]) -> Report:
    try:
        value = run()
    except Exception as error:
        return {"raised": type(error).__name__, "message": str(error)}
    return {"returned": value}


# --- decide_once alone -------------------------------------------------------------------------

_SLOTS = [Slot(3, torch.float64), Slot(4, torch.float32)]


def _values(rank: int) -> list[Tensor | None]:
    """Different on every process: only rank 0's may come back."""
    return [torch.arange(3, dtype=torch.float32) + 10 * rank, None]


def _shared(decide, veto: bool = False) -> object:
    outcome = decide_once(decide, _SLOTS, veto=torch.tensor(veto), device=torch.device("cpu"))
    if outcome.vetoed:
        return "vetoed"
    if outcome.values is None:
        return "skipped"
    return [None if v is None else [str(v.dtype), v.tolist()] for v in outcome.values]


class _OwnError(Exception):
    pass


def _fail(kind: type[Exception]):
    def decide():
        raise kind("rank 0 cannot decide")

    return decide


def protocol_cases(rank: int) -> dict[str, Report]:
    return {
        "solved": _outcome(lambda: _shared(lambda: _values(rank))),
        "skipped": _outcome(lambda: _shared(lambda: None)),
        "value_error": _outcome(lambda: _shared(_fail(ValueError))),
        "own_error": _outcome(lambda: _shared(_fail(_OwnError))),
        "wrong_size": _outcome(lambda: _shared(lambda: [torch.zeros(2), None])),
        "veto_by_rank1": _outcome(lambda: _shared(_fail(ValueError), veto=rank == 1)),
        "after": _outcome(lambda: _shared(lambda: _values(rank))),  # nobody was left behind
    }


# --- JDOptimizer steps -------------------------------------------------------------------------


class _FailsOnRank0(agg.Weighting):
    def forward(self, gramian: Tensor, /) -> Tensor:
        if dist.get_rank() == 0:
            raise ValueError("this weighting fails on rank 0")
        return torch.full((gramian.shape[0],), 1.0 / gramian.shape[0], dtype=gramian.dtype)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def _poison_on(jd: JDOptimizer, backend: str, rank: int) -> None:
    """Makes this process's Gramian NaN (through the backend's result), as a rounding that
    overflows on one process only would."""
    if dist.get_rank() != rank:
        return
    way = getattr(jd._backends, backend)
    compute = way.compute

    def poisoned(step):
        found = compute(step)
        if hasattr(found, "matrix"):
            return dataclasses.replace(found, matrix=found.matrix * torch.nan)
        return dataclasses.replace(found, blocks=[b * torch.nan for b in found.blocks])

    way.compute = poisoned


def _step(
    aggregator, *, engine: str = "auto", poison: tuple[str, int] | None = None, scaler=False
) -> object:
    model = _model()
    ddp = nn.parallel.DistributedDataParallel(model)
    grad_scaler = torch.amp.GradScaler("cpu", init_scale=4.0) if scaler else None
    jd = JDOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        aggregator=aggregator,
        model=ddp,
        batch_dim=0,
        engine=engine,
        scaler=grad_scaler,
    )
    if poison is not None:
        _poison_on(jd, *poison)
    before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = (t[rank::world] for t in batch(0))
    losses = ((ddp(x) - y) ** 2).mean(dim=1)
    jd.zero_grad()
    if grad_scaler is None:
        jd.step(losses)
    else:
        jd.backward(grad_scaler.scale(losses))
        grad_scaler.step(jd)
        grad_scaler.update()
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    jd.close()
    return {
        "engine": jd.last_step.engine,
        "skipped": jd.last_step.skipped,
        "moved": not torch.equal(before, after),
        "params": after.tolist(),
        "weights": None if jd.last_step.weights is None else jd.last_step.weights.tolist(),
    }


def optimizer_cases(rank: int) -> dict[str, Report]:
    seeded = torch.Generator().manual_seed(rank)  # each process its own draws
    return {
        "weighting_fails_on_rank0": _outcome(lambda: _step(_FailsOnRank0())),
        "weighting_fails_on_rank0_autojac": _outcome(
            lambda: _step(_FailsOnRank0(), engine="autojac")
        ),
        "nan_on_rank1": _outcome(lambda: _step(agg.UPGrad(), poison=("autogram", 1))),
        "nan_on_rank1_scaler": _outcome(
            lambda: _step(agg.UPGrad(), poison=("autogram", 1), scaler=True)
        ),
        "nan_on_rank0_scaler": _outcome(
            lambda: _step(agg.UPGrad(), poison=("autogram", 0), scaler=True)
        ),
        "nan_on_rank1_autojac": _outcome(
            lambda: _step(agg.UPGrad(), engine="autojac", poison=("autojac", 1))
        ),
        "random_weights": _outcome(lambda: _step(agg.Random(generator=seeded))),
        "random_update_autojac": _outcome(
            lambda: _step(agg.PCGrad(generator=seeded), engine="autojac")
        ),
        "after": _outcome(lambda: _step(agg.UPGrad())),  # nobody was left behind
    }
