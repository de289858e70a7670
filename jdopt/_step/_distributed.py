"""The backends under ``torch.distributed``: one global step, identical on every process.

Each computes what the aggregator needs from the losses of *every* process (rows gathered for
per-sample losses, averaged for the processes' task losses, as DDP averages gradients), and
applies the weights or update of rank 0, so that the processes stay identical whatever the
method's randomness. The Gramian engine's multi-task path is per process: a distributed
multi-task step always takes the full Jacobian.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._ddp import sync_grads
from ..autojac import compute_jacobian, flatten_rows
from ..distributed import all_gather_cat, all_reduce_, broadcast_
from ._autogram import Autogram
from ._autojac import Autojac, MtlAutojac
from ._backend import Gramian, Jacobian
from ._engine import EngineSlot
from ._inputs import Step


class DistributedAutogram(Autogram):
    """The engine (built with ``distributed=True``) gives every process the global Gramian;
    each applies rank 0's weights to its own share of the losses."""

    def __init__(self, slot: EngineSlot, batch_dim: int | None) -> None:
        super().__init__(slot)
        self.batch_dim = batch_dim

    def apply(self, found: Gramian, weights: Tensor, /) -> None:
        super().apply(found, broadcast_(weights))

    def _backward(self, step: Step, weights: Tensor) -> None:
        if self.batch_dim is not None:  # this process's samples in the global batch
            offset, size = self.slot.engine.last_offset, step.losses.shape[self.batch_dim]
            weights = weights.narrow(self.batch_dim, offset, size)
        super()._backward(step, weights)
        sync_grads(step.params, mean=self.batch_dim is None)


class DistributedAutojac(Autojac):
    """The Jacobian of every process's losses, as one ``[M, n]`` block over every parameter
    (zero columns for those the losses do not reach, so that the processes' rows align)."""

    def __init__(self, slot: EngineSlot, chunk_size: int | None, batch_dim: int | None) -> None:
        super().__init__(slot, chunk_size)
        self.batch_dim = batch_dim

    def compute(self, step: Step, /) -> Jacobian:
        self.slot.clear()
        blocks, _ = compute_jacobian(step.losses, step.params, False, self.chunk_size, zeros=True)
        jacobian, shape = flatten_rows(blocks), step.losses.shape
        if self.batch_dim is None:  # the mean of the processes' losses
            all_reduce_([jacobian], mean=True)
        else:  # the processes' samples, in rank order
            rows = jacobian.reshape(*shape, -1).movedim(self.batch_dim, 0)
            rows = all_gather_cat(rows, 0).movedim(0, self.batch_dim)
            shape, jacobian = rows.shape[:-1], rows.reshape(-1, jacobian.shape[1])
        return Jacobian([jacobian], step.params, shape, self.name)

    def apply(self, found: Jacobian, update: list[Tensor], /) -> None:
        super().apply(found, _broadcast(update))


class DistributedMtlAutojac(MtlAutojac):
    """The Jacobian of the mean of the processes' task losses over the trunk, and the mean of
    the heads' gradients."""

    def compute(self, step: Step, /) -> Jacobian:
        found = super().compute(step)
        all_reduce_([*found.blocks, *(grad for _, grad in found.heads)], mean=True)
        return found

    def apply(self, found: Jacobian, update: list[Tensor], /) -> None:
        super().apply(found, _broadcast(update))


def _broadcast(update: list[Tensor]) -> Tensor:
    """Rank 0's update, flat ``[n]``: its blocks are sent in one buffer."""
    return broadcast_(update[0] if len(update) == 1 else torch.cat(update))
