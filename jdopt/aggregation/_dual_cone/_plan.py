"""The plan: from the facts of a problem to the ordered attempts that solve it.

A pure function of :class:`Facts` and :class:`~._options.Options`; the table of
:mod:`jdopt.aggregation._dual_cone` shows what it returns.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ._active_set import active_set
from ._admm import admm, admm_fixed
from ._exact import polish
from ._fista import fista
from ._options import SolverOptions as Options
from ._pivoting import gathered, masked, pivot, unchecked
from ._problem import BoxQP

# (problem, start or None, options) -> (solution, [k] solved rows, or None: a guess)
Kernel = Callable[[BoxQP, "Tensor | None", Options], tuple[Tensor, "Tensor | None"]]


class Stage(NamedTuple):
    """One kernel, run on the rows still unsolved, in ``dtype`` (``None``: the problem's; a
    lower precision only guesses: its rows count as unsolved); with ``after_progress``, only
    when the attempt's earlier stages solved some row (otherwise the attempt ends there: the
    problem is too hard for this form)."""

    name: str
    kernel: Kernel
    dtype: torch.dtype | None = None
    after_progress: bool = False


class Attempt(NamedTuple):
    """Stages on one form of the problem (``"primal"`` or ``"dual"``), each on the rows the
    previous ones left; then the final check, whose failing rows go to the next attempt."""

    form: str
    stages: tuple[Stage, ...]


class Facts(NamedTuple):
    """What the plan depends on: m; the participation ratio ``trace²/‖G‖²_F`` of the
    unit-diagonal ``G`` as a fraction of m (infinite when ``G`` may be too badly conditioned
    for its inverse to be accurate); the primal's ADMM penalty; the dtype and device."""

    size: int
    fraction: float
    penalty: float
    dtype: torch.dtype = torch.float64
    device: torch.device = torch.device("cpu")


def plan(facts: Facts, options: Options) -> tuple[Attempt, ...]:
    """The attempts, in order, for a problem with these ``facts``."""
    m, fraction = facts.size, facts.fraction
    low, high = options.admm_sizes
    splits = low <= m <= high
    attempts = []
    if splits and fraction >= options.primal_admm_fraction:
        if fraction >= options.dual_fraction:
            attempts.append(Attempt("primal", _admm_first(m, facts.penalty, options)))
        else:  # near rank m/2: the primal only where its ADMM converges, then the dual
            attempts.append(Attempt("primal", _admm_first(m, facts.penalty, options, True)))
    if fraction < options.dual_fraction:
        first = _admm_first(m, options.dual_penalty, options) if splits else _pivoting(m, options)
        attempts.append(Attempt("dual", first))
        if splits:  # ADMM's tolerance is on the scaled problem: pivoting may do better
            attempts.append(Attempt("dual", _pivoting(m, options)))
    attempts.append(Attempt("primal", _pivoting(m, options)))
    attempts.append(Attempt("primal", (Stage("polish", polish),)))
    once = _once(facts, attempts[0], options) if options.check_once else None
    return tuple(attempts) if once is None else (once, *attempts)


def _once(facts: Facts, first: Attempt, options: Options) -> Attempt | None:
    """The attempt of fixed length, on the form of the plan's ``first`` attempt: ADMM's steps
    where that starts with ADMM; below ``admm_sizes``, FISTA's guess and masked pivoting
    steps; none otherwise (a form on which ADMM would be slow, at sizes where masked solves
    are expensive)."""
    if first.stages[0].name.startswith("admm"):
        penalty = facts.penalty if first.form == "primal" else options.dual_penalty
        steps = options.once_admm_steps
        kernel = functools.partial(admm_fixed, penalty=penalty, steps=steps)
        return Attempt(first.form, (Stage("admm (fixed)", kernel),))
    if facts.size >= options.admm_sizes[0]:
        return None
    steps = next((n for size, n in options.small_guess_steps if facts.size <= size), 30)
    max_iter = options.once_pivoting_steps
    kernel = functools.partial(pivot, solve=unchecked, max_iter=max_iter, reads=False)
    return Attempt(first.form, (_fista(steps), Stage("pivoting (fixed)", kernel)))


def _admm(penalty: float, give_up: bool = False) -> Stage:
    kernel = functools.partial(admm, penalty=penalty, give_up=give_up)
    return Stage("admm (gives up)" if give_up else "admm", kernel)


def _admm_first(
    m: int, penalty: float, options: Options, give_up: bool = False
) -> tuple[Stage, ...]:
    """ADMM, then pivoting from its answer on the rows it leaves, then the active-set method.
    With ``give_up``, ADMM stops when its rate says it would not converge in time, and the
    rest of the attempt runs only if it solved some row: when ADMM converges slowly on a
    form, pivoting on it can take ten times as long as on the other."""
    rest = (_pivot(m, options), Stage("active set", active_set))
    if give_up:
        rest = tuple(stage._replace(after_progress=True) for stage in rest)
    return (_admm(penalty, give_up), *rest)


def _pivoting(m: int, options: Options) -> tuple[Stage, ...]:
    """FISTA's guess, pivoting from it, then the active-set method: all in float64 with masked
    full-size solves up to ``small_size``; beyond, a float32 guess (float32 products are about
    twice as fast), which the float64 pivoting usually confirms in one or two steps."""
    finish = Stage("active set", active_set)
    if m <= options.small_size:
        steps = next((n for size, n in options.small_guess_steps if m <= size), 30)
        return (_fista(steps), _pivot(m, options), finish)
    if m <= options.long_guess_size:
        steps, period = options.long_guess_steps
        return (_fista(steps, period, torch.float32), _pivot(m, options), finish)
    max_iter = options.rough_pivoting_steps + m // 4
    rough = functools.partial(pivot, solve=gathered, max_iter=max_iter)
    guess = _fista(options.short_guess_steps, 0, torch.float32)
    return (guess, Stage("pivoting", rough, torch.float32), _pivot(m, options), finish)


def _fista(steps: int, period: int = 0, dtype: torch.dtype | None = None) -> Stage:
    return Stage("fista", functools.partial(fista, steps=steps, period=period), dtype)


def _pivot(m: int, options: Options) -> Stage:
    solve = masked if m <= options.small_size else gathered
    max_iter = options.pivoting_steps + m // 2
    return Stage("pivoting", functools.partial(pivot, solve=solve, max_iter=max_iter))


def describe(attempts: tuple[Attempt, ...]) -> str:
    """One line per attempt: its form and its stages."""
    return "\n".join(f"{a.form}: " + " → ".join(map(_label, a.stages)) for a in attempts)


def _label(stage: Stage) -> str:
    return stage.name + " (float32)" * bool(stage.dtype) + " (if progress)" * stage.after_progress
