"""JDOptimizer with a loss scalarizer: the weights from the losses alone, one ordinary
backward pass per step."""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from ._diagnostics import StepInfo
from ._losses import check_finite_losses
from ._step import Step, skip
from .scalarization import Scalarizer


def check_scalarizer(scalarizer: Scalarizer, engine: str, distributed: bool) -> None:
    """Raises where a scalarizer cannot take the steps: it needs no engine, and it does not run
    under torch.distributed yet (DDP's own gradient averaging would be the right step)."""
    if engine != "auto":
        raise ValueError(
            f"A scalarizer ({scalarizer}) needs neither engine: it weights the losses and one "
            f"ordinary backward pass follows. Leave `engine` at 'auto'. Found engine={engine!r}."
        )
    if distributed:
        raise ValueError(
            f"A scalarizer ({scalarizer}) does not run in JDOptimizer under torch.distributed "
            "yet. Use the scalarizer with the plain optimizer: `scalarizer(losses).backward()`, "
            "and DDP averages the gradients as usual."
        )


def join_optimizer(scalarizer: Scalarizer, optimizer: Optimizer) -> None:
    """Adds the scalarizer's learnable parameters (UW, IMTL-L) to ``optimizer`` as a group of
    their own, with its defaults, unless it holds them already."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    params = [p for p in scalarizer.parameters() if p.requires_grad and id(p) not in held]
    if params:
        optimizer.add_param_group({"params": params})


def scalarized_step(scalarizer: Scalarizer, step: Step, scale: float, scaling: bool) -> StepInfo:
    """``scale · scalarizer(losses / scale)``'s backward pass (the scalarizer sees the losses
    unscaled, the gradients keep the GradScaler's scale). Non-finite losses raise before
    anything changes, except under an enabled GradScaler, which skips the step (NaN
    gradients) without calling the scalarizer, whose state is left alone."""
    losses = step.losses
    if not bool(torch.isfinite(losses).all()):
        if not scaling:
            check_finite_losses(losses)
        skip(step.params)  # as a GradScaler skips an overflow, before the scalarizer's state
        return StepInfo("losses", None, None, skipped=True)
    values = losses / scale if scale != 1.0 else losses
    loss = scalarizer(values)
    (loss * scale if scale != 1.0 else loss).backward()
    return StepInfo("losses", None, None, skipped=False)


__all__ = ["check_scalarizer", "join_optimizer", "scalarized_step"]
