"""MoCo: stochastic MGDA with a tracked Jacobian, which removes the bias of MGDA's weights
computed on one mini-batch."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._bases import Aggregator
from ._checks import check_nonnegative
from ._state import copied


class MoCo(Aggregator):
    """Multi-objective gradient correction: MGDA's weights on a tracked Jacobian.

    With step sizes ``βₜ = β / t^σ_β`` and ``γₜ = γ / t^σ_γ`` at the ``t``-th call (from 1), it
    keeps a running estimate ``Y`` of the Jacobian and weights ``λ`` on the simplex::

        Y ← Y − βₜ (Y − J)                              (Y starts at the first J)
        λ ← Π_simplex(λ − γₜ (Y Yᵀ + ρ I) λ)            (λ starts at 1/m)
        update = Yᵀ λ

    A step of projected gradient descent on MGDA's ``½ λᵀ(Y Yᵀ + ρI)λ`` per call, on the tracked
    ``Y`` rather than the mini-batch's ``J``: MGDA's weights from one noisy ``J`` are biased, and
    tracking makes the direction converge to the full-batch one.

    From Fernando et al., *Mitigating Gradient Bias in Multi-objective Learning: A Provably
    Convergent Approach*, ICLR 2023 (https://openreview.net/forum?id=dLAYGdKTi2), Algorithm 1;
    the defaults are LibMTL's.

    Properties: stateful (``Y``, ``λ`` and the call count are in ``state_dict``; :meth:`reset`
    forgets them), deterministic; neither non-conflicting nor linear under scaling. Not
    differentiable (the state is updated outside autograd). Needs the Jacobian (``Y`` is a
    running average of Jacobians, which no Gramian gives), and keeps one: ``m × n`` numbers.

    Args:
        beta: the tracking rate ``β`` of ``Y``.
        beta_sigma: its decay exponent ``σ_β``.
        gamma: the step size ``γ`` of ``λ``.
        gamma_sigma: its decay exponent ``σ_γ``.
        rho: the ridge ``ρ ≥ 0`` on ``Y Yᵀ``.
    """

    differentiable = False

    def __init__(
        self,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("beta", beta), ("gamma", gamma)):
            check_nonnegative(value, name, strict=True)
        for name, value in (("beta_sigma", beta_sigma), ("gamma_sigma", gamma_sigma)):
            check_nonnegative(value, name)
        check_nonnegative(rho, "rho")
        if beta > 1:
            raise ValueError(f"`beta` should be in (0, 1] (a tracking rate). Found beta={beta}.")
        self.beta, self.beta_sigma, self.gamma = beta, beta_sigma, gamma
        self.gamma_sigma, self.rho = gamma_sigma, rho
        self.reset()

    def forward(self, jacobian: Tensor, /) -> Tensor:
        jacobian = jacobian.detach()
        if self._tracked is None:
            self._tracked = jacobian.clone()
            self._weights = torch.full_like(jacobian[:, 0], 1 / jacobian.shape[0])
        elif self._tracked.shape != jacobian.shape:
            raise ValueError(
                f"MoCo tracks a Jacobian of shape {tuple(self._tracked.shape)}; found one of "
                f"shape {tuple(jacobian.shape)}. Call `reset()` before changing the objectives or "
                "the parameters."
            )
        self._calls += 1
        beta = self.beta / self._calls**self.beta_sigma
        gamma = self.gamma / self._calls**self.gamma_sigma
        tracked = self._tracked.to(jacobian)
        tracked = tracked.lerp_(jacobian, beta)
        weights = mgda_step(self._weights.to(jacobian), tracked @ tracked.T, gamma, self.rho)
        self._tracked, self._weights = tracked, weights
        return weights @ tracked

    def reset(self) -> None:
        """Forgets the tracked Jacobian, the weights and the call count."""
        self._tracked: Tensor | None = None
        self._weights: Tensor | None = None
        self._calls = 0

    def get_extra_state(self) -> Any:
        tracked, weights = copied(self._tracked), copied(self._weights)
        return {"tracked": tracked, "weights": weights, "calls": self._calls}

    def set_extra_state(self, state: Any) -> None:
        self._tracked, self._weights = copied(state["tracked"]), copied(state["weights"])
        self._calls = int(state["calls"])


def mgda_step(weights: Tensor, matrix: Tensor, step: float, rho: float) -> Tensor:
    """One projected gradient step on MGDA's ``½ λᵀ(M + ρI)λ`` over the simplex:
    ``Π_simplex(λ − step (M λ + ρ λ))`` (MoCo on its tracked Gramian, MoDo on ``J₁J₂ᵀ``)."""
    return project_onto_simplex(weights - step * (matrix @ weights + rho * weights))


def project_onto_simplex(vector: Tensor) -> Tensor:
    """The Euclidean projection of ``vector [m]`` onto ``{x ≥ 0, Σx = 1}``: ``max(v − τ, 0)``,
    with ``τ`` found from the sorted entries (Held, Wolfe & Crowder 1974)."""
    m = vector.shape[0]
    ordered = vector.sort(descending=True).values
    partial = ordered.cumsum(0) - 1
    ranks = torch.arange(1, m + 1, dtype=vector.dtype, device=vector.device)
    support = ordered - partial / ranks > 0  # true on a prefix (the first entry, exactly)
    count = support.sum().clamp_min(1)  # which rounding may lose at huge magnitudes
    threshold = partial.gather(0, (count - 1).unsqueeze(0)) / count
    return (vector - threshold).clamp_min(0)
