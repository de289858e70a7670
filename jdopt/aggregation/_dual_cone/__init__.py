"""Projection onto the dual cone ``{x : J x ≥ 0}``, in weight space (UPGrad, DualProj).

For a preference vector ``u [m]``, the projection of ``Jᵀu`` onto the dual cone is ``Jᵀv*`` with
``v* = argmin_v vᵀGv  s.t.  v ≥ u`` (elementwise), ``G = J Jᵀ``. Its KKT conditions:
``v ≥ u``, ``μ = 2Gv ≥ 0``, ``μ ⊙ (v − u) = 0``. :func:`project_weights` solves ``k`` such
problems at once, sharing ``G``, with a batched solver in torch (or a per-row reference).

What runs. Rows are scaled to ``max(u) = 1`` (``v*`` is positively homogeneous in ``u``; rows
with ``u ≤ 0`` get ``v* = 0``). ``G`` is scaled to a unit diagonal and factorised; the facts
of that (m, the participation ratio ``trace²/‖G‖²_F`` as a fraction of m, the condition number
bound, ADMM's penalty) give the plan (:func:`._plan.plan`): attempts, each a list of stages on
the primal (``w = √diag(G) ⊙ v ≥ √diag(G) ⊙ u``) or the dual (``λ ≥ 0``) problem
(:mod:`._forms`). Each stage gets the rows the previous ones left; after each attempt, the final
check (relative KKT residual ≤ ``kkt_tolerance`` on ``G``) hands the failing rows to the next
attempt; if rows fail the last, the solver raises. With the default options (m: size; r: the
participation fraction; ADMM for 32 ≤ m ≤ 4096)::

    case                         attempts (in order; ✓ = final check)
    ---------------------------  --------------------------------------------------------------
    ADMM size, r ≥ 0.4           primal: ADMM → pivoting → active set ✓
                                 primal: guess → pivoting → active set ✓   primal: polish ✓
    ADMM size, 0.3 ≤ r < 0.4     primal: ADMM (gives up when too slow) → pivoting → active
                                 set (these two only if ADMM solved some row) ✓
                                 dual: ADMM → pivoting → active set ✓
                                 dual: guess → pivoting → active set ✓
                                 primal: guess → pivoting → active set ✓   primal: polish ✓
    ADMM size, r < 0.3           as above, without the primal's ADMM
    other sizes, r < 0.4         dual: guess → pivoting → active set ✓
                                 primal: guess → pivoting → active set ✓   primal: polish ✓
    other sizes, r ≥ 0.4         primal: guess → pivoting → active set ✓   primal: polish ✓
    singular G                   the plan of G + a ridge of 1e-9 diag(G), then two exact
                                 proximal-point steps towards G (:func:`._exact.refine`) ✓

"guess → pivoting" is, by m: up to 24, float64 FISTA and pivoting with masked full-size
Cholesky solves; up to 384, restarted float32 FISTA, float64 pivoting; beyond, short float32
FISTA, float32 pivoting, float64 pivoting (gathered Cholesky or refined CG solves). r is
infinite when ``G``'s condition number may exceed 1e8 (its inverse would be inaccurate).

The stages (kernels, all ``(problem, start, options) → (solution, solved rows)``):

- ADMM (:mod:`._admm`): one shared ``(M + ρI)⁻¹``, a step is one product; float32 then float64.
- FISTA (:mod:`._fista`): a cheap guess of the active set.
- block principal pivoting (:mod:`._pivoting`): exact reduced solves, swaps; rows that stop
  improving are left to
- the primal active-set method (:mod:`._active_set`): one coordinate per step, never cycles.
- polish (:mod:`._exact`): exact reduced solves on a solution's free set.

Every tunable is in :class:`SolverOptions`; a test or a user forces a plan through it
(``admm_sizes=(1, 0)``: no ADMM; ``dual_fraction=0``: never the dual; …).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..._linalg import exact_float32, no_autocast
from .._checks import check_choice
from .._qpsolvers import REFERENCE_SOLVERS, project_weights_reference
from ._forms import factorize
from ._options import DEFAULT, ON_ACCELERATORS, SolverOptions, for_device
from ._plan import Attempt, Facts, Stage, describe, plan
from ._problem import kkt_residual
from ._solve import solve

__all__ = ["KKT_TOLERANCE", "SOLVERS", "Attempt", "Facts", "SolverOptions", "Stage", "describe"]
__all__ += ["DEFAULT", "ON_ACCELERATORS", "for_device", "kkt_residual", "plan", "plan_for"]
__all__ += ["project_weights"]

SOLVERS = ("native", *REFERENCE_SOLVERS)
# The relative KKT residual that the native solver guarantees (or raises), by default.
KKT_TOLERANCE = DEFAULT.kkt_tolerance


def project_weights(
    preferences: Tensor,
    gramian: Tensor,
    *,
    solver: str = "native",
    initial: Tensor | None = None,
    options: SolverOptions | None = None,
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
        options: the native solver's tunables and plan switches (:class:`SolverOptions`);
            ``None`` (default): those for the Gramian's device (:func:`for_device`: on an
            accelerator, a first attempt of fixed length that reads the device once).

    Returns:
        ``[k, m]`` solutions ``v*``, on the device and dtype of ``gramian``; solved in float64
        (and float32 guesses) whatever that dtype, the caller's autocast or TF32 settings.

    Raises:
        ValueError: on inconsistent shapes, non-finite preferences or warm start, an unknown
            solver, or a Gramian that is not positive semi-definite.
        RuntimeError: if the native solver cannot reach a relative KKT residual of
            ``options.kkt_tolerance``; use a reference solver then. Observed only for rows
            whose negative preferences are 1e9 times their largest positive one or more: the
            residual's complementarity then asks for more digits than float64 holds.
    """
    _check_shapes(preferences, gramian, initial)
    check_choice(solver, "solver", SOLVERS)
    if solver != "native":
        return project_weights_reference(preferences, gramian, solver)
    # Inference mode spares the solver's few hundred small operations autograd's bookkeeping
    # (version counters, view tracking): 5–18% of its time at m ≤ 128. The answer is cloned out
    # of it, as a normal tensor that callers may use under autograd. The float32 stages only
    # guess for the float64 ones: autocast or TF32 would make their guesses worse (slower).
    options = for_device(gramian.device) if options is None else options
    with torch.inference_mode(), no_autocast(gramian.device.type), exact_float32():
        weights = _project(preferences, gramian, initial, options)
    return weights.clone()


def plan_for(gramian: Tensor, options: SolverOptions = DEFAULT) -> tuple[Attempt, ...]:
    """The plan the native solver follows for a positive definite ``gramian`` (for a singular
    one, it follows the plan of ``gramian`` plus a ridge)."""
    matrix = gramian.detach().to(torch.float64)
    return plan(factorize((matrix + matrix.T) / 2, options)[0].facts, options)


def _project(
    preferences: Tensor, gramian: Tensor, initial: Tensor | None, options: SolverOptions
) -> Tensor:
    """:func:`project_weights` with the native solver, on inputs of checked shapes. What the
    host needs to know of the inputs (their finiteness, the rows to solve, the facts of the
    plan) is read from the device at once."""
    matrix = gramian.detach().to(torch.float64)
    matrix = (matrix + matrix.T).mul_(0.5)
    bounds = preferences.detach().to(matrix)
    start = None if initial is None else initial.detach().to(matrix)
    if bounds.numel() == 0:
        return bounds.to(gramian.dtype)
    size = bounds.amax(dim=1, keepdim=True)
    named = {"preferences": bounds} if start is None else {"preferences": bounds, "initial": start}
    checks = (*[torch.isfinite(v).all() for v in named.values()], size.amin())
    scaled, (*finite, smallest, diagonal) = factorize(
        matrix, options, (*checks, _diagonal(bounds, options))
    )
    for name, ok in zip(named, finite, strict=True):
        if not ok:
            raise ValueError(
                f"`{name}` should contain only finite values. Found NaN or infinite entries "
                "(a NaN preference row would otherwise count as all-negative, with zero weights)."
            )
    # Rows are scaled to max(u) = 1, a lower bound on ‖v*‖∞ (v* ≥ u), to which the final check
    # is relative: so are the solver's tolerances then (see BoxQP.scale).
    if smallest > 0:  # the usual case: no row to leave out
        scaled_start = None if start is None else start / size
        found = solve(matrix, scaled, bounds / size, scaled_start, options, bool(diagonal))
        return (found * size).to(gramian.dtype)
    weights = torch.zeros_like(bounds)
    rows = (size.squeeze(1) > 0).nonzero().squeeze(1)
    if rows.numel() > 0:
        size = bounds[rows].amax(dim=1, keepdim=True)
        scaled_start = None if start is None else start[rows] / size
        weights[rows] = solve(matrix, scaled, bounds[rows] / size, scaled_start, options) * size
    return weights.to(gramian.dtype)


def _diagonal(bounds: Tensor, options: SolverOptions) -> Tensor:
    """Whether ``bounds`` is ``[m, m]`` with nonzero entries on its diagonal only (UPGrad's),
    for m where ADMM uses it (see BoxQP.diagonal)."""
    k, m = bounds.shape
    if k != m or m < options.diagonal_size:
        return torch.zeros((), dtype=torch.bool, device=bounds.device)
    return torch.count_nonzero(bounds) == torch.count_nonzero(bounds.diagonal())


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
