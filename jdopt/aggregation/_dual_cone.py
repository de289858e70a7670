"""Projection onto the dual cone ``{x : J x ≥ 0}``, in weight space (UPGrad, DualProj).

For a preference vector ``u [m]``, the projection of ``Jᵀu`` onto the dual cone is ``Jᵀv*`` with
``v* = argmin_v vᵀGv  s.t.  v ≥ u`` (elementwise), ``G = J Jᵀ``. Its KKT conditions:
``v ≥ u``, ``μ = 2Gv ≥ 0``, ``μ ⊙ (v − u) = 0``.

The native solver handles ``k`` such problems at once, all sharing ``G``:

- positive homogeneity: ``v*(c u) = c v*(u)`` for ``c > 0``, and ``v* = 0`` when ``u ≤ 0``, so
  rows are rescaled to ``max(u) = 1`` and the trivial ones skipped;
- Jacobi scaling (``G`` to unit diagonal), then either the primal problem (a box-constrained QP
  in ``w = √diag(G) ⊙ v``) or its dual (``max_{λ≥0} −½λᵀG⁻¹λ + uᵀλ``, ``v = G⁻¹λ``), whichever
  has the better-conditioned reduced systems: the dual when ``G`` is numerically low-rank plus
  a ridge (its free set lies in the large, flat part of ``G⁻¹``) unless the ridge is so small
  that ``G⁻¹`` would be inaccurate, the primal otherwise (and after all, when the dual's
  answer fails the final check). Near rank m/2, where ADMM (below) runs, its primal goes
  first (stopping early when its rate of convergence says it would not finish in time), and
  the dual takes over when it solves no row or its answer fails the final check;
- for ``32 ≤ m ≤ 4096``, over-relaxed ADMM first
  (:mod:`._dual_cone_splitting`): all rows share one ``(M + ρI)⁻¹``, so a step is one matrix
  product and two elementwise operations; float32 steps until the rows are solved to 1e-6,
  then float64 ones to the final tolerance. It converges at the speed of the reduced problems,
  in tens of steps; block pivoting (below) finishes the rows it leaves, from its answer, and
  takes all of them when float32 solves fewer than half;
- otherwise, FISTA to guess the active set and block principal pivoting to make it exact: up
  to ``m = SMALL_MAX_SIZE``, all in float64, with full-size masked solves
  (:mod:`._dual_cone_small`); beyond, mixed precision: a float32 guess, then a float64
  pivoting (:mod:`._dual_cone_box`) that starts from it, usually confirms it in one or two
  steps, and solves its reduced systems by batched Cholesky or by float32 CG corrections of
  float64 residuals (iterative refinement). Every decision that the answer depends on is
  float64, so a wrong float32 guess only costs time;
- the rows that pivoting leaves unsolved (on badly conditioned problems rounding can make its
  swaps undo each other) are finished by the primal active-set method
  (:mod:`._dual_cone_active`): one coordinate per step, but it does not cycle;
- a final check of the KKT conditions on the original problem. An answer of ADMM that fails it
  is solved again by pivoting alone (ADMM's tolerance is relative to the scaled problem): the
  same problem first (unless ADMM solved none of its rows: pivoting already gave that answer),
  then the primal one. The primal's rows that still miss it get exact reduced solves on their
  free sets (:func:`._dual_cone_pivot.polish`: next to very negative bounds, the check
  multiplies iterative solves' tolerance by a huge slack); if that fails too the solver raises
  rather than return inaccurate (or NaN) weights;
- a singular ``G`` (``reg_eps=0`` with a rank-deficient Jacobian, zero or duplicated rows; any
  ``G`` whose unit-diagonal Cholesky factor has a tiny pivot) is solved with a ridge of 1e-9
  of its diagonal, then refined by exact proximal-point steps towards the problem without it
  (:func:`._dual_cone_pivot.refine`); the final check is on ``G`` itself. Its weights are the
  limit of those of a vanishing ridge: unique, although ``G``'s problem has many solutions
  (``Jᵀv*`` is unique). A ``G`` that is not positive semi-definite to float64's rounding (a
  float32 Gramian) is first given the smallest ridge that makes it so, up to 1e-4 of its
  diagonal.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import check_choice
from ._dual_cone_box import BoxQP
from ._dual_cone_pivot import PIVOTING_TOLERANCE, polish, refine, solve_box, splits
from ._qpsolvers import REFERENCE_SOLVERS, project_weights_reference

SOLVERS = ("native", *REFERENCE_SOLVERS)

# Solve the dual when the participation ratio trace²/‖G‖²_F (Jacobi-scaled) is below this
# fraction of m: G is then close to low-rank plus a ridge. Between the two fractions (about
# rank m/2) ADMM's dual converges slowly and its primal often fast (m = 128: 38 → 9 ms), but
# when the primal's ADMM fails too, pivoting on the primal can take ten times as long as on
# the dual: with ADMM, the primal's ADMM goes first there, then the dual (measured on random
# Jacobians of every rank, m = 16 to 256, ridges 1e-4 to 1e-8).
_DUAL_RANK_FRACTION, _DUAL_RANK_FRACTION_ADMM = 0.4, 0.3
# ... unless G looks worse conditioned than this: its inverse would then have lost more than
# half of float64's digits (a tiny ridge), and the primal problem is the accurate one.
_DUAL_MAX_CONDITION = 1e8
# The relative KKT residual that the native solver guarantees (or raises).
KKT_TOLERANCE = 1e-7
# ADMM's penalty on the dual problem (see _penalty for the primal's).
_DUAL_PENALTY = 0.5
# A Gramian whose unit-diagonal Cholesky factor has a squared pivot below _SINGULAR (a
# condition number above 1/_SINGULAR) is solved as singular: with a ridge of _RIDGE times its
# diagonal (at least _RIDGE_FLOOR times its largest entry: zero rows), which moves the KKT
# residual by at most _RIDGE (a hundredth of KKT_TOLERANCE), then _REFINEMENTS proximal-point
# steps towards the problem without it. Relative to the diagonal, the ridge shifts every
# eigenvalue of the unit-diagonal G alike: its null space stays one cluster of eigenvalues,
# which costs CG one iteration, not many (measured: m = 128, rank 5, 100 → 50 ms).
_SINGULAR, _RIDGE, _RIDGE_FLOOR, _REFINEMENTS = 1e-9, 1e-9, 1e-6, 2
# A G that is not positive semi-definite to float64's rounding gets a ridge of up to
# 10**_ESCALATIONS times _RIDGE (1e-4, UPGrad's default reg_eps), the smallest that suffices.
_ESCALATIONS = 5
# CG stalls on such matrices (a cluster of eigenvalues at the ridge and a spread elsewhere):
# a reduced system that CG does not solve in this many iterations is solved by Cholesky.
_SINGULAR_CG_STEPS = 30


def project_weights(
    preferences: Tensor, gramian: Tensor, *, solver: str = "native", initial: Tensor | None = None
) -> Tensor:
    """Returns ``argmin_v vᵀGv s.t. v ≥ u`` for each row ``u`` of ``preferences``.

    Args:
        preferences: ``[k, m]`` lower bounds ``u``, one problem per row (any signs).
        gramian: ``[m, m]`` symmetric positive semi-definite ``G`` (normalised, and usually
            regularised; singular is allowed).
        solver: ``"native"`` (default, batched, on the Gramian's device), or ``"quadprog"`` /
            ``"osqp"`` (the slow per-row reference, through ``qpsolvers``).
        initial: optional ``[k, m]`` warm start, e.g. the previous step's solution; it changes
            the speed of the native solver, and its answer only within the solver's tolerance
            (weights within about 1e-7, relative, unless a tiny ridge leaves them
            ill-determined). Ignored by the reference solvers.

    Returns:
        ``[k, m]`` solutions ``v*``, on the device and dtype of ``gramian``.

    Raises:
        ValueError: on inconsistent shapes, an unknown solver, or a Gramian that is not
            positive semi-definite.
        RuntimeError: if the native solver cannot reach a relative KKT residual of
            ``KKT_TOLERANCE``; use a reference solver then. Observed only for rows whose
            negative preferences are 1e9 times their largest positive one or more: the
            residual's complementarity then asks for more digits than float64 holds.
    """
    _check_shapes(preferences, gramian, initial)
    check_choice(solver, "solver", SOLVERS)
    if solver != "native":
        return project_weights_reference(preferences, gramian, solver)
    # Inference mode spares the solver's few hundred small operations autograd's bookkeeping
    # (version counters, view tracking): 5–18% of its time at m ≤ 128. The answer is cloned out
    # of it, as a normal tensor that callers may use under autograd.
    with torch.inference_mode():
        weights = _project(preferences, gramian, initial)
    return weights.clone()


def _project(preferences: Tensor, gramian: Tensor, initial: Tensor | None) -> Tensor:
    """:func:`project_weights` with the native solver, on checked inputs."""
    matrix = gramian.detach().to(torch.float64)
    matrix = (matrix + matrix.T).mul_(0.5)
    bounds = preferences.detach().to(matrix)
    start = None if initial is None else initial.detach().to(matrix)
    if bounds.numel() == 0:
        return bounds.to(gramian.dtype)
    for name, value in (("preferences", bounds), ("initial", start)):
        if value is not None and not bool(torch.isfinite(value).all()):
            raise ValueError(
                f"`{name}` should contain only finite values. Found NaN or infinite entries "
                "(a NaN preference row would otherwise count as all-negative, with zero weights)."
            )
    size = bounds.amax(dim=1, keepdim=True)
    # Rows are scaled to max(u) = 1, a lower bound on ‖v*‖∞ (v* ≥ u), to which the final check
    # is relative: so are the solver's tolerances then (see BoxQP.scale).
    if bool(size.amin() > 0):  # the usual case: no row to leave out
        scaled_start = None if start is None else start / size
        return (_solve(matrix, bounds / size, scaled_start) * size).to(gramian.dtype)
    solvable = size.squeeze(1) > 0
    weights = torch.zeros_like(bounds)
    rows = solvable.nonzero().squeeze(1)
    if rows.numel() > 0:
        size = bounds[rows].amax(dim=1, keepdim=True)
        scaled_start = None if start is None else start[rows] / size
        weights[rows] = _solve(matrix, bounds[rows] / size, scaled_start) * size
    return weights.to(gramian.dtype)


def kkt_residual(weights: Tensor, preferences: Tensor, gramian: Tensor) -> Tensor:
    """Returns the relative KKT residual of each row's solution, ``[k]``.

    The largest of the violations of ``v ≥ u``, ``Gv ≥ 0`` and ``(Gv) ⊙ (v − u) = 0``,
    relative to ``‖v‖∞`` and ``max diag(G)``.
    """
    tiny = torch.finfo(weights.dtype).tiny
    size = weights.abs().amax(dim=1).clamp_min(tiny)
    product = weights @ gramian
    difference = weights - preferences
    primal = difference.amin(dim=1).neg_().clamp_min_(0) / size
    # Clamped: an all-zero row (preferences ≤ 0) has no violation, not 0/0.
    scale = (gramian.diagonal().amax() * size).clamp_min(tiny)
    dual = product.amin(dim=1).neg_().clamp_min_(0) / scale
    gap = (product * difference).abs_().amax(dim=1) / (scale * size).clamp_min(tiny)
    return torch.maximum(torch.maximum(primal, dual), gap)


def _solve(gramian: Tensor, preferences: Tensor, start: Tensor | None) -> Tensor:
    """The native solver on float64 inputs with ``max(u) > 0`` in every row."""
    root, scaled, factor, pivot = _factorize(gramian)
    if pivot**2 >= _SINGULAR:
        return _solve_definite(gramian, preferences, start, (root, scaled, factor, pivot))
    return _solve_semidefinite(gramian, preferences, start)


def _factorize(gramian: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
    """Jacobi scaling and Cholesky: ``(√diag(G), G scaled to a unit diagonal, its Cholesky
    factor, the factor's smallest pivot)``. The pivot is NaN where the factorisation fails
    (a singular or indefinite ``G``, a zero or negative diagonal entry)."""
    root = gramian.diagonal().sqrt()
    scaled = gramian / root.unsqueeze(1) / root.unsqueeze(0)  # unit diagonal
    factor, info = torch.linalg.cholesky_ex(scaled)
    # LAPACK reports NaN through `info`; the pivot check also catches a factor with NaN (where
    # G has a non-finite entry or a non-positive diagonal one) from a backend that does not.
    pivot = float(factor.diagonal().amin())
    return root, scaled, factor, pivot if int(info) == 0 and pivot > 0 else math.nan


def _solve_semidefinite(gramian: Tensor, preferences: Tensor, start: Tensor | None) -> Tensor:
    """A singular (or nearly singular) positive semi-definite ``G``: zero rows, duplicated rows,
    a rank-deficient Jacobian, ``reg_eps=0``.

    The problem with a ridge of ``_RIDGE`` times the diagonal of ``G`` is solved (with short CG
    solves: CG stalls on such matrices), then refined by proximal-point steps towards the
    problem without it (see :func:`._dual_cone_pivot.refine`), and checked on ``G``. The
    weights tend to those of the problem with a vanishing ridge, which are unique even where
    ``G``'s are not (e.g. duplicated rows share their weight equally). A ``G`` with negative
    eigenvalues beyond float64's rounding (a float32 Gramian: about -1e-6 of its diagonal) is
    taken with the smallest ridge, ``10ᵏ`` times ``_RIDGE`` for ``k ≤ _ESCALATIONS``, that makes
    it positive definite: the problem is then solved, and checked, on ``G`` plus it.
    """
    largest = float(gramian.diagonal().amax())
    if largest == 0 and not bool(gramian.any()):  # G = 0: every v ≥ u is optimal
        return preferences.clamp_min(0)
    floor = _RIDGE_FLOOR * largest if largest > 0 else math.nan
    ridge = _RIDGE * gramian.diagonal().clamp_min(floor)
    base, factorization = _definite_base(gramian, ridge)
    shifted = base + torch.diag(ridge)
    weights = _solve_definite(shifted, preferences, start, factorization, _SINGULAR_CG_STEPS)
    root, scaled = factorization[:2]
    qp = BoxQP(scaled, torch.zeros_like(preferences), preferences * root)
    solution = refine(qp, weights * root, ridge / root.square(), _REFINEMENTS)
    weights = torch.maximum(solution / root, preferences)
    residual = _residual(weights, preferences, base)
    if not residual <= KKT_TOLERANCE:  # NaN too
        raise RuntimeError(_inaccurate(residual))
    return weights


def _definite_base(
    gramian: Tensor, ridge: Tensor
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, float]]:
    """``G``, or ``G`` plus the smallest multiple ``10ᵏ ridge`` (``k ≥ 1``) that makes it
    positive definite, and the :func:`_factorize` of that plus ``ridge``."""
    base = gramian
    for power in range(_ESCALATIONS + 1):
        if power > 0:
            base = gramian + torch.diag(ridge * 10**power)
        factorization = _factorize(base + torch.diag(ridge))
        if not math.isnan(factorization[3]):
            return base, factorization
    raise ValueError(
        "`gramian` should be positive semi-definite (a Gramian J Jᵀ). Found a matrix whose "
        f"Cholesky factorisation fails even with a ridge of {_RIDGE * 10**_ESCALATIONS:.0e} "
        "times its diagonal: it has a negative eigenvalue (or a non-finite entry). Compute it "
        "as `J @ J.T`, or a sum of such products."
    )


def _solve_definite(
    gramian: Tensor,
    preferences: Tensor,
    start: Tensor | None,
    factorization: tuple[Tensor, Tensor, Tensor, float],
    cg_max_iter: int | None = None,
) -> Tensor:
    """The native solver for a numerically positive definite ``G``, from its
    :func:`_factorize`. ``cg_max_iter`` bounds pivoting's CG solves (see
    :func:`._dual_cone_box.block_pivoting`)."""
    root, scaled, factor, pivot = factorization
    lower = preferences * root  # the bound on w = √diag(G) ⊙ v
    start = None if start is None else start * root
    # ADMM's tolerance is relative to the scaled problem: an answer of ADMM that misses the final
    # check is solved again by pivoting alone (which otherwise only finishes what ADMM leaves).
    admm = splits(len(scaled))
    ratio = _participation(scaled, pivot)
    qp = None  # the primal problem, posed where it is solved
    if admm and ratio >= _DUAL_RANK_FRACTION_ADMM:
        qp = BoxQP(scaled, torch.zeros_like(lower), lower)
        # The primal's ADMM. Near rank m/2 (below _DUAL_RANK_FRACTION) only when it converges:
        # otherwise the dual (its ADMM, whose answer pivoting starts from).
        solution, _ = solve_box(
            qp,
            start,
            penalty=_penalty(factor),
            pivot_all=ratio >= _DUAL_RANK_FRACTION,
            cg_max_iter=cg_max_iter,
        )
        if solution is not None:
            weights = torch.maximum(solution / root, preferences)
            if _residual(weights, preferences, gramian) <= KKT_TOLERANCE:
                return weights
    if ratio < _DUAL_RANK_FRACTION:
        dual, x, unit = _dual(scaled, factor, lower, start)
        splitting_first = admm
        while True:
            solution, from_splitting = solve_box(
                dual,
                x,
                splitting_first=splitting_first,
                penalty=_DUAL_PENALTY,
                cg_max_iter=cg_max_iter,
            )
            weights = torch.maximum(solution @ dual.matrix / unit / root, preferences)
            if _residual(weights, preferences, gramian) <= KKT_TOLERANCE:
                return weights
            if not from_splitting:  # pivoting's own answer: G⁻¹ is not accurate enough
                break
            splitting_first = False
    # After ADMM's answer, or the dual's (badly conditioned G): the primal, by pivoting.
    qp = BoxQP(scaled, torch.zeros_like(lower), lower) if qp is None else qp
    solution, _ = solve_box(qp, start, splitting_first=False, cg_max_iter=cg_max_iter)
    weights = torch.maximum(solution / root, preferences)
    residual = _residual(weights, preferences, gramian)
    if not residual <= KKT_TOLERANCE:  # last resort: exact reduced solves in the failing rows
        rows = (~(kkt_residual(weights, preferences, gramian) <= KKT_TOLERANCE)).nonzero()
        rows = rows.squeeze(1)
        sub = BoxQP(scaled, qp.linear[rows], lower[rows])
        try:
            solution[rows] = polish(sub, solution[rows])
        except RuntimeError:  # a reduced system not numerically definite: the error below
            pass
        else:
            weights = torch.maximum(solution / root, preferences)
            residual = _residual(weights, preferences, gramian)
    if not residual <= KKT_TOLERANCE:  # NaN too
        raise RuntimeError(_inaccurate(residual))
    return weights


def _inaccurate(residual: float) -> str:
    return (
        f"The native dual-cone solver reached a relative KKT residual of {residual:.1e} "
        f"only (the target is {KKT_TOLERANCE:.0e}). Use solver='quadprog' for this "
        "Gramian, and please report it with the Gramian attached."
    )


def _dual(
    scaled: Tensor, factor: Tensor, lower: Tensor, start: Tensor | None
) -> tuple[BoxQP, Tensor | None, Tensor]:
    """The dual ``min_{λ≥0} ½λᵀG⁻¹λ − ℓᵀλ``, Jacobi-scaled (``λ = unit ⊙ μ``), and its start.

    Returns the problem in ``μ``, the warm start mapped to ``μ`` (or ``None``), and ``unit``:
    the primal solution is ``w = (μ @ H) / unit`` with ``H`` the problem's matrix.
    """
    inverse = torch.cholesky_inverse(factor)  # symmetric, exactly
    unit = inverse.diagonal().rsqrt()
    qp = BoxQP(inverse * torch.outer(unit, unit), lower * unit, torch.zeros_like(lower))
    if start is None:
        return qp, None, unit
    # Multipliers λ = Gw on the coordinates where the warm start sits on its bound, 0 elsewhere.
    on_bound = start <= lower + PIVOTING_TOLERANCE * lower.abs().amax(dim=1, keepdim=True)
    return qp, (start @ scaled).clamp_min(0) / unit * on_bound, unit


def _residual(weights: Tensor, preferences: Tensor, gramian: Tensor) -> float:
    """``max(kkt_residual(...))`` for ``weights ≥ preferences`` (or NaN), as the solver's are,
    in fewer operations: the first condition holds, and the scales are shared."""
    size = weights.abs().amax(dim=1)
    product = weights @ gramian
    gap = (product * (weights - preferences)).abs_().amax(dim=1).div_(size)
    dual = product.amin(dim=1).neg_().clamp_min_(0)
    return float(torch.maximum(gap, dual).div_(size).amax()) / float(gramian.diagonal().amax())


def _participation(scaled: Tensor, pivot: float) -> float:
    """The participation ratio ``trace²/‖G‖²_F`` of ``scaled`` (unit diagonal, smallest
    Cholesky pivot ``pivot``) as a fraction of m: small when ``G`` is close to low-rank plus a
    ridge. Infinite when ``G`` is conditioned too badly for its inverse (the dual's matrix) to
    be accurate.

    ``1 / pivot²`` is a lower bound on the condition number: each squared pivot is at least the
    smallest eigenvalue, and the largest is at least 1.
    """
    if pivot**-2 > _DUAL_MAX_CONDITION:
        return math.inf
    return scaled.shape[0] / float(torch.linalg.vector_norm(scaled)) ** 2


def _penalty(factor: Tensor) -> float:
    """ADMM's penalty for the primal problem: the mean squared pivot of the Cholesky factor of
    the unit-diagonal ``G``, within ``[0.1, 1]``.

    It sits between the small and the large eigenvalues, near the best ``ρ`` measured on
    UPGrad's Gramians: 0.5 for random Jacobians, about 0.9 for the well-conditioned Gramians of
    per-sample gradients (where 0.5 took twice the steps).
    """
    return min(max(float(factor.diagonal().square().mean()), 0.1), 1.0)


def _check_shapes(preferences: Tensor, gramian: Tensor, initial: Tensor | None) -> None:
    if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1]:
        raise ValueError(
            f"`gramian` should be a square matrix [m, m]. Found shape {tuple(gramian.shape)}."
        )
    m = gramian.shape[0]
    if preferences.ndim != 2 or preferences.shape[1] != m:
        raise ValueError(
            f"`preferences` should have shape [k, {m}] (one row per problem, one column per "
            f"row of the [{m}, {m}] Gramian). Found shape {tuple(preferences.shape)}."
        )
    if initial is not None and initial.shape != preferences.shape:
        raise ValueError(
            f"`initial` should have the shape of `preferences`, {tuple(preferences.shape)}. "
            f"Found shape {tuple(initial.shape)}."
        )
