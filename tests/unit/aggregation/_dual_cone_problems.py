"""Seeded problems for the dual-cone solver tests, and checks that do not use the solver.

``v* = argmin_v vᵀGv s.t. v ≥ u`` for each row ``u``. Its KKT conditions, checked here from
their definition: ``v ≥ u``, ``Gv ≥ 0`` and ``(Gv) ⊙ (v − u) = 0``. The references are the
per-row ``qpsolvers`` backends (``solver="quadprog"`` / ``"osqp"``), independent of the native
solver. Gramians are prepared as UPGrad does (trace-normalised, plus ``1e-4 I``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from jdopt._linalg import normalize, regularize
from jdopt.aggregation._dual_cone import project_weights
from tests.utils.device import draw, draw_uniform

F64 = torch.float64
N = 60  # columns of the Jacobians
# The relative KKT residual the native solver promises (its documented contract).
KKT = 1e-7

Family = Callable[[int, torch.Generator], Tensor]


def randn(generator: torch.Generator, *shape: int) -> Tensor:
    """Drawn on the CPU from ``generator`` and moved to the test device: the same problems on
    every device."""
    return draw(*shape, generator=generator, dtype=F64)


def rand(m: int, g: torch.Generator) -> Tensor:
    return randn(g, m, N)


def low_rank(m: int, g: torch.Generator) -> Tensor:
    return randn(g, m, 3) @ randn(g, 3, N)


def rank_one(m: int, g: torch.Generator) -> Tensor:
    return randn(g, m, 1) @ randn(g, 1, N)


def duplicated(m: int, g: torch.Generator) -> Tensor:
    distinct = randn(g, max(1, m // 3), N)
    return distinct[torch.arange(m) % distinct.shape[0]]


def conflicting(m: int, g: torch.Generator) -> Tensor:
    """Rows along ±d (alternating), plus noise: most pairwise cosines are strongly negative."""
    signs = torch.tensor([(-1.0) ** i for i in range(m)], dtype=F64).unsqueeze(1)
    return 5 * signs * randn(g, m, 1).abs() * randn(g, 1, N) + 0.3 * randn(g, m, N)


def scaled(m: int, g: torch.Generator) -> Tensor:
    """Row norms spread over 8 orders of magnitude."""
    return randn(g, m, N) * torch.logspace(-4, 4, m, dtype=F64).unsqueeze(1)


def huge(m: int, g: torch.Generator) -> Tensor:
    return 1e12 * conflicting(m, g)


def tiny(m: int, g: torch.Generator) -> Tensor:
    return 1e-12 * conflicting(m, g)


def with_zero_rows(m: int, g: torch.Generator) -> Tensor:
    jacobian = rand(m, g)
    jacobian[:: max(2, m // 4)] = 0.0
    return jacobian


FAMILIES = [rand, low_rank, rank_one, duplicated, conflicting, scaled, huge, tiny]
SINGULAR = [low_rank, rank_one, duplicated, with_zero_rows]


def gramian_of(jacobian: Tensor, ridge: float = 1e-4) -> Tensor:
    """The Gramian as UPGrad hands it to the solver: normalised by its trace, plus a ridge."""
    return regularize(normalize(jacobian @ jacobian.T, 1e-4), ridge)


def jacobian(family: Family, m: int, seed: int) -> Tensor:
    return family(m, torch.Generator().manual_seed(seed))


def make(family: Family, m: int, seed: int = 0) -> Tensor:
    return gramian_of(jacobian(family, m, seed))


def upgrad_preferences(m: int) -> Tensor:
    return torch.eye(m, dtype=F64) / m


def mixed_preferences(m: int, seed: int) -> Tensor:
    """Dense preferences of any sign, and rows whose answer is known: ``u ≤ 0`` gives 0."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat(
        [
            randn(g, 3, m),  # mixed signs (DualProj-like and worse)
            draw_uniform(1, m, generator=g, dtype=F64) * (torch.arange(m) % 2),  # zeros and > 0
            -draw_uniform(1, m, generator=g, dtype=F64),  # all negative: v* = 0
            torch.zeros(1, m, dtype=F64),  # v* = 0
        ]
    )


def kkt_violation(weights: Tensor, preferences: Tensor, gramian: Tensor) -> Tensor:
    """``[k]`` each row's largest violation of the KKT conditions, written from their
    definition, one row at a time: ``(u − v)⁺`` relative to ``‖v‖∞``, ``(−Gv)⁺`` relative to
    ``d ‖v‖∞`` and ``|(Gv) ⊙ (v − u)|`` relative to ``d ‖v‖∞²``, with ``d = max diag(G)``.

    A zero row solves its problem exactly when ``u ≤ 0`` (violation 0), and is infeasible
    otherwise (infinite violation). NaN anywhere gives an infinite violation.
    """
    weights, preferences, gramian = weights.double(), preferences.double(), gramian.double()
    d = float(gramian.diagonal().max()) if gramian.numel() else 0.0
    violations = []
    for v, u in zip(weights, preferences, strict=True):
        if not bool(torch.isfinite(v).all()):
            violations.append(float("inf"))
            continue
        size = float(v.abs().max()) if v.numel() else 0.0
        if size == 0.0:
            violations.append(0.0 if bool((u <= 0).all()) else float("inf"))
            continue
        gv = gramian @ v
        feasibility = max(0.0, float((u - v).max())) / size
        if d == 0.0:  # G = 0: any v ≥ u is optimal
            violations.append(feasibility)
            continue
        sign = max(0.0, float((-gv).max())) / (d * size)
        complementarity = float((gv * (v - u)).abs().max()) / (d * size**2)
        violations.append(max(feasibility, sign, complementarity))
    return torch.tensor(violations, dtype=F64)


def assert_kkt(weights: Tensor, preferences: Tensor, gramian: Tensor, tol: float = KKT) -> None:
    violation = kkt_violation(weights, preferences, gramian)
    worst = float(violation.max()) if violation.numel() else 0.0
    assert worst <= tol, f"KKT violation {worst:.2e} > {tol:.0e}"


def assert_close_to(weights: Tensor, reference: Tensor, tol: float = 1e-6) -> None:
    """Every row within ``tol`` of the reference's, relative to the reference row's size."""
    scale = reference.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
    error = float(((weights - reference).abs() / scale).max()) if weights.numel() else 0.0
    assert error <= tol, f"relative error {error:.2e} > {tol:.0e}"


def reference(preferences: Tensor, gramian: Tensor, solver: str = "quadprog") -> Tensor:
    return project_weights(preferences, gramian, solver=solver)


def assert_solved(weights: Tensor, preferences: Tensor, gramian: Tensor, tol: float = 1e-6) -> None:
    """The KKT conditions hold, and the weights are quadprog's."""
    assert_kkt(weights, preferences, gramian)
    assert_close_to(weights, reference(preferences, gramian), tol)
