"""One decision for all processes: rank 0 decides each step, and every process steps with its
weights, skips, or raises its error — none is left waiting in a collective (2 gloo processes,
see ``_decisions``; the spawn gives up after a timeout instead of hanging)."""

from __future__ import annotations

import json

import pytest

from ._spawn import spawn
from ._worker import decision_worker

WORLD = 2


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("decisions")
    spawn(WORLD, out, decision_worker)
    return [json.loads((out / f"decisions{r}.json").read_text()) for r in range(WORLD)]


def _case(reports: list[dict], part: str, name: str) -> list[dict]:
    return [report[part][name] for report in reports]


def _same(outcomes: list[dict]) -> dict:
    assert all(o == outcomes[0] for o in outcomes[1:]), outcomes
    return outcomes[0]


def test_every_process_gets_rank0s_values_in_their_dtypes(reports) -> None:
    """The values are rank 0's (each process proposed its own), in the dtype rank 0 gave them,
    and a value rank 0 does not have stays absent."""
    outcome = _same(_case(reports, "protocol", "solved"))
    assert outcome == {"returned": [["torch.float32", [0.0, 1.0, 2.0]], None]}


def test_a_skip_on_rank0_skips_everywhere(reports) -> None:
    assert _same(_case(reports, "protocol", "skipped")) == {"returned": "skipped"}


def test_an_error_on_rank0_is_raised_by_every_process(reports) -> None:
    """A built-in error comes back as the same type with the same message."""
    outcome = _same(_case(reports, "protocol", "value_error"))
    assert outcome == {"raised": "ValueError", "message": "rank 0 cannot decide"}
    outcome = _same(_case(reports, "protocol", "wrong_size"))
    assert outcome["raised"] == "ValueError" and "2 entries where 3" in outcome["message"]


def test_an_error_of_another_type_is_raised_as_a_runtime_error_naming_it(reports) -> None:
    on_rank0, on_rank1 = _case(reports, "protocol", "own_error")
    assert on_rank0 == {"raised": "_OwnError", "message": "rank 0 cannot decide"}
    assert on_rank1 == {"raised": "RuntimeError", "message": "_OwnError: rank 0 cannot decide"}


def test_a_veto_from_another_process_overrides_rank0(reports) -> None:
    """Rank 1 vetoes: every process learns it, and rank 0's error is not raised."""
    assert _same(_case(reports, "protocol", "veto_by_rank1")) == {"returned": "vetoed"}
    assert _same(_case(reports, "protocol", "after"))["returned"] is not None


@pytest.mark.parametrize("name", ["weighting_fails_on_rank0", "weighting_fails_on_rank0_autojac"])
def test_a_weighting_that_fails_on_rank0_fails_everywhere(reports, name: str) -> None:
    outcome = _same(_case(reports, "optimizer", name))
    assert outcome == {"raised": "ValueError", "message": "this weighting fails on rank 0"}


@pytest.mark.parametrize("name", ["nan_on_rank1", "nan_on_rank1_autojac"])
def test_a_non_finite_gramian_on_one_process_raises_everywhere(reports, name: str) -> None:
    """Without a GradScaler: the same ValueError on every process."""
    outcome = _same(_case(reports, "optimizer", name))
    assert outcome["raised"] == "ValueError" and "NaN or inf" in outcome["message"]


@pytest.mark.parametrize("name", ["nan_on_rank1_scaler", "nan_on_rank0_scaler"])
def test_a_non_finite_gramian_on_one_process_skips_everywhere(reports, name: str) -> None:
    """With a GradScaler: every process skips the step, and nothing moves."""
    outcome = _same(_case(reports, "optimizer", name))["returned"]
    assert outcome["skipped"] and not outcome["moved"] and outcome["weights"] is None


@pytest.mark.parametrize("name", ["random_weights", "random_update_autojac", "after"])
def test_random_methods_step_with_rank0s_draw(reports, name: str) -> None:
    """Each process has its own generator: all step with rank 0's weights or update, and
    report the same weights."""
    outcome = _same(_case(reports, "optimizer", name))["returned"]
    assert outcome["moved"] and not outcome["skipped"]
