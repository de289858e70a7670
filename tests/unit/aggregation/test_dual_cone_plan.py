"""The plan: a pure function of the facts of ``G`` and of ``SolverOptions``.

Its properties, for every size and participation fraction, stated in terms of the options (no
default plan or default constant is pinned), and the facts ``plan_for`` reads off ``G``,
against values derived by hand.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator

import pytest
import torch

from jdopt.aggregation._dual_cone import (
    Attempt,
    Facts,
    SolverOptions,
    Stage,
    describe,
    plan,
    plan_for,
)
from jdopt.aggregation._dual_cone._forms import factorize

from ._dual_cone_problems import F64

OPTIONS = [
    SolverOptions(),
    SolverOptions(admm_sizes=(1, 0)),
    SolverOptions(admm_sizes=(1, 10**9), small_size=0, long_guess_size=0),
    SolverOptions(dual_fraction=0.0),
    SolverOptions(dual_fraction=math.inf, primal_admm_fraction=0.0, admm_sizes=(1, 10**9)),
    SolverOptions(small_size=10**9, dual_fraction=0.9, primal_admm_fraction=0.5),
    SolverOptions(small_size=50, long_guess_size=60, admm_sizes=(40, 70)),
]
SIZES = [1, 5, 24, 25, 40, 64, 100, 385, 5000]
FRACTIONS = [0.0, 0.1, 0.3, 0.35, 0.4, 0.6, 1.0, math.inf]


def _plans(options: SolverOptions) -> Iterator[tuple[tuple[Attempt, ...], int, float]]:
    """The plan of every size and fraction, with these options."""
    for m, fraction in itertools.product(SIZES, FRACTIONS):
        yield plan(Facts(size=m, fraction=fraction, penalty=0.5), options), m, fraction


def _names(attempt: Attempt) -> list[str]:
    return [stage.name for stage in attempt.stages]


@pytest.mark.parametrize("options", OPTIONS)
def test_the_plan_ends_with_a_primal_pivoting_attempt_then_a_primal_polish(
    options: SolverOptions,
) -> None:
    for attempts, m, fraction in _plans(options):
        assert all(attempt.form in ("primal", "dual") for attempt in attempts), (m, fraction)
        last, before = attempts[-1], attempts[-2]
        assert last.form == "primal" and _names(last) == ["polish"], (m, fraction)
        assert before.form == "primal", (m, fraction)
        assert _names(before)[0] == "fista" and "pivoting" in _names(before), (m, fraction)


@pytest.mark.parametrize("options", OPTIONS)
def test_every_attempt_but_the_polish_ends_with_float64_pivoting_then_the_active_set_method(
    options: SolverOptions,
) -> None:
    for attempts, m, fraction in _plans(options):
        for attempt in attempts[:-1]:
            names = _names(attempt)
            assert names[-2:] == ["pivoting", "active set"], (m, fraction)
            assert attempt.stages[-2].dtype in (None, torch.float64), (m, fraction)
            assert names[0] in ("fista", "admm", "admm (gives up)"), (m, fraction)


@pytest.mark.parametrize("options", OPTIONS)
def test_the_dual_is_posed_iff_the_fraction_is_below_dual_fraction(
    options: SolverOptions,
) -> None:
    """Before the primal's pivoting, after a primal ADMM only."""
    for attempts, m, fraction in _plans(options):
        duals = [index for index, a in enumerate(attempts) if a.form == "dual"]
        assert bool(duals) == (fraction < options.dual_fraction), (m, fraction)
        if duals:
            assert duals == list(range(duals[0], duals[-1] + 1)), (m, fraction)
            before = attempts[: duals[0]]
            assert all(_names(a)[0].startswith("admm") for a in before), (m, fraction)


@pytest.mark.parametrize("options", OPTIONS)
def test_admm_runs_iff_the_size_is_in_admm_sizes_and_then_goes_first(
    options: SolverOptions,
) -> None:
    """On the primal above ``primal_admm_fraction``, on the dual below ``dual_fraction``; the
    dual's ADMM attempt is followed by a dual attempt without it."""
    low, high = options.admm_sizes
    for attempts, m, fraction in _plans(options):
        admm = [a for a in attempts if any(n.startswith("admm") for n in _names(a))]
        forms = {
            "primal": fraction >= options.primal_admm_fraction,
            "dual": fraction < options.dual_fraction,
        }
        expected = [form for form, runs in forms.items() if runs] if low <= m <= high else []
        assert [a.form for a in admm] == expected, (m, fraction)
        for attempt in admm:
            assert [n.startswith("admm") for n in _names(attempt)] == [True, False, False]
        if "dual" in expected:
            duals = [a for a in attempts if a.form == "dual"]
            assert len(duals) == 2 and _names(duals[1])[0] == "fista", (m, fraction)


@pytest.mark.parametrize("options", OPTIONS)
def test_the_primal_admm_gives_up_only_between_the_two_fractions(
    options: SolverOptions,
) -> None:
    """There, the stages after it run only when it solved some row; nowhere else."""
    low, high = options.admm_sizes
    for attempts, m, fraction in _plans(options):
        between = options.primal_admm_fraction <= fraction < options.dual_fraction
        gives_up = low <= m <= high and between
        first = attempts[0]
        assert (_names(first)[0] == "admm (gives up)") == gives_up, (m, fraction)
        if gives_up:
            assert first.form == "primal"
            assert [s.after_progress for s in first.stages] == [False, True, True]
        for attempt in attempts[1:] if gives_up else attempts:
            assert "admm (gives up)" not in _names(attempt), (m, fraction)
            assert not any(s.after_progress for s in attempt.stages), (m, fraction)


@pytest.mark.parametrize("options", OPTIONS)
def test_the_guess_is_float64_up_to_small_size_and_float32_pivoting_runs_beyond_long_guess(
    options: SolverOptions,
) -> None:
    rough_sizes = max(options.small_size, options.long_guess_size)
    for attempts, m, fraction in _plans(options):
        for attempt in attempts[:-1]:
            stages = attempt.stages
            if stages[0].name != "fista":
                continue
            assert (stages[0].dtype in (None, torch.float64)) == (m <= options.small_size)
            rough = [s for s in stages if s.name == "pivoting" and s.dtype == torch.float32]
            assert bool(rough) == (m > rough_sizes), (m, fraction)


@pytest.mark.parametrize("options", OPTIONS)
def test_check_once_puts_one_attempt_of_fixed_length_first_on_the_plans_first_form(
    options: SolverOptions,
) -> None:
    """ADMM of fixed length where the plan starts with ADMM; FISTA and pivoting of fixed
    length below the ADMM sizes; on the form the plan tries first; then that plan, unchanged.
    Otherwise (ADMM sizes without ADMM first) the plan alone."""
    once = dataclasses.replace(options, check_once=True)
    for m, fraction in itertools.product(SIZES, FRACTIONS):
        facts = Facts(size=m, fraction=fraction, penalty=0.5)
        usual, attempts = plan(facts, options), plan(facts, once)
        if _names(usual[0])[0].startswith("admm"):
            expected = ["admm (fixed)"]
        elif m < options.admm_sizes[0]:
            expected = ["fista", "pivoting (fixed)"]
        else:
            assert describe(attempts) == describe(usual), (m, fraction)
            continue
        assert describe(attempts[1:]) == describe(usual), (m, fraction)
        assert _names(attempts[0]) == expected, (m, fraction)
        assert attempts[0].form == usual[0].form, (m, fraction)


def test_describe_gives_one_line_per_attempt_with_its_form_and_stages_in_order() -> None:
    def kernel(qp, x, options):
        raise AssertionError("describe runs no kernel")

    attempts = (
        Attempt("dual", (Stage("fista", kernel, torch.float32), Stage("pivoting", kernel))),
        Attempt("primal", (Stage("polish", kernel),)),
    )
    lines = describe(attempts).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("dual:") and lines[1].startswith("primal:")
    assert "fista (float32)" in lines[0]
    assert lines[0].index("fista") < lines[0].index("pivoting")
    assert "float32" not in lines[0].split("pivoting")[1] and "float32" not in lines[1]
    assert "polish" in lines[1]


def _three_row_blocks(m: int, ridge: float = 1e-2) -> torch.Tensor:
    """Blocks of 3 identical rows plus a ridge: unit diagonal, ``‖G‖²_F = m (1 + 2(1−r)²)``."""
    blocks = torch.block_diag(*[torch.ones(3, 3, dtype=F64)] * (m // 3))
    return (1 - ridge) * blocks + ridge * torch.eye(m, dtype=F64)


def _has_dual(gramian: torch.Tensor, **options: float) -> bool:
    attempts = plan_for(gramian, SolverOptions(admm_sizes=(1, 0), **options))
    return any(attempt.form == "dual" for attempt in attempts)


@pytest.mark.parametrize("scale", [1.0, 1e-6, 1e6])
def test_plan_for_reads_the_participation_fraction_of_the_unit_diagonal_gramian(
    scale: float,
) -> None:
    """``m / ‖S‖²_F`` for ``S`` the unit-diagonal ``G``: 1/(1 + 2·0.99²) ≈ 0.3378 for blocks
    of three rows, 1 for orthogonal rows, whatever the scale of each row."""
    rows = torch.logspace(-2, 2, 30, dtype=F64) * scale
    blocks = _three_row_blocks(30) * torch.outer(rows, rows)
    assert _has_dual(blocks, dual_fraction=0.34) and not _has_dual(blocks, dual_fraction=0.335)
    diagonal = torch.diag(rows**2)
    assert _has_dual(diagonal, dual_fraction=1.01) and not _has_dual(diagonal, dual_fraction=0.99)


def test_plan_for_never_poses_the_dual_of_a_gramian_that_may_be_too_badly_conditioned() -> None:
    """``1 / (smallest squared Cholesky pivot)`` of ``[[1, a], [a, 1]]`` is ``1 / (1 − a²)``,
    about 5.26 for ``a = 0.9``: a lower bound on the condition number."""
    gramian = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=F64)
    assert _has_dual(gramian, dual_fraction=math.inf, dual_max_condition=5.3)
    assert not _has_dual(gramian, dual_fraction=math.inf, dual_max_condition=5.2)


def _facts(gramian: torch.Tensor, options: SolverOptions) -> Facts:
    return factorize(gramian, options)[0].facts


@pytest.mark.parametrize(("a", "penalty"), [(0.0, 1.0), (0.6, 1 - 0.36 / 2), (0.9, 0.595)])
def test_the_primal_admm_penalty_is_the_mean_squared_cholesky_pivot(a: float, penalty: float):
    """For ``[[1, a], [a, 1]]`` (any row scales) the squared pivots are 1 and ``1 − a²``."""
    gramian = torch.tensor([[4.0, 2 * a * 3], [2 * a * 3, 9.0]], dtype=F64)
    options = SolverOptions(penalty_range=(0.0, 1.0), admm_sizes=(1, 10**9))  # read by ADMM
    found = _facts(gramian, options)
    assert found.penalty == pytest.approx(penalty, rel=1e-12)
    assert found.size == 2
    assert found.fraction == pytest.approx(1 / (1 + a**2), rel=1e-12)


def test_the_primal_admm_penalty_is_clamped_to_penalty_range() -> None:
    gramian = torch.tensor([[1.0, 0.999], [0.999, 1.0]], dtype=F64)  # mean pivot² ≈ 0.501
    admm = (1, 10**9)  # the penalty is read by ADMM only
    assert _facts(gramian, SolverOptions(penalty_range=(0.7, 0.8), admm_sizes=admm)).penalty == 0.7
    assert _facts(gramian, SolverOptions(penalty_range=(0.1, 0.3), admm_sizes=admm)).penalty == 0.3
