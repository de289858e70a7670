from __future__ import annotations

from typing import Any

from torch import Tensor

from ._bases import Weighting
from ._checks import check_length, check_nonnegative, check_vector
from ._state import copied


class CRMOGMWeighting(Weighting):
    """CR-MOGM: an exponential moving average of another weighting's weights.

    With ``λ̂ₖ`` the weights that ``weighting`` gives at call ``k``, the weights are
    ``λₖ = α λₖ₋₁ + (1 − α) λ̂ₖ``. ``λ₀`` is ``initial_weights`` when given; otherwise the
    first call returns ``λ̂₁`` itself. The smoothing makes the stochastic weights (computed on
    mini-batches) converge, which the paper needs for its convergence guarantees; it
    recommends an ``α`` that grows toward 1 as the learning rate decays: ``alpha`` can be set
    between calls (e.g. ``weighting.alpha = 1 - lr / initial_lr``).

    From Zhou et al., *On the Convergence of Stochastic Multi-Objective Gradient Manipulation
    and Beyond*, NeurIPS 2022 (https://openreview.net/forum?id=ScwfQ7hdwyP).

    Properties: those of ``weighting`` on a first call without ``initial_weights``; after it,
    the weights mix the past calls', so none of non-conflicting, linear under scaling or
    permutation-invariant holds in general. Deterministic given its state when ``weighting``
    is. Differentiable when ``weighting`` is: the past weights are constants, so the gradient
    is ``1 − α`` times ``weighting``'s (all of it on a first call without
    ``initial_weights``). Stateful: ``λₖ`` is saved in ``state_dict`` (with ``weighting``'s
    own state); :meth:`reset` forgets it and resets ``weighting`` if it has ``reset``. Use it
    as ``GramianWeightedAggregator(CRMOGMWeighting(...))``, or pass it to JDOptimizer.

    Args:
        weighting: the :class:`Weighting` whose weights ``[m]`` are smoothed.
        alpha: the weight ``α ∈ [0, 1]`` of the previous weights (default ``0.9``): ``0`` gives
            ``weighting``'s weights, ``1`` keeps the first ones.
        initial_weights: ``λ₀``, a vector ``[m]``, or ``None`` (default).
    """

    def __init__(
        self, weighting: Weighting, alpha: float = 0.9, initial_weights: Tensor | None = None
    ) -> None:
        if not isinstance(weighting, Weighting):
            raise TypeError(
                "`weighting` should be a jdopt.aggregation.Weighting (e.g. UPGradWeighting()). "
                f"Found {type(weighting).__name__}."
            )
        super().__init__()
        self.weighting = weighting
        self.alpha = alpha
        if initial_weights is not None:
            initial_weights = check_vector(initial_weights, "initial_weights").detach().clone()
        self.initial_weights = initial_weights
        self._weights: Tensor | None = None

    @property
    def alpha(self) -> float:
        """The weight ``α ∈ [0, 1]`` of the previous weights."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        check_nonnegative(value, "alpha")
        if value > 1:
            raise ValueError(f"`alpha` should be in [0, 1]. Found alpha={value}.")
        self._alpha = value

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        """Whether ``weighting`` is differentiable."""
        return self.weighting.differentiable

    def forward(self, gramian: Tensor, /) -> Tensor:
        current = self.weighting(gramian)
        previous = self._previous(current)
        weights = (
            current if previous is None else self.alpha * previous + (1 - self.alpha) * current
        )
        self._weights = weights.detach().clone()
        return weights

    def reset(self) -> None:
        """Forgets the previous weights, and resets ``weighting`` if it has ``reset``."""
        self._weights = None
        if callable(getattr(self.weighting, "reset", None)):
            self.weighting.reset()

    def _previous(self, current: Tensor) -> Tensor | None:
        previous = self._weights if self._weights is not None else self.initial_weights
        if previous is None:
            return None
        if self._weights is None:
            check_length(previous, "initial_weights", current.shape[0])
        elif previous.shape != current.shape:
            raise ValueError(
                f"CRMOGMWeighting: the number of objectives changed from {previous.shape[0]} "
                f"to {current.shape[0]}. Call `reset()` before changing it."
            )
        return previous.to(dtype=current.dtype, device=current.device)

    def get_extra_state(self) -> Any:
        return {"weights": copied(self._weights)}

    def set_extra_state(self, state: Any) -> None:
        self._weights = copied(state["weights"])
