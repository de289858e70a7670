"""The native solver: the plan's attempts in one loop, each followed by the final check."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from ._exact import refine
from ._forms import Forms, Scaled, factorize
from ._options import SolverOptions as Options
from ._plan import Attempt, plan
from ._problem import BoxQP, NotDefinite, kkt_residual


def solve(
    gramian: Tensor,
    scaled: Scaled,
    preferences: Tensor,
    start: Tensor | None,
    options: Options,
    diagonal: bool = False,
) -> Tensor:
    """The native solver on float64 inputs with ``max(u) = 1`` in every row, given the
    :func:`._forms.factorize` of ``gramian`` (``diagonal``: see BoxQP)."""
    if scaled.pivot**2 >= options.singular:
        return _attempts(gramian, scaled, preferences, start, options, diagonal)
    return _singular(gramian, preferences, start, options)


def _attempts(
    gramian: Tensor,
    scaled: Scaled,
    preferences: Tensor,
    start: Tensor | None,
    options: Options,
    diagonal: bool = False,
) -> Tensor:
    """Runs the plan's attempts, each on the rows that fail the final check on ``gramian``
    after the previous ones (all of them at first), until none does."""
    forms, failure = Forms(scaled, options), None
    weights, rows = start, None  # rows: those still failing (None: all)
    for attempt in plan(scaled.facts, options):
        bounds = _take(preferences, rows)
        begin = _start_of(_take(weights, rows), bounds)
        try:
            qp = forms.problem(attempt.form, bounds, diagonal and rows is None)
            x = _stages(attempt, qp, forms.start(attempt.form, begin, bounds), options)
        except NotDefinite as error:  # the next attempt may not need that reduced system
            failure = error
            continue
        found = forms.weights(attempt.form, x, bounds)
        weights = found if rows is None else weights.index_put_((rows,), found)
        residual = kkt_residual(found, bounds, gramian)
        if float(residual.amax()) <= options.kkt_tolerance:  # NaN: no
            return weights
        index = (~(residual <= options.kkt_tolerance)).nonzero().squeeze(1)
        rows = index if rows is None else rows[index]
    worst = (
        math.nan if weights is None else float(kkt_residual(weights, preferences, gramian).max())
    )
    raise RuntimeError(inaccurate(worst, options, failure)) from failure


def _take(values: Tensor | None, rows: Tensor | None) -> Tensor | None:
    """``values[rows]``, where ``None`` rows are all of them."""
    return values if values is None or rows is None else values[rows]


def _start_of(weights: Tensor | None, bounds: Tensor) -> Tensor | None:
    """The start of an attempt: the weights so far, where they are finite (a fixed-length
    attempt leaves NaN rows where a reduced system was not definite), else the bounds."""
    return None if weights is None else torch.where(weights.isfinite(), weights, bounds)


def _stages(attempt: Attempt, qp: BoxQP, x: Tensor | None, options: Options) -> Tensor:
    """The attempt's stages, each on the rows that the previous ones left unsolved (a stage's
    solved rows are read on the host only when a stage follows it)."""
    solved, count, last = None, 0, len(attempt.stages) - 1
    for index, stage in enumerate(attempt.stages):
        if stage.after_progress and count == 0:
            break
        todo = None if count == 0 else (~solved).nonzero().squeeze(1)
        sub = qp if todo is None else qp.rows(todo)
        begin = x if todo is None or x is None else x[todo]
        if stage.dtype is not None:
            sub, begin = sub.to(stage.dtype), None if begin is None else begin.to(stage.dtype)
        try:
            found, done = stage.kernel(sub, begin, options)
        except NotDefinite:
            if stage.dtype is None:
                raise
            continue  # a float32 guess that fails only costs time
        if done is None or found.dtype != qp.matrix.dtype:  # a guess: no row solved
            found, done = found.to(qp.matrix.dtype), None
        if todo is None:
            x, solved = found, done
        else:
            x[todo] = found
            if done is not None:
                solved[todo] = done
        if index == last:
            break
        count = 0 if solved is None else int(solved.count_nonzero())
        if count == qp.lower.shape[0]:
            break
    return x


def _singular(
    gramian: Tensor, preferences: Tensor, start: Tensor | None, options: Options
) -> Tensor:
    """A singular (or nearly singular) ``G``: zero rows, duplicated rows, a rank-deficient
    Jacobian, ``reg_eps=0``.

    The problem with a ridge of ``ridge`` times the diagonal of ``G`` is solved (with short CG
    solves: CG stalls on such matrices), refined by proximal-point steps towards the problem
    without it (:func:`._exact.refine`), and checked on ``G``. The weights tend to those of a
    vanishing ridge, which are unique even where ``G``'s are not (duplicated rows share their
    weight equally). A ``G`` with negative eigenvalues beyond float64's rounding (a float32
    Gramian) is taken with the smallest ridge that makes it positive definite.
    """
    diagonal = gramian.diagonal()
    largest = float(diagonal.amax())
    if largest == 0 and not bool(gramian.any()):  # G = 0: every v ≥ u is optimal
        return preferences.clamp_min(0)
    floor = options.ridge_floor * largest if largest > 0 else math.nan
    ridge = options.ridge * diagonal.clamp_min(floor)
    base, scaled = _definite_base(gramian, ridge, options)
    short_cg = dataclasses.replace(options, cg_max_iter=options.singular_cg_steps)
    weights = _attempts(base + torch.diag(ridge), scaled, preferences, start, short_cg)
    root = scaled.root
    qp = BoxQP(scaled.matrix, torch.zeros_like(preferences), preferences * root, homogeneous=True)
    solution, _ = refine(qp, weights * root, options, ridge=ridge / root.square())
    weights = torch.maximum(solution / root, preferences)
    residual = float(kkt_residual(weights, preferences, base).max())
    if not residual <= options.kkt_tolerance:  # NaN too
        raise RuntimeError(inaccurate(residual, options))
    return weights


def _definite_base(gramian: Tensor, ridge: Tensor, options: Options) -> tuple[Tensor, Scaled]:
    """``G``, or ``G`` plus the smallest multiple ``10ᵏ ridge`` (``k ≥ 1``) that makes it
    positive definite, and the :func:`._forms.factorize` of that plus ``ridge``."""
    base = gramian
    for power in range(options.escalations + 1):
        if power > 0:
            base = gramian + torch.diag(ridge * 10**power)
        scaled, _ = factorize(base + torch.diag(ridge), options)
        if not math.isnan(scaled.pivot):
            return base, scaled
    raise ValueError(
        "`gramian` should be positive semi-definite (a Gramian J Jᵀ). Found a matrix whose "
        f"Cholesky factorisation fails even with a ridge of "
        f"{options.ridge * 10**options.escalations:.0e} times its diagonal: it has a negative "
        "eigenvalue (or a non-finite entry). Compute it as `J @ J.T`, or a sum of such products."
    )


def inaccurate(residual: float, options: Options, failure: Exception | None = None) -> str:
    cause = "" if failure is None else f" ({failure})"
    return (
        f"The native dual-cone solver reached a relative KKT residual of {residual:.1e} "
        f"only (the target is {options.kkt_tolerance:.0e}){cause}. Use solver='quadprog' for "
        "this Gramian, and please report it with the Gramian attached."
    )
