"""The backends on the full Jacobian: per-objective losses, and a multi-task trunk."""

from __future__ import annotations

from torch import Tensor

from ..autojac import accumulate, compute_jacobian, compute_mtl_jacobian
from ._backend import Backend, Jacobian, add_head_grads
from ._engine import EngineSlot
from ._inputs import Step


class Autojac(Backend):
    """The Jacobian of the losses over the optimizer's parameters, one block per parameter
    that the losses reach (needed by ConFIG, GradDrop, NashMTL, TrimmedMean, and without an
    engine)."""

    name = "autojac"

    def __init__(self, slot: EngineSlot, chunk_size: int | None) -> None:
        self.slot = slot
        self.chunk_size = chunk_size

    def compute(self, step: Step, /) -> Jacobian:
        self.slot.clear()  # the engine, if any, sits this step out
        blocks, used = compute_jacobian(step.losses, step.params, False, self.chunk_size)
        return Jacobian(blocks, used, step.losses.shape, self.name)

    def apply(self, found: Jacobian, update: Tensor | list[Tensor], /) -> None:
        # One block per parameter, or (from a distributed variant) the flat update [n].
        accumulate(update, found.params)
        add_head_grads(found.heads)


class MtlAutojac(Autojac):
    """A multi-task step on the Jacobian of the tasks over the trunk; the heads get their own
    gradients."""

    name = "autojac-mtl"

    def compute(self, step: Step, /) -> Jacobian:
        self.slot.clear()
        blocks, used, heads = compute_mtl_jacobian(
            step.losses, step.features, step.shared, step.heads, False, self.chunk_size, step.tasks
        )
        return Jacobian(blocks, used, step.losses.shape, self.name, heads)
