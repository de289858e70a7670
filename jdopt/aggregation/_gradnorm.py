"""GradNorm: task weights learned so that the weighted gradients' norms follow how fast each
task trains."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting
from ._checks import check_nonnegative
from ._state import copied


class GradNormWeighting(Weighting):
    """GradNorm's weights ``w`` (summing to m), learned at each call from the Gramian's
    diagonal (the squared gradient norms ``‖gᵢ‖²``) and the losses.

    At a call with losses ``L`` (given by :meth:`observe_losses` before it), with ``L(0)`` the
    first losses seen: ``Gᵢ = wᵢ ‖gᵢ‖``, ``Ḡ = mean(G)``, ``rᵢ = L̃ᵢ / mean(L̃)`` with ``L̃ =
    L / L(0)``, the targets ``Ḡ rᵢ^α`` (constants) and the loss ``Σᵢ |Gᵢ − Ḡ rᵢ^α|``. The call
    returns the current ``w``, then takes one gradient step on that loss, ``wᵢ ← wᵢ − lr ·
    sign(Gᵢ − Ḡ rᵢ^α) ‖gᵢ‖``, and renormalises ``w`` to non-negative entries summing to m. Tasks
    that train slower (larger ``rᵢ``) get larger gradient norms; ``α`` sets how strongly.

    From Chen et al., *GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
    Multitask Networks*, ICML 2018 (https://arxiv.org/abs/1711.02257), Algorithm 1. The paper
    measures the norms at the last shared layer; here they are those of the Gramian given:
    with ``JDOptimizer(..., model=trunk)`` and ``features=``, of the whole trunk, from the
    Gramian engine without extra backward passes.

    Properties: stateful (``w``, ``L(0)`` and the pending losses are in ``state_dict``;
    :meth:`reset` forgets them), deterministic, not non-conflicting, not linear under scaling,
    not differentiable (the weights are state). JDOptimizer gives it each step's unscaled
    losses; alone, call :meth:`observe_losses` before each call (without losses, every task
    counts as training at the same rate: the weighted norms are balanced, as with ``α = 0``).

    Args:
        alpha: the asymmetry ``α ≥ 0`` (the paper's 1.5; 0 balances the norms equally).
        lr: the weights' learning rate.
    """

    differentiable = False
    uses_losses = True

    def __init__(self, alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__()
        check_nonnegative(alpha, "alpha")
        check_nonnegative(lr, "lr")
        self.alpha, self.lr = alpha, lr
        self.reset()

    def observe_losses(self, losses: Tensor, /) -> None:
        self._losses = losses.detach().reshape(-1).clone()

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        if self._losses is not None and self._losses.shape[0] != m:
            raise ValueError(
                f"GradNorm observed {self._losses.shape[0]} losses for a Gramian of {m} "
                "objectives. Give `observe_losses` one loss per objective."
            )
        # Without observed losses, every task counts as training at the same rate.
        losses = torch.ones_like(gramian[0]) if self._losses is None else self._losses.to(gramian)
        if self._weights is None or self._weights.shape[0] != m:
            self._weights, self._initial = torch.ones_like(losses), losses.clone()
        # Keep the first finite loss of each task as its L(0).
        self._initial = torch.where(self._initial.isfinite(), self._initial, losses)
        weights = self._weights.to(gramian)
        self._weights = self._step(weights, gramian.diagonal().clamp_min(0).sqrt(), losses)
        self._losses = None
        return weights

    def _step(self, weights: Tensor, norms: Tensor, losses: Tensor) -> Tensor:
        scaled = weights * norms
        trained = losses / self._initial.to(losses)
        rates = trained / trained.mean()
        target = scaled.mean() * rates.clamp_min(0) ** self.alpha
        stepped = (weights - self.lr * torch.sign(scaled - target) * norms).clamp_min(0)
        total = stepped.sum()
        renormalised = stepped * (weights.shape[0] / total)
        usable = torch.isfinite(renormalised).all() & (total > 0)
        return torch.where(usable, renormalised, weights)  # a step without data keeps w

    def reset(self) -> None:
        """Forgets the weights, the first losses and the pending losses."""
        self._weights: Tensor | None = None
        self._initial: Tensor | None = None
        self._losses: Tensor | None = None

    def get_extra_state(self) -> Any:
        return {"weights": self._weights, "initial": self._initial, "losses": self._losses}

    def set_extra_state(self, state: Any) -> None:
        self._weights, self._initial = copied(state["weights"]), copied(state["initial"])
        self._losses = copied(state["losses"])


class GradNorm(GramianWeightedAggregator):
    """Aggregates the Jacobian with :class:`GradNormWeighting` (same arguments)."""

    def __init__(self, alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__(GradNormWeighting(alpha, lr))

    def observe_losses(self, losses: Tensor, /) -> None:
        """See :meth:`GradNormWeighting.observe_losses`."""
        self.weighting.observe_losses(losses)

    def reset(self) -> None:
        self.weighting.reset()
