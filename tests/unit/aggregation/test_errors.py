"""Every invalid input raises the right class with a message naming what was wrong."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import jdopt.aggregation as agg

M = torch.tensor([[1.0, 2.0], [3.0, -4.0]], dtype=torch.float64)

CONSTRUCTION = [
    (lambda: agg.UPGrad(norm_eps=-1.0), ValueError, "norm_eps"),
    (lambda: agg.UPGrad(reg_eps=-1e-4), ValueError, "reg_eps"),
    (lambda: agg.UPGrad(reg_eps="small"), TypeError, "reg_eps"),
    (lambda: agg.UPGrad(solver="cvxpy"), ValueError, "solver"),
    (lambda: agg.UPGrad(pref_vector=torch.ones(2, 2)), ValueError, "pref_vector"),
    (lambda: agg.UPGrad(pref_vector=[0.5, 0.5]), TypeError, "pref_vector"),
    (lambda: agg.UPGrad(pref_vector=torch.tensor([1.0, float("nan")])), ValueError, "pref_vector"),
    (lambda: agg.DualProj(norm_eps=float("inf")), ValueError, "norm_eps"),
    (lambda: agg.DualProjWeighting(solver=1), ValueError, "solver"),
    (lambda: agg.MGDA(epsilon=0.0), ValueError, "epsilon"),
    (lambda: agg.MGDA(max_iters=0), ValueError, "max_iters"),
    (lambda: agg.MGDA(max_iters=2.5), TypeError, "max_iters"),
    (lambda: agg.CAGrad(c=-0.1), ValueError, "c"),
    (lambda: agg.CAGrad(c="0.4"), TypeError, "c"),
    (lambda: agg.CAGrad(c=0.4, norm_eps=-1), ValueError, "norm_eps"),
    (lambda: agg.Krum(n_byzantine=-1), ValueError, "n_byzantine"),
    (lambda: agg.Krum(n_byzantine=1, n_selected=0), ValueError, "n_selected"),
    (lambda: agg.Krum(n_byzantine=True), TypeError, "n_byzantine"),
    (lambda: agg.Constant(torch.ones(2, 2)), ValueError, "weights"),
    (lambda: agg.Constant(torch.ones(0, 2)), ValueError, "weights"),
    (lambda: agg.GradDrop(leak=torch.ones(0, 2)), ValueError, "leak"),
    (lambda: agg.AlignedMTL(scale_mode="max"), ValueError, "scale_mode"),
    (lambda: agg.Random(generator=0), TypeError, "generator"),
    (lambda: agg.PCGrad(generator="seed"), TypeError, "generator"),
    (lambda: agg.Flattening(agg.Mean()), TypeError, "weighting"),
    (lambda: agg.GramianWeightedAggregator(agg.Mean()), TypeError, "weighting"),
]


@pytest.mark.parametrize(("make", "error", "name"), CONSTRUCTION)
def test_invalid_hyperparameters(make: Callable, error: type, name: str) -> None:
    with pytest.raises(error, match=f"`{name}`"):
        make()


CALLS = [
    (agg.Mean(), torch.ones(3), ValueError, "matrix"),
    (agg.Mean(), torch.ones(2, 3, 4), ValueError, "matrix"),
    (agg.Mean(), torch.ones(0, 3), ValueError, "at least one row"),
    (agg.UPGrad(), torch.ones(0, 3), ValueError, "at least one row"),
    (agg.Constant(torch.ones(2)), torch.ones(0, 3), ValueError, "weights"),
    (agg.UPGrad(), torch.tensor([[1.0, float("nan")]]), ValueError, "finite"),
    (agg.UPGrad(), torch.tensor([[1.0, float("inf")]]), ValueError, "finite"),
    (agg.Mean(), [[1.0, 2.0]], TypeError, "torch.Tensor"),
    (agg.UPGrad(pref_vector=torch.ones(3)), M, ValueError, "pref_vector"),
    (agg.Constant(torch.ones(3)), M, ValueError, "weights"),
    (agg.Krum(n_byzantine=1), M, ValueError, "n_byzantine"),
    (agg.Krum(n_byzantine=0, n_selected=5), torch.ones(4, 2), ValueError, "n_selected"),
]


@pytest.mark.parametrize(("aggregator", "jacobian", "error", "match"), CALLS)
def test_invalid_jacobians(aggregator, jacobian, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        aggregator(jacobian)


@pytest.mark.parametrize(
    ("gramian", "match"),
    [
        (torch.ones(2, 3), "square"),
        (torch.ones(2), "matrix"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "finite"),
    ],
)
def test_invalid_gramians(gramian: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        agg.UPGradWeighting()(gramian)


@pytest.mark.parametrize("shape", [(2, 3, 2, 3), (3,), (2, 3, 2)])
def test_invalid_generalized_gramians(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\[\*S, \*reversed\(S\)\]"):
        agg.Flattening(agg.MeanWeighting())(torch.ones(shape))


@pytest.mark.parametrize(
    "aggregator",
    [agg.Constant(torch.ones(0)), agg.GradDrop(leak=torch.ones(0)), agg.GradDrop()],
    ids=str,
)
def test_no_objectives_give_a_zero_update_where_torchjd_accepts_them(aggregator) -> None:
    """TorchJD 0.8 accepts empty weights and leaks, and maps a Jacobian without rows to zeros."""
    update = aggregator(torch.ones(0, 3, dtype=torch.float64))
    assert update.dtype == torch.float64
    assert torch.equal(update, torch.zeros(3, dtype=torch.float64))


def test_empty_constant_weights_weight_no_objectives() -> None:
    assert agg.ConstantWeighting(torch.ones(0))(torch.ones(0, 0)).shape == (0,)
    with pytest.raises(ValueError, match="at least one row"):
        agg.MeanWeighting()(torch.ones(0, 0))
