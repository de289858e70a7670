"""Base classes: what an aggregator and a weighting are.

Index letters used throughout: ``m`` objectives (rows of the Jacobian), ``n`` parameters
(columns), ``S`` the shape of the losses when they are not a vector.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor, nn

from .._linalg import (
    at_least_float32,
    compute_gramian,
    exact_float32,
    flatten_generalized,
    no_autocast,
)
from ._checks import check_finite, check_gramian, check_matrix
from ._differentiable import guard
from ._repr import ConstructorRepr


class Weighting(ConstructorRepr, ABC):
    """Maps a Gramian ``G = J Jᵀ`` of shape ``[m, m]`` to weights of shape ``[m]``.

    The update of the corresponding aggregator is ``weights @ J``. Subclasses implement
    :meth:`forward`; calling the module validates the Gramian first. ``repr`` and ``str``
    are the constructor call (see :class:`._repr.ConstructorRepr`).

    Attributes:
        accepts_no_objectives: whether a Gramian with no objectives (``[0, 0]``) is valid
            input (giving weights ``[0]``). ``False`` unless a subclass sets it.
        stateless: whether a call changes nothing (no state, no random draw), so that a
            caller may call :meth:`weigh` on a Gramian it checks afterwards (JDOptimizer
            does, reading the device once for all its checks). ``False`` unless a subclass
            sets it: other weightings get a checked Gramian.
        differentiable: whether autograd differentiates the weights with respect to the
            Gramian exactly. Where it does not (the weights come from a solver outside
            autograd), a backward pass through them raises
            :class:`~._differentiable.NotDifferentiableError` instead of giving a wrong
            gradient. ``True`` unless a subclass sets it.
    """

    accepts_no_objectives: ClassVar[bool] = False
    differentiable: ClassVar[bool] = True
    uses_losses: ClassVar[bool] = False
    stateless: ClassVar[bool] = False

    def observe_losses(self, losses: Tensor, /) -> None:
        """Takes the values of the objectives ``[m]`` for the next call, for a weighting
        whose weights also depend on them (``uses_losses``, as GradNorm's do; JDOptimizer
        calls it with each step's unscaled losses). Nothing for the others."""

    @abstractmethod
    def forward(self, gramian: Tensor, /) -> Tensor:
        """Returns the weights ``[m]`` for a Gramian ``[m, m]``."""

    def __call__(self, gramian: Tensor, /) -> Tensor:
        check_gramian(gramian, min_rows=0 if self.accepts_no_objectives else 1)
        return self.weigh(gramian)

    def weigh(self, gramian: Tensor, /) -> Tensor:
        """Calling the weighting without checking that ``gramian`` is finite, which reads the
        device: for callers that check it themselves (JDOptimizer reads the device once per
        step for all its checks). ``gramian`` must be a square matrix."""
        dtype = at_least_float32(gramian.dtype)
        with no_autocast(gramian.device.type), exact_float32():
            weights = super().__call__(gramian.to(dtype))
        if dtype != gramian.dtype:
            weights = weights.to(gramian.dtype)
        return weights if self.differentiable else guard(weights, gramian, self, "gramian")


class Aggregator(ConstructorRepr, ABC):
    """Maps a Jacobian of shape ``[m, n]`` to an update of shape ``[n]``.

    Calling the module validates the Jacobian (a finite matrix, with at least one row unless
    ``accepts_no_objectives``) first, and runs :meth:`forward` without autocast. ``repr`` is
    the constructor call (see :class:`._repr.ConstructorRepr`), ``str`` the method's short
    name, as in TorchJD.

    Attributes:
        accepts_no_objectives: whether a Jacobian with no rows (``[0, n]``) is valid input
            (giving a zero update). ``False`` unless a subclass sets it.
        differentiable: whether autograd differentiates the update with respect to the
            Jacobian exactly (see :class:`Weighting`; a weighted aggregator is as
            differentiable as its weighting). ``True`` unless a subclass sets it.
    """

    accepts_no_objectives: bool = False
    differentiable: bool = True

    @abstractmethod
    def forward(self, jacobian: Tensor, /) -> Tensor:
        """Returns the update ``[n]`` for a Jacobian ``[m, n]``."""

    def __call__(self, jacobian: Tensor, /) -> Tensor:
        check_matrix(jacobian, "jacobian", min_rows=0 if self.accepts_no_objectives else 1)
        with no_autocast(jacobian.device.type):
            update = super().__call__(jacobian)
        return update if self.differentiable else guard(update, jacobian, self, "jacobian")

    def __str__(self) -> str:
        return type(self).__name__


class WeightedAggregator(Aggregator):
    """An aggregator whose update is ``weights @ J``, with weights computed from ``J``.

    Args:
        weighting: a module mapping the Jacobian ``[m, n]`` to weights ``[m]``.
    """

    def __init__(self, weighting: nn.Module) -> None:
        super().__init__()
        self.weighting = weighting

    def compute_weights(self, jacobian: Tensor, /) -> Tensor:
        """Returns the weights ``[m]`` that this aggregator applies to the rows of ``jacobian``."""
        return self.weighting(jacobian)

    def forward(self, jacobian: Tensor, /) -> Tensor:
        # A half-precision Jacobian's weights come from a float32 Gramian (compute_gramian).
        return self.compute_weights(jacobian).to(jacobian.dtype) @ jacobian


class GramianWeightedAggregator(WeightedAggregator):
    """A weighted aggregator whose weights depend on the Jacobian only through ``G = J Jᵀ``.

    These methods can run on the Gramian engine (:mod:`jdopt.autogram`), which never forms
    ``J``.

    Args:
        weighting: the :class:`Weighting` that holds the method's maths.
    """

    weighting: Weighting

    def __init__(self, weighting: Weighting) -> None:
        if not isinstance(weighting, Weighting):
            raise TypeError(
                f"`weighting` should be a jdopt.aggregation.Weighting. Found "
                f"{type(weighting).__name__}."
            )
        super().__init__(weighting)

    @property
    def accepts_no_objectives(self) -> bool:  # type: ignore[override]
        """Whether its weighting accepts no objectives."""
        return self.weighting.accepts_no_objectives

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        """Whether its weighting is differentiable."""
        return self.weighting.differentiable

    def compute_weights(self, jacobian: Tensor, /) -> Tensor:
        return self.weighting(compute_gramian(jacobian))


class GeneralizedWeighting(ConstructorRepr, ABC):
    """Maps a generalized Gramian of shape ``[*S, *reversed(S)]`` to weights of shape ``S``.

    For losses of shape ``S``, the generalized Gramian holds the inner product of the gradients
    of every pair of losses: ``G[i₁, …, iₖ, jₖ, …, j₁] = ⟨∇L[i₁, …, iₖ], ∇L[j₁, …, jₖ]⟩``.
    """

    @abstractmethod
    def forward(self, generalized_gramian: Tensor, /) -> Tensor:
        """Returns the weights of shape ``S``."""

    def __call__(self, generalized_gramian: Tensor, /) -> Tensor:
        _check_generalized_gramian(generalized_gramian)
        return super().__call__(generalized_gramian)


class Flattening(GeneralizedWeighting):
    """Applies a :class:`Weighting` to a generalized Gramian by flattening the losses.

    The generalized Gramian ``[*S, *reversed(S)]`` is reshaped to the ``[∏S, ∏S]`` Gramian of
    the flattened losses, ``weighting`` gives ``∏S`` weights, and they are reshaped to ``S``.

    Args:
        weighting: the weighting applied to the flattened Gramian.
    """

    def __init__(self, weighting: Weighting) -> None:
        if not isinstance(weighting, Weighting):
            raise TypeError(
                f"`weighting` should be a jdopt.aggregation.Weighting. Found "
                f"{type(weighting).__name__}. Use the method's `...Weighting` class, e.g. "
                "`Flattening(UPGradWeighting())`."
            )
        super().__init__()
        self.weighting = weighting

    def forward(self, generalized_gramian: Tensor, /) -> Tensor:
        shape = generalized_gramian.shape[: generalized_gramian.ndim // 2]
        return self.weighting(flatten_generalized(generalized_gramian)).reshape(shape)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.weighting!r})"


def _check_generalized_gramian(generalized_gramian: Tensor) -> None:
    if not isinstance(generalized_gramian, Tensor):
        raise TypeError(
            "`generalized_gramian` should be a torch.Tensor. Found "
            f"{type(generalized_gramian).__name__}."
        )
    shape = tuple(generalized_gramian.shape)
    k = len(shape) // 2
    if len(shape) % 2 != 0 or shape[:k] != shape[k:][::-1]:
        raise ValueError(
            "`generalized_gramian` should have shape [*S, *reversed(S)] for losses of shape S "
            f"(e.g. [B, k, k, B]). Found shape {shape}."
        )
    check_finite(generalized_gramian, "generalized_gramian")
