"""Every stage, form and path of the native solver, forced through ``SolverOptions``, gives the
right answer: the KKT conditions to 1e-7 and quadprog's weights, on several families.

Where the plan shows the forced choice (``plan_for``), the test checks that it does; the other
switches (reduced solves, the finishes) act inside the kernels and are checked by the answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch

from jdopt._linalg import normalize
from jdopt.aggregation._dual_cone import Attempt, SolverOptions, plan_for, project_weights

from ._dual_cone_problems import (
    assert_close_to,
    assert_kkt,
    assert_solved,
    conflicting,
    duplicated,
    jacobian,
    low_rank,
    make,
    mixed_preferences,
    rand,
    reference,
    upgrad_preferences,
)

ALWAYS_ADMM = (1, 10**9)
NO_ADMM = (1, 0)
GATHERED = {"small_size": 0}  # beyond small_size: gathered reduced solves, float32 guesses
CG = {"small_size": 0, "direct_size": 0}  # reduced systems solved by CG
NO_GUESS = {"small_guess_steps": ((10**9, 0),), "long_guess_steps": (0, 0)}  # cold pivoting


def _stages(attempts: tuple[Attempt, ...]) -> list[tuple[str, str, torch.dtype | None]]:
    return [(a.form, s.name, s.dtype) for a in attempts for s in a.stages]


def _has(form: str, name: str, dtype: torch.dtype | None = None) -> Callable:
    return lambda attempts: (form, name, dtype) in _stages(attempts)


def _runs(name: str) -> Callable:
    return lambda attempts: any(n == name for _, n, _ in _stages(attempts))


def _lacks(name: str) -> Callable:
    return lambda attempts: all(not n.startswith(name) for _, n, _ in _stages(attempts))


def _first(form: str, name: str) -> Callable:
    return lambda attempts: (attempts[0].form, attempts[0].stages[0].name) == (form, name)


def _no_dual(attempts: tuple[Attempt, ...]) -> bool:
    return all(a.form == "primal" for a in attempts)


class Case(NamedTuple):
    name: str
    options: SolverOptions
    in_plan: Callable[[tuple[Attempt, ...]], bool] | None = None


DUAL = {"dual_fraction": math.inf, "dual_max_condition": math.inf}


def _pivoting(**options) -> SolverOptions:
    """Options without ADMM (unless given), so that pivoting and its guesses do the work."""
    return SolverOptions(**{"admm_sizes": NO_ADMM, **options})


CASES = [
    Case("no ADMM", _pivoting(), _lacks("admm")),
    Case("ADMM at every size", SolverOptions(admm_sizes=ALWAYS_ADMM), _runs("admm")),
    Case("never the dual", _pivoting(dual_fraction=0.0), _no_dual),
    Case("always the dual, by pivoting", _pivoting(**DUAL), _first("dual", "fista")),
    Case(
        "always the dual, ADMM first",
        SolverOptions(admm_sizes=ALWAYS_ADMM, primal_admm_fraction=math.inf, **DUAL),
        _first("dual", "admm"),
    ),
    Case(
        "a primal ADMM that gives up, then the dual",
        SolverOptions(admm_sizes=ALWAYS_ADMM, primal_admm_fraction=0.0, **DUAL),
        lambda a: _first("primal", "admm (gives up)")(a) and a[1].form == "dual",
    ),
    Case(
        "masked pivoting after a float64 guess",
        _pivoting(small_size=10**9),
        _has("primal", "fista", None),
    ),
    Case(
        "gathered pivoting after a float32 guess",
        _pivoting(**GATHERED),
        _has("primal", "fista", torch.float32),
    ),
    Case("CG reduced solves", _pivoting(**CG)),
    Case("CG, as no system is padded", _pivoting(padded_size=0, small_size=0)),
    Case(
        "float32 pivoting after a short guess",
        _pivoting(long_guess_size=0, **GATHERED),
        _has("primal", "pivoting", torch.float32),
    ),
    Case(
        "float32 pivoting with CG",
        _pivoting(long_guess_size=0, **CG),
        _has("primal", "pivoting", torch.float32),
    ),
    Case("the active-set method finishes stuck rows", _pivoting(backup_chances=-1, **NO_GUESS)),
    Case(
        "the active-set method finishes stuck rows, gathered",
        _pivoting(backup_chances=-1, **NO_GUESS, **GATHERED),
    ),
    Case(
        "the fewest pivoting steps, from a cold start",
        _pivoting(pivoting_steps=0, rough_pivoting_steps=0, **NO_GUESS),
    ),
    Case("no guess: pivoting from a cold start", _pivoting(**NO_GUESS)),
    Case(
        "no guess before float32 pivoting",
        _pivoting(short_guess_steps=0, long_guess_size=0, **GATHERED),
    ),
    Case("the ridge and proximal refinement path", SolverOptions(singular=1.0)),
    Case("the ridge path without refinement", SolverOptions(singular=1.0, refinements=0)),
    Case("the ridge path with CG solves", _pivoting(singular=1.0, **CG)),
    Case("CG hands its rows to Cholesky", _pivoting(cg_steps=1, cg_steps_per_size=0, **CG)),
    Case("no CG step", _pivoting(cg_steps=0, cg_steps_per_size=0, **CG)),
    Case("one float32 refinement round", _pivoting(refinement_rounds=1, **CG)),
    Case("no float32 refinement round", _pivoting(refinement_rounds=0, **CG)),
    Case("float32 refinement that stalls at once", _pivoting(stalled=0.0, **CG)),
    Case("ADMM hands every row over", SolverOptions(admm_sizes=ALWAYS_ADMM, enough=2.0)),
    Case(
        "ADMM whose float32 phase cannot settle",
        SolverOptions(admm_sizes=ALWAYS_ADMM, float32_tolerance=0.0),
    ),
    Case("ADMM of one step", SolverOptions(admm_sizes=ALWAYS_ADMM, admm_steps=1)),
    Case(
        "ADMM with diagonal bounds as row scalings",
        SolverOptions(admm_sizes=ALWAYS_ADMM, diagonal_size=1),
    ),
    Case("FISTA's step by power iteration", _pivoting(squaring_size=0)),
    Case("loose stage tolerances: the final check decides", SolverOptions(tolerance=1e-4)),
    Case(
        "check once: an attempt of fixed length first",
        SolverOptions(check_once=True),
        lambda a: a[0].stages[-1].name in ("admm (fixed)", "pivoting (fixed)"),
    ),
    Case(
        "check once, budgets too short: the plan goes on",
        SolverOptions(check_once=True, once_admm_steps=(1, 0), once_pivoting_steps=0),
    ),
    Case(
        "check once, on the dual",
        SolverOptions(check_once=True, primal_admm_fraction=math.inf, **DUAL),
        lambda a: a[0].form == "dual",
    ),
    Case(
        "check once without ADMM: FISTA and pivoting of fixed length",
        SolverOptions(check_once=True, admm_sizes=(10**9, 10**9)),
        lambda a: [s.name for s in a[0].stages] == ["fista", "pivoting (fixed)"],
    ),
    Case(
        "check once with ADMM at every size",
        SolverOptions(check_once=True, admm_sizes=ALWAYS_ADMM),
        lambda a: a[0].stages[0].name == "admm (fixed)",
    ),
]


PROBLEMS = [  # (family, m, preferences)
    (rand, 9, upgrad_preferences(9)),
    (low_rank, 40, mixed_preferences(40, 1)),
    (conflicting, 40, upgrad_preferences(40)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_forced_path_gives_the_kkt_solution_and_quadprogs_weights(case: Case) -> None:
    for family, m, preferences in PROBLEMS:
        gramian = make(family, m, 0)
        if case.in_plan is not None:
            assert case.in_plan(plan_for(gramian, case.options)), (family.__name__, m)
        weights = project_weights(preferences, gramian, options=case.options)
        assert_solved(weights, preferences, gramian, 1e-5)


@pytest.mark.parametrize("m", [40, 130])
def test_admm_with_and_without_the_diagonal_shortcut_gives_the_same_answer(m: int) -> None:
    """UPGrad's bounds are diagonal, and ADMM scales rows instead of multiplying by them (from
    ``diagonal_size``); bounds with one entry off the diagonal are multiplied."""
    gramian = make(duplicated, m, 0)
    off_diagonal = upgrad_preferences(m)
    off_diagonal[:, 3] = 0.5
    for preferences in [upgrad_preferences(m), off_diagonal]:
        answers = []
        for size in [1, 10**9]:
            options = SolverOptions(admm_sizes=ALWAYS_ADMM, diagonal_size=size)
            weights = project_weights(preferences, gramian, options=options)
            assert_kkt(weights, preferences, gramian)
            answers.append(weights)
        assert_close_to(answers[0], answers[1], 1e-6)


@pytest.mark.parametrize("m", [30, 66])
def test_near_rank_m_over_2_every_plan_gives_quadprogs_weights(m: int) -> None:
    """Blocks of three identical rows plus a ridge: a participation fraction of about 1/3,
    between the primal's ADMM and the dual, with each forced in turn."""
    ridge = 1e-2
    blocks = torch.block_diag(*[torch.ones(3, 3, dtype=torch.float64)] * (m // 3))
    gramian = (1 - ridge) * blocks + ridge * torch.eye(m, dtype=torch.float64)
    preferences = upgrad_preferences(m)
    for options in [
        SolverOptions(),
        SolverOptions(admm_sizes=ALWAYS_ADMM, dual_fraction=0.5, primal_admm_fraction=0.2),
        SolverOptions(admm_sizes=ALWAYS_ADMM, dual_fraction=0.0),
        SolverOptions(admm_sizes=NO_ADMM, dual_fraction=0.5),
    ]:
        weights = project_weights(preferences, gramian, options=options)
        assert_solved(weights, preferences, gramian, 1e-5)


@pytest.mark.parametrize("family", [low_rank, duplicated], ids=lambda f: f.__name__)
def test_float32_pivoting_that_cannot_factor_a_reduced_system_leaves_it_to_float64(
    family,
) -> None:
    """A singular ``G`` (no ridge) is solved with a ridge of about 1e-9, which float32 does
    not see: its reduced systems are singular there, and the float64 stages finish."""
    matrix = jacobian(family, 30, 30)
    gramian, preferences = normalize(matrix @ matrix.T, 0.0), upgrad_preferences(30)
    options = SolverOptions(long_guess_size=0, **GATHERED)
    assert _has("primal", "pivoting", torch.float32)(plan_for(gramian, options))
    weights = project_weights(preferences, gramian, options=options)
    assert_kkt(weights, preferences, gramian)
    expected = reference(preferences, gramian)
    scale = float(torch.linalg.matrix_norm(matrix)) * float(expected.abs().max())
    assert float(((weights - expected) @ matrix).abs().max()) <= 1e-9 * scale
