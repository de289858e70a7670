"""Slow, obviously correct references: one ``autograd.grad`` call per loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def jacobian_by_rows(losses: Tensor, params: Sequence[Tensor]) -> Tensor:
    """The Jacobian ``[m, n]`` of the flattened losses, one backward pass per row."""
    rows = []
    for loss in losses.reshape(-1):
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).reshape(-1)
                    for p, g in zip(params, grads, strict=True)
                ]
            )
        )
    return torch.stack(rows)


class Recorder:
    """An aggregator that records the Jacobian it receives and returns the sum of its rows."""

    def __init__(self) -> None:
        self.jacobian: Tensor | None = None

    def __call__(self, jacobian: Tensor) -> Tensor:
        self.jacobian = jacobian.clone()
        return jacobian.sum(dim=0)
