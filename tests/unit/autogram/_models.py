"""Small models and inputs shared by the engine's tests (the zoo is ``tests/utils``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tests.utils.architectures import ARCHITECTURES, Architecture
from tests.utils.device import draw, draw_integers, seeded

from ._settings import PER_SAMPLE

F64 = torch.float64
B = 4  # the batch size of the small models' inputs


def mlp() -> nn.Sequential:
    """``3 → 5 → 4 → 2``, tanh between the layers, in float64."""
    torch.manual_seed(0)
    layers = [nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)]
    return nn.Sequential(*layers).to(F64)


def mlp_inputs(batch: int = 5, seed: int = 1) -> Tensor:
    """Inputs ``[batch, 3]`` of :func:`mlp`."""
    return randn(batch, 3, seed=seed)


def mlp_losses(model: nn.Module, x: Tensor) -> Tensor:
    """Per-sample losses ``[batch]`` of :func:`mlp` on ``x``."""
    return PER_SAMPLE.losses(model(x))


def randn(*shape: int, seed: int = 1) -> Tensor:
    return draw(*shape, generator=seeded(seed), dtype=F64)


def indices(seed: int = 1) -> Tensor:
    """Token indices ``[B, 3]`` below 7."""
    return draw_integers(0, 7, (B, 3), generator=seeded(seed))


def by_name(name: str) -> Architecture:
    """The zoo's architecture of that name."""
    return next(arch for arch in ARCHITECTURES if arch.name == name)


def all_hooks_removed(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())
