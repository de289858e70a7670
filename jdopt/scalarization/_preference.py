"""Scalarizers that trade the values off along a preference: smooth Tchebycheff, PBI, COSMOS."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import Scalarizer, buffer, check_positive, check_same_shape


class _Referenced(Scalarizer):
    """A scalarizer of the gaps to a reference point, along preference ``weights``."""

    def _register(self, weights: Tensor | None, reference: Tensor | None) -> None:
        self.register_buffer("weights", buffer(weights))
        self.register_buffer("reference", buffer(reference))

    def _gaps(self, values: Tensor) -> Tensor:
        """``values − reference`` (``values`` without one), after checking the shapes."""
        check_same_shape(self.weights, values, "weights")
        check_same_shape(self.reference, values, "reference")
        return values if self.reference is None else values - self.reference.to(values)


class STCH(_Referenced):
    """Smooth Tchebycheff: ``μ log Σᵢ exp(λᵢ (fᵢ − zᵢ) / μ)``, a smooth upper bound of
    ``max_i λᵢ (fᵢ − zᵢ)`` that is within ``μ log m`` of it.

    From Lin et al., *Smooth Tchebycheff Scalarization for Multi-Objective Optimization*,
    ICML 2024 (https://arxiv.org/abs/2402.19078).

    Args:
        mu: the smoothing ``μ > 0`` (smaller: closer to the maximum).
        weights: the preferences ``λ``, in the shape of the values; ``None``: ``1/m`` each.
        reference: the ideal point ``z``; ``None``: 0.
    """

    def __init__(
        self, mu: float, weights: Tensor | None = None, reference: Tensor | None = None
    ) -> None:
        super().__init__()
        self.mu = check_positive(mu, "mu", strict=True)
        self._register(weights, reference)

    def forward(self, values: Tensor, /) -> Tensor:
        shifted = self._gaps(values)
        weights = 1 / values.numel() if self.weights is None else self.weights.to(values)
        return self.mu * torch.logsumexp((weights * shifted).flatten() / self.mu, dim=0)

    def arguments(self) -> dict[str, Any]:
        return {"mu": self.mu, "weights": self.weights, "reference": self.reference}


class PBI(_Referenced):
    """Penalty-based boundary intersection: ``d₁ + θ d₂``, where ``d₁ = (L − z)ᵀŵ`` is the
    distance along the preference direction ``ŵ = w / ‖w‖`` and ``d₂ = ‖L − z − d₁ŵ‖`` the
    distance to it (``√(· + 1e-12)``, differentiable at 0).

    From Zhang & Li, *MOEA/D: A Multiobjective Evolutionary Algorithm Based on
    Decomposition*, IEEE TEVC 2007.

    Args:
        theta: the penalty ``θ ≥ 0`` on the distance to the direction.
        weights: the preference ``w``, in the shape of the values (not all zero).
        reference: the ideal point ``z``; ``None``: 0.
    """

    def __init__(self, theta: float, weights: Tensor, reference: Tensor | None = None) -> None:
        super().__init__()
        self.theta = check_positive(theta, "theta", strict=False)
        if not isinstance(weights, Tensor) or not bool(weights.ne(0).any()):
            raise ValueError("`weights` should be a tensor with a nonzero entry (a direction).")
        self._register(weights, reference)

    def forward(self, values: Tensor, /) -> Tensor:
        shifted = self._gaps(values).flatten()
        direction = self.weights.to(values).flatten()
        direction = direction / direction.norm()
        along = shifted @ direction
        across = shifted - along * direction
        return along + self.theta * torch.sqrt(across @ across + 1e-12)

    def arguments(self) -> dict[str, Any]:
        return {"theta": self.theta, "weights": self.weights, "reference": self.reference}


class COSMOS(Scalarizer):
    """``Σᵢ rᵢ Lᵢ − λ cos(r, L)``: a linear scalarization that rewards values aligned with the
    preference ``r``; resample ``r`` (e.g. from a Dirichlet) and assign it to ``weights``
    before each call to approximate a Pareto front.

    From Ruchte & Grabocka, *Scalable Pareto Front Approximation for Deep Multi-Objective
    Learning*, ICDM 2021 (https://arxiv.org/abs/2103.13392).

    Args:
        lambda_: the weight ``λ ≥ 0`` of the cosine term.
        weights: the preference ``r``, in the shape of the values.
    """

    def __init__(self, lambda_: float, weights: Tensor) -> None:
        super().__init__()
        self.lambda_ = check_positive(lambda_, "lambda_", strict=False)
        if not isinstance(weights, Tensor):
            raise TypeError(f"`weights` should be a tensor. Found {type(weights).__name__}.")
        self.register_buffer("weights", buffer(weights))

    def forward(self, values: Tensor, /) -> Tensor:
        check_same_shape(self.weights, values, "weights")
        weights = self.weights.to(values)
        linear = (weights * values).sum()
        return linear - self.lambda_ * linear / (weights.norm() * values.norm())

    def arguments(self) -> dict[str, Any]:
        return {"lambda_": self.lambda_, "weights": self.weights}
