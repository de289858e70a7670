"""One battery of property tests run over every public method (rows in ``_registry``)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import Tensor

import jdopt.aggregation as agg
from jdopt.aggregation import Aggregator, Weighting
from tests.utils.device import draw_permutation, draw_uniform, seeded

from ._matrices import HARD, INDEPENDENT, SIZES
from ._registry import METHODS, Method

F64 = torch.float64
IDS = [method.name for method in METHODS]
BASES = {"Aggregator", "Weighting", "WeightedAggregator", "GramianWeightedAggregator"}


def test_registry_is_complete() -> None:
    names = {method.name for method in METHODS}
    for name in agg.__all__:
        obj = getattr(agg, name)
        if not inspect.isclass(obj) or name in BASES:
            continue
        if issubclass(obj, Aggregator):
            assert name in names, f"{name} is public but missing from the test registry"
        if issubclass(obj, Weighting) and name != "Weighting":
            assert name.removesuffix("Weighting") in names, f"{name} missing from the registry"
    with_weighting = {m.name for m in METHODS if m.weighting is not None}
    gramian_based = {
        name.removesuffix("Weighting")
        for name in agg.__all__
        if name.endswith("Weighting") and name not in {"Weighting", "GeneralizedWeighting"}
    }
    assert with_weighting == gramian_based


def _cases(method: Method, families: list) -> list[tuple[Aggregator, Tensor]]:
    cases = []
    for m in SIZES:
        aggregator = method.aggregator(m)
        if aggregator is not None:
            cases.extend((aggregator, family(m)) for family in families)
    return cases


def _update_tolerance(jacobian: Tensor) -> float:
    return 1e-7 * float(jacobian.abs().max()) + 1e-300


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_structure_and_finite_on_hard_matrices(method: Method) -> None:
    for aggregator, jacobian in _cases(method, HARD):
        update = aggregator(jacobian)
        assert update.shape == (jacobian.shape[1],)
        assert update.dtype == jacobian.dtype
        assert torch.isfinite(update).all(), (method.name, jacobian)


@pytest.mark.parametrize(
    "method", [m for m in METHODS if m.weighting is not None], ids=lambda m: m.name
)
def test_weighting_finite_on_hard_gramians(method: Method) -> None:
    for m in SIZES:
        weighting = method.weighting(m)
        for family in HARD if weighting is not None else []:
            jacobian = family(m)
            weights = weighting(jacobian @ jacobian.T)
            assert weights.shape == (m,)
            assert torch.isfinite(weights).all()


@pytest.mark.parametrize("method", [m for m in METHODS if m.non_conflicting], ids=lambda m: m.name)
def test_non_conflicting(method: Method) -> None:
    families = HARD if method.non_conflicting == "always" else INDEPENDENT
    for aggregator, jacobian in _cases(method, families):
        if float((jacobian**2).sum()) < getattr(
            getattr(aggregator, "weighting", None), "norm_eps", 0
        ):
            continue  # counts as a zero Gramian: the preference weights come back (tested apart)
        products = jacobian @ aggregator(jacobian)
        # The ridge reg_eps = 1e-4 on the trace-normalised Gramian allows this much conflict.
        slack = 1e-4 * float((jacobian**2).sum()) * float(products.abs().max() + 1)
        assert (products >= -slack - 1e-9 * float((jacobian**2).sum())).all(), products


@pytest.mark.parametrize(
    "method", [m for m in METHODS if m.linear_under_scaling], ids=lambda m: m.name
)
def test_linear_under_scaling(method: Method) -> None:
    g = seeded(1)
    for m in SIZES:
        for family in INDEPENDENT[:2]:
            jacobian = family(m)
            c1, c2 = (0.5 + 1.5 * draw_uniform(m, 1, generator=g, dtype=F64) for _ in "ab")

            def scaled(c: Tensor, jac: Tensor = jacobian, size: int = m) -> Tensor:
                return method.aggregator(size)(c * jac)

            expected = scaled(c1) + 2 * scaled(c2)
            error = (scaled(c1 + 2 * c2) - expected).abs().max()
            # The ridge makes UPGrad linear only up to O(reg_eps) relative to the update.
            assert error <= 2e-3 * expected.abs().max() + 1e-12


@pytest.mark.parametrize(
    "method", [m for m in METHODS if m.permutation_invariant], ids=lambda m: m.name
)
def test_permutation_invariant(method: Method) -> None:
    for m in SIZES:
        permutation = draw_permutation(m, generator=seeded(m))
        for family in INDEPENDENT:
            jacobian = family(m)
            if method.aggregator(m) is None:
                continue
            update = method.aggregator(m)(jacobian)
            permuted = method.aggregator(m)(jacobian[permutation])
            assert torch.allclose(permuted, update, rtol=1e-6, atol=_update_tolerance(jacobian))


@pytest.mark.parametrize(
    "method", [m for m in METHODS if m.weighting is not None], ids=lambda m: m.name
)
def test_aggregator_matches_weighting(method: Method) -> None:
    for m in SIZES:
        aggregator, weighting = method.aggregator(m), method.weighting(m)
        for family in HARD if aggregator is not None else []:
            jacobian = family(m)
            expected = weighting(jacobian @ jacobian.T) @ jacobian
            assert torch.allclose(aggregator(jacobian), expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("method", [m for m in METHODS if m.deterministic], ids=lambda m: m.name)
def test_deterministic(method: Method) -> None:
    for aggregator, jacobian in _cases(method, INDEPENDENT[:2]):
        first, second = aggregator(jacobian), aggregator(jacobian)
        assert torch.allclose(first, second, rtol=1e-12, atol=_update_tolerance(jacobian) * 1e-5)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_float32_is_preserved_and_close_to_float64(method: Method) -> None:
    for m in SIZES:
        for family in INDEPENDENT[:2]:
            jacobian = family(m)
            if method.aggregator(m) is None:
                continue
            update64 = method.aggregator(m)(jacobian)
            update32 = method.aggregator(m)(jacobian.float())
            assert update32.dtype == torch.float32
            if method.name != "GradDrop":  # its uniform draws differ between dtypes
                scale = float(update64.abs().max()) + 1e-6
                assert float((update32.double() - update64).abs().max()) <= 1e-3 * scale


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_state_dict_round_trip(method: Method) -> None:
    aggregator, jacobian = _cases(method, INDEPENDENT[:1])[-1]
    aggregator(jacobian)
    state = aggregator.state_dict()
    expected = aggregator(jacobian)
    aggregator.load_state_dict(state)
    assert torch.allclose(aggregator(jacobian), expected)
    assert method.name in repr(aggregator)  # CRMOGM: GramianWeightedAggregator(CRMOGMWeighting…


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_resuming_from_a_state_dict_continues_exactly(method: Method) -> None:
    """Three calls, a saved state, three more: a fresh method loaded with the state gives the
    same three (stateful methods' state and random methods' generators included)."""
    m = max(size for size in SIZES if method.aggregator(size) is not None)
    jacobians = [family(m) for family in INDEPENDENT] * 2
    aggregator = method.aggregator(m)
    for jacobian in jacobians[:3]:
        aggregator(jacobian)
    saved = copy.deepcopy(aggregator.state_dict())
    expected = [aggregator(jacobian) for jacobian in jacobians[3:6]]
    for _ in range(2):  # a second method loaded with the same state is not affected by the first
        resumed = method.aggregator(m)
        resumed.load_state_dict(saved)
        for jacobian, update in zip(jacobians[3:6], expected, strict=True):
            assert torch.equal(resumed(jacobian), update)
