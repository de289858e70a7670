"""Loss settings: how losses of every supported shape are made from per-sample outputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def per_sample(out: Tensor) -> Tensor:
    """Three different losses per sample, from outputs ``[B, d]``: ``[B, 3]``."""
    return torch.stack(
        [((out - 0.5) ** 2).mean(dim=1), torch.sin(out).sum(dim=1), out[:, 0] * out[:, -1]],
        dim=1,
    )


def across_samples(out: Tensor) -> Tensor:
    """Four losses, each mixing the samples differently: ``[4]``."""
    return torch.stack(
        [
            ((out - 0.5) ** 2).mean(),
            torch.sin(out).sum(),
            (out[0] * out[-1]).sum(),
            torch.tanh(out[1:]).mean(),
        ]
    )


@dataclass(frozen=True)
class Setting:
    """A shape of losses with the ``batch_dim`` that describes it."""

    name: str
    batch_dim: int | None
    losses: Callable[[Tensor], Tensor]
    shape: Callable[[int], tuple[int, ...]]  # the losses' shape for a batch size


PER_SAMPLE = Setting("B", 0, lambda out: per_sample(out).sum(dim=1), lambda b: (b,))
SCALAR = Setting("scalar", None, lambda out: across_samples(out).sum(), lambda b: ())

# The settings every architecture must support.
SETTINGS = [
    PER_SAMPLE,
    SCALAR,
    Setting("B_k", 0, per_sample, lambda b: (b, 3)),
    Setting("k_B", 1, lambda out: per_sample(out).T, lambda b: (3, b)),
    Setting("m", None, across_samples, lambda b: (4,)),
]
