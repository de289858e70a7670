"""The backends under ``torch.distributed``: one global step, identical on every process.

Each computes what the aggregator needs from the losses of *every* process (rows gathered for
per-sample losses, averaged for the processes' task losses, as DDP averages gradients). Rank 0
alone decides the step — the weights or the update, a skip, or an error — and every process
acts on its decision (:meth:`OneDecision.settle`): the processes stay identical whatever the
method's randomness or rounding, and none waits in a collective that another left. The Gramian
engine's multi-task path is per process: a distributed multi-task step always takes the full
Jacobian.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._ddp import sync_grads
from ..autojac import compute_jacobian, flatten_rows
from ..distributed import Slot, all_gather_cat, all_reduce_, decide_once, rank
from ._autogram import Autogram
from ._autojac import Autojac, MtlAutojac
from ._backend import Decision, Found, Jacobian, Solve
from ._engine import EngineSlot
from ._inputs import Step


class OneDecision:
    """Rank 0's decision for the step, on every process.

    :meth:`settle` runs the optimizer's ``solve`` on rank 0 only and sends its outcome to the
    other processes with the values, in one collective (see ``jdopt.distributed._decision``);
    the pipeline hands the settled change to :meth:`apply`, so every process applies rank 0's.
    """

    def settle(self, found: Found, gramian: Tensor, solve: Solve, /) -> Decision | None:
        """The step's decision, identical on every process: rank 0's ``solve(gramian)``.

        Args:
            found: what :meth:`compute` returned.
            gramian: this process's unscaled Gramian ``[m, m]``.
            solve: the optimizer's decision for a Gramian: ``(weights, change)``, or ``None``
                to skip the step; for a non-finite Gramian it skips or raises, and nothing
                else. It runs on rank 0; when the Gramian of another process is not finite, it
                runs on every process with a NaN Gramian, so that all skip or all raise the
                same error.

        Returns:
            ``(weights, change)``: the weights in ``found.shape`` (or ``None``), and the
            change, rank 0's, on every process: the weights for a :class:`Gramian`, the flat
            update ``[n]`` for a :class:`Jacobian`; ``None`` when the step is skipped.

        Raises:
            The error ``solve`` raised on rank 0, on every process.
        """
        jacobian = isinstance(found, Jacobian)

        def on_rank0() -> list[Tensor | None] | None:
            decision = solve(gramian)
            if decision is None:
                return None
            weights, change = decision
            if not jacobian:
                return [weights]
            flat = change if isinstance(change, Tensor) else torch.cat(
                [part.reshape(-1) for part in change]
            )  # fmt: skip
            return [weights, flat]

        # Rank 0's own Gramian is solve's to judge; the others' can veto the step.
        veto = None if rank() == 0 else ~torch.isfinite(gramian).all()
        outcome = decide_once(on_rank0, _slots(found), veto=veto, device=gramian.device)
        if outcome.vetoed:
            decision = solve(torch.full_like(gramian, torch.nan))
            if decision is not None:
                raise RuntimeError("`solve` must skip or raise on a non-finite Gramian.")
            return None
        if outcome.values is None:
            return None
        weights, *update = outcome.values
        weights = None if weights is None else weights.reshape(found.shape)
        return weights, update[0] if jacobian else weights


def _slots(found: Found) -> list[Slot]:
    """What rank 0 sends: the weights (in float64: any dtype travels exactly), and for a
    Jacobian the flat update, in its blocks' dtype."""
    slots = [Slot(found.shape.numel(), torch.float64)]
    if isinstance(found, Jacobian):
        dtype = found.blocks[0].dtype
        for block in found.blocks[1:]:
            dtype = torch.promote_types(dtype, block.dtype)
        slots.append(Slot(sum(block.shape[1] for block in found.blocks), dtype))
    return slots


class DistributedAutogram(OneDecision, Autogram):
    """The engine (built with ``distributed=True``) gives every process the global Gramian;
    each applies rank 0's weights to its own share of the losses."""

    def __init__(self, slot: EngineSlot, batch_dim: int | None) -> None:
        super().__init__(slot)
        self.batch_dim = batch_dim

    def _backward(self, step: Step, weights: Tensor) -> None:
        if self.batch_dim is not None:  # this process's samples in the global batch
            offset, size = self.slot.engine.last_offset, step.losses.shape[self.batch_dim]
            weights = weights.narrow(self.batch_dim, offset, size)
        super()._backward(step, weights)
        sync_grads(step.params, mean=self.batch_dim is None)


class DistributedAutojac(OneDecision, Autojac):
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


class DistributedMtlAutojac(OneDecision, MtlAutojac):
    """The Jacobian of the mean of the processes' task losses over the trunk, and the mean of
    the heads' gradients."""

    def compute(self, step: Step, /) -> Jacobian:
        found = super().compute(step)
        all_reduce_([*found.blocks, *(grad for _, grad in found.heads)], mean=True)
        return found
