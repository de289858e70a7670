"""Methods whose weights come from two independent batches: MoDo and SDMGrad, and the
weighting that runs them on the Gramian of stacked batches (so JDOptimizer can)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._bases import Weighting
from ._checks import check_int, check_nonnegative
from ._moco import mgda_step, project_onto_simplex
from ._pref import check_pref_vector
from ._state import copied


class _Stateful(Weighting):
    """A weighting whose only state is its last weights (``None`` before the first call)."""

    differentiable = False

    def reset(self) -> None:
        """Forgets the last weights."""
        self._weights: Tensor | None = None

    def get_extra_state(self) -> Any:
        return copied(self._weights)

    def set_extra_state(self, state: Any) -> None:
        self._weights = copied(state)


class MoDoWeighting(_Stateful):
    """MoDo's weights, from ``A = J₁ J₂ᵀ``: the Jacobians of two independent mini-batches.

    One projected step per call: ``λ ← Π_simplex(λ − γ (A λ + ρ λ))`` from ``λ = 1/m``;
    ``A λ`` is an unbiased estimate of the gradient of MGDA's ``½‖Jᵀλ‖²`` where ``J₁ J₁ᵀ``
    would be biased. Called on a single batch's Gramian, it is MoCo's weight step without the
    tracking. In JDOptimizer, wrap it in :class:`CrossBatchWeighting`.

    From Chen, Fernando, Ying & Chen, *Three-Way Trade-Off in Multi-Objective Learning:
    Optimization, Generalization and Conflict-Avoidance*, JMLR 2024
    (https://www.jmlr.org/papers/volume25/23-1287/23-1287.pdf).

    Properties: stateful (``λ`` in ``state_dict``, :meth:`reset`), deterministic; not
    non-conflicting, not linear under scaling, not differentiable.

    Args:
        gamma: the step size ``γ > 0`` of ``λ``.
        rho: the ridge ``ρ ≥ 0``.
    """

    def __init__(self, gamma: float = 0.1, rho: float = 0.1) -> None:
        super().__init__()
        check_nonnegative(gamma, "gamma", strict=True)
        check_nonnegative(rho, "rho")
        self.gamma, self.rho = gamma, rho
        self.reset()

    def forward(self, matrix: Tensor, /) -> Tensor:
        self._weights = mgda_step(_state(self._weights, matrix), matrix, self.gamma, self.rho)
        return self._weights


class SDMGradWeighting(_Stateful):
    """SDMGrad's weights, from ``A = J₁ J₂ᵀ`` (two independent mini-batches).

    ``A`` is scaled by the squared mean of ``√diag(A)``; then ``n_iter`` steps of projected SGD
    with momentum on ``w ∈ simplex`` along ``A (w + λ w̃)``, from the last call's ``w`` (``1/m``
    at first); the weights are ``(w + λ w̃) / (1 + λ)``, pulled towards the preference ``w̃``
    (default ``1/m``: the mean gradient) by ``λ``.

    From Xiao, Ban & Ji, *Direction-oriented Multi-objective Learning: Simple and Provable
    Stochastic Algorithms*, NeurIPS 2023 (https://arxiv.org/abs/2305.18409); the defaults are
    the authors' experiments' (and LibMTL's).

    Properties: stateful (``w`` in ``state_dict``, :meth:`reset`), deterministic; not
    non-conflicting, not linear under scaling, not differentiable. In JDOptimizer, wrap it in
    :class:`CrossBatchWeighting` with ``batches=3`` (``ξ``, ``ξ′`` for ``A``, ``ζ`` for the
    update, as in the paper).

    Args:
        lr: the inner SGD's learning rate.
        momentum: its momentum, in ``[0, 1)``.
        n_iter: its steps per call.
        lambda_: the pull ``λ ≥ 0`` towards the preference.
        pref_vector: the preference ``w̃`` ``[m]``; ``None``: ``1/m``.
    """

    def __init__(
        self,
        lr: float = 10.0,
        momentum: float = 0.5,
        n_iter: int = 20,
        lambda_: float = 0.3,
        pref_vector: Tensor | None = None,
    ) -> None:
        super().__init__()
        check_nonnegative(lr, "lr", strict=True)
        check_nonnegative(momentum, "momentum")
        if momentum >= 1:
            raise ValueError(f"`momentum` should be in [0, 1). Found momentum={momentum}.")
        check_int(n_iter, "n_iter", minimum=1)
        check_nonnegative(lambda_, "lambda_")
        self.lr, self.momentum, self.n_iter, self.lambda_ = lr, momentum, n_iter, lambda_
        self.register_buffer("pref_vector", check_pref_vector(pref_vector))
        self.reset()

    def forward(self, matrix: Tensor, /) -> Tensor:
        m = matrix.shape[0]
        preference = _preference(self.pref_vector, matrix)
        weights = _state(self._weights, matrix)
        scale = matrix.diagonal().clamp_min(0).sqrt().mean()
        scaled = matrix / (scale.square() + 1e-8)
        velocity = torch.zeros(m, dtype=matrix.dtype, device=matrix.device)
        for index in range(self.n_iter):
            gradient = scaled @ (weights + self.lambda_ * preference)
            velocity = gradient if index == 0 else self.momentum * velocity + gradient
            weights = project_onto_simplex(weights - self.lr * velocity)
        self._weights = weights
        return (weights + self.lambda_ * preference) / (1 + self.lambda_)


class CrossBatchWeighting(Weighting):
    """Runs a weighting of ``A = J₁ J₂ᵀ`` (MoDo's, SDMGrad's) on the Gramian of ``batches``
    stacked mini-batches of the same ``m`` objectives, so that JDOptimizer can take its steps.

    Stack the losses of independent batches, ``jd.step(torch.stack([losses_1, losses_2]))``
    (shape ``[batches, m]``): either engine computes the ``[batches·m, batches·m]`` Gramian,
    whose block ``(1, 2)`` is ``A``. The inner weighting's ``λ`` then weights the update: the
    mean of the two batches' gradients for ``batches=2`` (MoDo's Equation 2.9b), the third
    batch's alone for ``batches=3`` (SDMGrad's ``ζ``; MoDo's three-batch variant).

    Args:
        weighting: the weighting of ``A``.
        batches: 2 or 3.
    """

    differentiable = False

    def __init__(self, weighting: Weighting, batches: int = 2) -> None:
        super().__init__()
        if not isinstance(weighting, Weighting):
            raise TypeError(f"`weighting` should be a Weighting. Found {type(weighting).__name__}.")
        if batches not in (2, 3):
            raise ValueError(f"`batches` should be 2 or 3. Found batches={batches!r}.")
        self.weighting, self.batches = weighting, batches

    def forward(self, gramian: Tensor, /) -> Tensor:
        size = gramian.shape[0]
        if size % self.batches:
            raise ValueError(
                f"CrossBatchWeighting(batches={self.batches}) needs the Gramian of "
                f"{self.batches} stacked batches of the same objectives; found {size} objectives. "
                f"Step with torch.stack of {self.batches} tensors of losses."
            )
        m = size // self.batches
        weights = self.weighting(gramian[:m, m : 2 * m])
        if self.batches == 2:
            return torch.cat([weights, weights]) / 2
        return torch.cat([torch.zeros_like(weights), torch.zeros_like(weights), weights])

    def reset(self) -> None:
        self.weighting.reset()


def _state(weights: Tensor | None, matrix: Tensor) -> Tensor:
    m = matrix.shape[0]
    if weights is None or weights.shape[0] != m:
        return torch.full((m,), 1 / m, dtype=matrix.dtype, device=matrix.device)
    return weights.to(matrix)


def _preference(pref_vector: Tensor | None, matrix: Tensor) -> Tensor:
    m = matrix.shape[0]
    if pref_vector is None:
        return torch.full((m,), 1 / m, dtype=matrix.dtype, device=matrix.device)
    if pref_vector.shape[0] != m:
        raise ValueError(
            f"`pref_vector` has {pref_vector.shape[0]} entries for {m} objectives. Give one "
            "preference per objective."
        )
    return pref_vector.to(matrix)
