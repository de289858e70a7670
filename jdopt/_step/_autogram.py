"""The backends on the Gramian engine: per-objective losses, and a multi-task trunk."""

from __future__ import annotations

from torch import Tensor

from .._linalg import flatten_generalized
from ..autojac import feature_cotangents
from ._backend import Backend, Gramian, add_head_grads
from ._engine import EngineSlot
from ._inputs import Step


class Autogram(Backend):
    """The Gramian from the activations of the hooked layers, in one backward pass.

    The weighted gradient comes from the engine's saved factors when the engine covers every
    parameter of the step; otherwise (partial Jacobian descent: the Gramian of some layers,
    the weights applied to the whole model) from ``losses.backward(weights)``.
    """

    name = "autogram"

    def __init__(self, slot: EngineSlot) -> None:
        self.slot = slot

    def compute(self, step: Step, /) -> Gramian:
        from_factors = self.slot.covers(step.params)
        # From the saved factors, the graph can go as soon as the Gramian's pass has used it.
        generalized = self.slot.engine.compute_gramian(step.losses, retain_graph=not from_factors)
        shape = generalized.shape[: generalized.ndim // 2]
        return Gramian(flatten_generalized(generalized), shape, self.name, step, from_factors)

    def apply(self, found: Gramian, weights: Tensor, /) -> None:
        # The losses carry the scale, so Σ wᵢ ∇(scaled Lᵢ) is already in the scaler's space.
        if found.from_factors:
            self.slot.engine.accumulate_grads(weights)
        else:
            self._backward(found.step, weights)

    def _backward(self, step: Step, weights: Tensor) -> None:
        step.losses.backward(weights.to(step.losses.dtype))


class MtlAutogram(Backend):
    """A multi-task step with the trunk on the Gramian engine: each task's gradient at the
    features (one pass through the heads), then the trunk's ``[k, k]`` Gramian from those
    cotangents; the heads get their own gradients.

    Declines the step when a shared parameter reaches the losses around the features (the
    trunk's Jacobian is then not a function of the cotangents).
    """

    name = "autogram-mtl"

    def __init__(self, slot: EngineSlot, chunk_size: int | None) -> None:
        self.slot = slot
        self.chunk_size = chunk_size

    def compute(self, step: Step, /) -> Gramian | None:
        found = feature_cotangents(
            step.losses, step.features, step.shared, step.heads, self.chunk_size, step.tasks
        )
        if found is None:
            return None
        reached, cotangents, heads = found
        gramian = self.slot.engine.compute_gramian_of_rows(reached, cotangents, retain_graph=False)
        return Gramian(gramian, step.losses.shape, self.name, step, True, heads)

    def apply(self, found: Gramian, weights: Tensor, /) -> None:
        self.slot.engine.accumulate_grads(weights.reshape(-1))
        add_head_grads(found.heads)
