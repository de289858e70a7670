"""The interface every backend of JDOptimizer's step implements, and what it hands over."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..autojac import add_grad
from ._inputs import Step


@dataclass(frozen=True)
class Gramian:
    """A backend's Gramian of the flattened losses, in the GradScaler's space (``scale² G``).

    Attributes:
        matrix: ``[m, m]``, ``m`` the number of objectives.
        shape: the objectives' shape (the weights take it).
        engine: the name of the way it was computed, reported by ``JDOptimizer.last_step``.
        step: the step it belongs to.
        from_factors: whether the weighted gradient comes from the Gramian engine's saved
            factors (else from ``losses.backward(weights)``).
        heads: ``(parameter, gradient)`` of a multi-task step's heads, added as they are.
    """

    matrix: Tensor
    shape: torch.Size
    engine: str
    step: Step
    from_factors: bool
    heads: list[tuple[Tensor, Tensor]] = field(default_factory=list)


@dataclass(frozen=True)
class Jacobian:
    """A backend's Jacobian, in the GradScaler's space (``scale J``), one block per parameter.

    A Gramian-based method never needs it as one ``[m, n]`` matrix: its Gramian is the sum of
    the blocks' Gramians, and its update ``wᵀJ`` is computed block by block.

    Attributes:
        blocks: ``[m, nᵢ]``, one per entry of ``params`` (or, gathered over the processes,
            one ``[m, n]`` block over all of them).
        params: the parameters the blocks cover (the update goes into their ``.grad``).
        shape: the objectives' shape.
        engine: the name of the way it was computed, reported by ``JDOptimizer.last_step``.
        heads: ``(parameter, gradient)`` of a multi-task step's heads, added as they are.
    """

    blocks: list[Tensor]
    params: list[Tensor]
    shape: torch.Size
    engine: str
    heads: list[tuple[Tensor, Tensor]] = field(default_factory=list)


Found = Gramian | Jacobian

Decision = tuple[Tensor | None, Tensor | list[Tensor]]
"""The weights (``None`` for a method that is not weighted), and what the backend applies."""

Solve = Callable[[Tensor], Decision | None]


class Backend(ABC):
    """One way of computing what the aggregator needs, and of writing its result into
    ``.grad``. JDOptimizer calls :meth:`compute`, turns what it found into weights (for a
    :class:`Gramian`) or an update (for a :class:`Jacobian`), and hands them to :meth:`apply`.
    """

    name: str

    @abstractmethod
    def compute(self, step: Step, /) -> Found | None:
        """The Gramian or the Jacobian of ``step.losses``; ``None`` when this backend does not
        apply to the step (it then changed nothing, and another backend takes the step)."""

    def settle(self, found: Found, gramian: Tensor, solve: Solve, /) -> Decision | None:
        """The step's decision: ``solve(gramian)`` — the weights and the change, or ``None``
        to skip the step. The distributed backends take rank 0's on every process.

        Args:
            found: what :meth:`compute` returned for this step.
            gramian: its unscaled Gramian ``[m, m]``.
            solve: the optimizer's decision for a Gramian; on a non-finite one it skips
                (returns ``None``) or raises.
        """
        return solve(gramian)

    @abstractmethod
    def apply(self, found: Found, change: Tensor | list[Tensor], /) -> None:
        """Adds the step's gradients to ``.grad``, in the GradScaler's space.

        Args:
            found: what :meth:`compute` returned for this step.
            change: for a :class:`Gramian`, the weights in ``found.shape``; for a
                :class:`Jacobian`, the update, one block ``[nᵢ]`` per parameter.
        """


def add_head_grads(heads: Sequence[tuple[Tensor, Tensor]]) -> None:
    """Adds each task head's own gradient to its ``.grad``."""
    for param, grad in heads:
        add_grad(param, grad)
