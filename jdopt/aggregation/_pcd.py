from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting
from ._checks import check_finite, check_nonnegative, check_vector

_SATISFIED = 1e-9  # a constraint violated by less than this times max Gᵢᵢ counts as met

_CPU = torch.device("cpu")


class PCDWeighting(Weighting):
    """Priority-Constrained Descent (PCD): follow the primary objective, guarantee the others a
    share of progress.

    Row 0 of the Jacobian is the primary objective ``g₁``, the others are secondary. Each row is
    normalised, ``g̃ᵢ = sᵢ gᵢ`` with ``sᵢ = 1/√(v̂ᵢ + eps)``, ``v̂ᵢ`` the bias-corrected moving
    average (decay ``beta``) of ``‖gᵢ‖²`` over the calls. The direction is the point closest
    to ``g̃₁`` where every secondary row gets at least the fraction ``τⱼ`` of the progress of
    its own normalised step:

        ``d̃ = argmin_d ½‖d − g̃₁‖²  subject to  g̃ⱼ·d ≥ τⱼ‖g̃ⱼ‖²  (j ≥ 2)``,

    and the update is ``d̃`` rescaled to the norm of ``g₁``. ``d̃ = g̃₁ + Σⱼ μⱼ g̃ⱼ`` with the
    constraints' multipliers ``μ ≥ 0``, found exactly from ``G`` by a dual active-set method
    (Goldfarb & Idnani, 1983). Special cases: ``g₁ = 0`` gives a zero update; constraints that
    no ``d`` satisfies together (which needs ``m ≥ 3``) are dropped, and the update is ``g₁``;
    a ``d̃`` that is zero up to the rounding of ``G`` gives a zero update.

    From *Not All Objectives Are Born Equal: Priority-Constrained Descent for Hierarchical
    Multi-Objective Optimization*, TMLR 2026 (https://openreview.net/forum?id=HT01yGHLEt;
    reference code: https://github.com/DaraVaram/priority-constrained-descent).

    Properties: weighted, deterministic given its state; not non-conflicting (the primary row
    may be given up for the constraints), not linear under scaling, not permutation-invariant
    (row 0 is special). Scaling a secondary row by the same constant at every call leaves the
    update unchanged (up to ``eps``). Not differentiable: the active set is chosen outside
    autograd. Stateful: the moving average and the number of calls are saved in
    ``state_dict``; :meth:`reset` clears them, and so does a change in the number of rows.

    Args:
        tau: the guaranteed fraction ``τ ∈ [0, 1]``: a float for every secondary row, or a
            vector ``[m − 1]`` with one value each. Default ``0.02``.
        beta: the decay ``β ∈ [0, 1)`` of the moving average of the squared norms. Default
            ``0.999``.
        eps: the constant ``≥ 0`` added to the moving average. Default ``1e-8``.
    """

    differentiable = False  # the active set is chosen outside autograd

    def __init__(self, tau: float | Tensor = 0.02, beta: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__()
        self.tau = _check_tau(tau)
        check_nonnegative(beta, "beta")
        if beta >= 1:
            raise ValueError(f"`beta` should be in [0, 1). Found beta={beta}.")
        check_nonnegative(eps, "eps")
        self.beta = beta
        self.eps = eps
        self._average: Tensor | None = None  # of the squared norms, float64 on the CPU
        self._steps = 0

    def forward(self, gramian: Tensor, /) -> Tensor:
        g = gramian.detach().to(device=_CPU, dtype=torch.float64)
        squares = g.diagonal().clamp(min=0.0)
        taus = self._taus(g.shape[0])
        scales = self._update_scales(squares)
        precision = 10 * torch.finfo(gramian.dtype).eps
        weights = torch.zeros_like(squares)
        if squares[0] > 0:
            normalised = g * scales.unsqueeze(1) * scales.unsqueeze(0)
            w = solve_pcd(normalised, taus, dependence=max(1e-9, precision))
            size = w @ normalised @ w
            terms = (w.abs() @ normalised.diagonal().sqrt()) ** 2
            if size > precision * terms:
                weights = w * scales * (squares[0] / size).sqrt()
        return weights.to(dtype=gramian.dtype, device=gramian.device)

    def reset(self) -> None:
        """Forgets the moving average of the squared norms."""
        self._average, self._steps = None, 0

    def _taus(self, m: int) -> Tensor:
        if isinstance(self.tau, Tensor):
            if self.tau.shape[0] != m - 1:
                raise ValueError(
                    f"`tau` has {self.tau.shape[0]} entries but there are {m - 1} secondary "
                    f"objectives (m = {m} rows, row 0 is the primary one). Give one entry per "
                    "secondary objective, or a float."
                )
            return self.tau.detach().to(device=_CPU, dtype=torch.float64)
        return torch.full((m - 1,), float(self.tau), dtype=torch.float64, device=_CPU)

    def _update_scales(self, squares: Tensor) -> Tensor:
        """Adds ``squares`` to the moving average; returns ``1/√(v̂ + eps)`` (0 where it is
        infinite: a row that was always zero, with ``eps = 0``)."""
        if self._average is None or self._average.shape != squares.shape:
            self.reset()
            self._average = torch.zeros_like(squares)
        self._average = self.beta * self._average + (1 - self.beta) * squares
        self._steps += 1
        denominators = (self._average / (1 - self.beta**self._steps) + self.eps).sqrt()
        return torch.where(denominators > 0, 1 / denominators, 0.0)

    def get_extra_state(self) -> Any:
        return {"average": self._average, "steps": self._steps}

    def set_extra_state(self, state: Any) -> None:
        average = state["average"]
        self._average = None if average is None else average.to(_CPU, torch.float64).clone()
        self._steps = int(state["steps"])


class PCD(GramianWeightedAggregator):
    """Aggregates the Jacobian with :class:`PCDWeighting` (see it for the definition); row 0
    is the primary objective.

    Args:
        tau: the guaranteed fraction ``τ ∈ [0, 1]`` (float, or ``[m − 1]``). Default ``0.02``.
        beta: the decay ``β ∈ [0, 1)`` of the moving average. Default ``0.999``.
        eps: the constant ``≥ 0`` added to the moving average. Default ``1e-8``.
    """

    weighting: PCDWeighting

    def __init__(self, tau: float | Tensor = 0.02, beta: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__(PCDWeighting(tau, beta, eps))

    def reset(self) -> None:
        """Forgets the moving average of the squared norms."""
        self.weighting.reset()


def _check_tau(tau: object) -> float | Tensor:
    if isinstance(tau, Tensor):
        tau = check_vector(tau, "tau", allow_empty=True)
        check_finite(tau, "tau")
        bad = bool(((tau < 0) | (tau > 1)).any())
        found = tau.tolist()
    else:
        check_nonnegative(tau, "tau")
        bad, found = tau > 1, tau
    if bad:
        raise ValueError(
            f"`tau` should be in [0, 1] (the fraction of progress guaranteed to each secondary "
            f"objective). Found tau={found}."
        )
    return tau.detach().clone() if isinstance(tau, Tensor) else tau


def solve_pcd(gramian: Tensor, taus: Tensor, dependence: float) -> Tensor:
    """The weights ``[1, μ₂, …, μₘ]`` of ``d = g₁ + Σⱼ μⱼ gⱼ``, the point closest to ``g₁``
    with ``gⱼ·d ≥ τⱼ‖gⱼ‖²``; ``[1, 0, …, 0]`` when no ``d`` satisfies every constraint.

    Dual active set for an identity Hessian: start from ``d = g₁`` with no active constraint;
    while some constraint ``p`` is violated, move ``μ`` along the dual direction that raises
    ``μₚ`` and keeps the active constraints tight, until ``p`` is met (then it joins the
    active set) or an active multiplier reaches 0 (then it leaves). The slacks are
    ``Kμ + c``, with ``K`` the secondary rows' Gramian and ``c = G[1:, 0] − τ·diag(K)``. A
    row counts as a combination of the active ones when its orthogonal part has a squared norm
    below ``dependence`` times its own. At most ``10 m`` moves guard against cycling from
    rounding.
    """
    m = gramian.shape[0]
    weights = torch.zeros(m, dtype=gramian.dtype, device=gramian.device)
    weights[0] = 1.0
    if m == 1:
        return weights
    kernel = gramian[1:, 1:]
    offset = gramian[1:, 0] - taus * kernel.diagonal()
    mu = torch.zeros_like(offset)
    active: list[int] = []
    tolerance = _SATISFIED * max(float(gramian.diagonal().max()), torch.finfo(gramian.dtype).tiny)
    moves = 0
    while moves < 10 * m:
        slacks = kernel @ mu + offset
        slacks[active] = 0.0  # tight, up to rounding
        p = int(slacks.argmin())
        if slacks[p] >= -tolerance:
            break
        moves, feasible = _add(kernel, offset, mu, active, p, moves, 10 * m, dependence)
        if not feasible:
            return weights
    weights[1:] = mu.clamp(min=0.0)
    return weights


def _add(
    kernel: Tensor,
    offset: Tensor,
    mu: Tensor,
    active: list[int],
    p: int,
    moves: int,
    max_moves: int,
    dependence: float,
) -> tuple[int, bool]:
    """Moves ``μ`` (in place) until constraint ``p`` is tight, dropping active constraints
    whose multiplier reaches 0 on the way. Returns the move count and ``False`` when the
    constraints cannot hold together."""
    while moves < max_moves:
        moves += 1
        slack = float(kernel[p] @ mu + offset[p])
        if active:
            r = torch.linalg.solve(kernel[active][:, active], kernel[active, p])
            orthogonal = float(kernel[p, p] - kernel[p, active] @ r)
            ratios = torch.where(r > 0, mu[active] / r, torch.inf)
            k = int(ratios.argmin())
            partial = float(ratios[k])
        else:
            r, orthogonal, k, partial = mu[:0], float(kernel[p, p]), -1, math.inf
        independent = orthogonal > dependence * float(kernel[p, p])
        full = -slack / orthogonal if independent else math.inf
        step = min(partial, full)
        if step == math.inf:
            return moves, False
        mu[active] -= step * r
        mu[p] += step
        if full <= partial:
            active.append(p)
            return moves, True
        mu[active.pop(k)] = 0.0
    return moves, True
