"""How objectives map onto the activations of a hooked module.

Objectives are indexed by ``(s, b)``: ``s`` runs over the ``S`` backward *slices* (1 for
per-sample losses ``[B]``, ``k`` for ``[B, k]``, ``m`` for ``m`` losses without a batch
dimension) and ``b`` over the ``B'`` *rows* of the activations. With a batch dimension, the rows
are the samples (``B' = B``, dim 0 of the activations); without one, there is a single row
(``B' = 1``) and every sample is just another position. Rules see activations as
``[B', N, ...]`` (``N = 1`` or ``B``) and output gradients as ``[S, B', N, ...]``, so one
formula serves every case.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Layout:
    """How this step's objectives map onto a layer's activations (see the module docstring).

    Args:
        slices: ``S``, the backward slices.
        per_sample: whether the losses have a batch dimension (rows are samples).
    """

    slices: int
    per_sample: bool

    def rows(self, t: Tensor, axis: int = 0) -> Tensor:
        """An activation ``[B, ...]`` (batch at ``axis``) viewed as ``[B', N, ...]``."""
        t = t.movedim(axis, 0)
        return t.unsqueeze(1) if self.per_sample else t.unsqueeze(0)

    def grad_rows(self, dy: Tensor, axis: int = 0) -> Tensor:
        """An output gradient ``[S, B, ...]`` (batch at ``1 + axis``) as ``[S, B', N, ...]``."""
        dy = dy.movedim(1 + axis, 1)
        return dy.unsqueeze(2) if self.per_sample else dy.unsqueeze(1)

    def objectives(self, batch: int) -> int:
        return self.slices * (batch if self.per_sample else 1)
