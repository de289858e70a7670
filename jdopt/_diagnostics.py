"""What JDOptimizer reports about each step, computed from the Gramian when asked for."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor


@dataclass(frozen=True)
class StepInfo:
    """Diagnostics of the last ``backward``, read from ``JDOptimizer.last_step``.

    All tensors are on the parameters' device; the derived ones are computed on first access,
    so an unread diagnostic costs nothing.

    Attributes:
        engine: the backend that took the step: ``"autogram"`` or ``"autojac"``, and for
            multi-task steps (``features=``) ``"autogram-mtl"`` or ``"autojac-mtl"``;
            ``"losses"`` for a scalarizer (one ordinary backward pass).
        weights: the weights given to the losses, in the losses' shape (of every process's
            losses under DDP); ``None`` for aggregators that are not weighted (ConFIG,
            GradDrop, TrimmedMean) and for skipped steps.
        gramian: ``[m, m]`` inner products of the gradients of the (flattened) losses;
            ``None`` for a scalarizer, which computes no gradient of a single loss (so neither
            are the diagnostics derived from it).
        skipped: whether the Jacobian had inf/NaN entries (with a GradScaler: the scaler
            skips the step and lowers its scale).
    """

    engine: str
    weights: Tensor | None
    gramian: Tensor | None
    skipped: bool = False

    @cached_property
    def cosine_similarities(self) -> Tensor:
        """``[m, m]`` pairwise cosine similarities of the gradients (0 for a zero gradient)."""
        norms = self.gramian.diagonal().clamp(min=0.0).sqrt()
        outer = norms.unsqueeze(0) * norms.unsqueeze(1)
        return torch.where(outer > 0, self.gramian / outer.where(outer > 0, 1.0), 0.0)

    @cached_property
    def conflict_fraction(self) -> Tensor:
        """Fraction of the ``m(m-1)/2`` pairs of gradients with a negative inner product
        (0-d tensor; 0 when ``m = 1``)."""
        m = self.gramian.shape[0]
        upper = torch.ones(m, m, dtype=torch.bool, device=self.gramian.device).triu(diagonal=1)
        return ((self.gramian < 0) & upper).sum() / max(m * (m - 1) // 2, 1)


def step_info(engine: str, gramian: Tensor, weights: Tensor | None, skipped: bool) -> StepInfo:
    weights = None if weights is None else weights.detach()
    return StepInfo(engine, weights, gramian.detach(), skipped)
