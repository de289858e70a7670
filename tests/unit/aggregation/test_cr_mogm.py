"""CRMOGM against its definition (Zhou et al., NeurIPS 2022), worked by hand."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import jdopt.aggregation as agg

from ._jdoptimizer_steps import check_jdoptimizer_step

F64 = torch.float64


def _t(*rows: object) -> Tensor:
    return torch.tensor(rows, dtype=F64)


def _orthogonal_gramian(a: float, b: float) -> Tensor:
    """IMTL-G on orthogonal rows of norms ``a``, ``b``: ``w ∝ G⁻¹(a, b) = (1/a, 1/b)``, so
    ``w = (b, a)/(a + b)``."""
    return torch.diag(_t(a * a, b * b))


def test_cr_mogm_averages_the_weights_of_successive_calls() -> None:
    """IMTL-G gives ``(¾, ¼)`` for norms ``(1, 3)``, then ``(½, ½)`` for ``(1, 1)``. With
    ``α = ½``: ``λ₁ = (¾, ¼)`` (the first call's own), ``λ₂ = ½(¾, ¼) + ½(½, ½) = (⅝, ⅜)``;
    from ``λ₀ = (1, 0)``: ``λ₁ = (⅞, ⅛)``. Resuming from the state after call 1 gives call 2's
    weights; after :meth:`reset`, call 2 gives its own ``(½, ½)``."""
    first, second = _orthogonal_gramian(1.0, 3.0), _orthogonal_gramian(1.0, 1.0)
    smoothed = agg.CRMOGMWeighting(agg.IMTLGWeighting(), alpha=0.5)
    assert torch.allclose(smoothed(first), _t(0.75, 0.25), rtol=1e-12)
    resumed = agg.CRMOGMWeighting(agg.IMTLGWeighting(), alpha=0.5)
    resumed.load_state_dict(smoothed.state_dict())
    assert torch.allclose(smoothed(second), _t(0.625, 0.375), rtol=1e-12)
    assert torch.allclose(resumed(second), _t(0.625, 0.375), rtol=1e-12)
    smoothed.reset()
    assert torch.allclose(smoothed(second), _t(0.5, 0.5), rtol=1e-12)
    started = agg.CRMOGMWeighting(agg.IMTLGWeighting(), 0.5, initial_weights=_t(1.0, 0.0))
    assert torch.allclose(started(first), _t(0.875, 0.125), rtol=1e-12)


def test_cr_mogm_gradient_is_one_minus_alpha_times_the_wrapped_one() -> None:
    """``λₖ = α λₖ₋₁ + (1 − α) λ̂ₖ`` with ``λₖ₋₁`` a constant: ``∂λₖ = (1 − α) ∂λ̂ₖ``; the
    first call (no ``initial_weights``) returns ``λ̂₁`` and its whole gradient."""
    gramian = _t([4.0, 1.0], [1.0, 2.0])

    def gradient(weighting: agg.Weighting, calls: int) -> Tensor:
        tracked = gramian.clone().requires_grad_()
        for _ in range(calls - 1):
            weighting(gramian)
        (grad,) = torch.autograd.grad(weighting(tracked) @ _t(1.0, -2.0), tracked)
        return grad

    reference = gradient(agg.IMTLGWeighting(), 1)
    assert float(reference.abs().max()) > 0
    smoothed = agg.CRMOGMWeighting(agg.IMTLGWeighting(), alpha=0.25)
    assert torch.allclose(gradient(smoothed, 1), reference, rtol=1e-12)
    assert torch.allclose(gradient(smoothed, 2), 0.75 * reference, rtol=1e-12)


def test_cr_mogm_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        agg.CRMOGMWeighting(agg.MeanWeighting(), alpha=1.5)
    with pytest.raises(ValueError, match="alpha"):
        agg.CRMOGMWeighting(agg.MeanWeighting()).alpha = -0.1
    with pytest.raises(TypeError, match="Weighting"):
        agg.CRMOGMWeighting(agg.Mean())
    with pytest.raises(ValueError, match="initial_weights"):
        agg.CRMOGMWeighting(agg.MeanWeighting(), initial_weights=_t(1.0))(torch.eye(2))
    smoothed = agg.CRMOGMWeighting(agg.MeanWeighting())
    smoothed(torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match=r"reset\(\)"):
        smoothed(torch.eye(3, dtype=F64))


def test_cr_mogm_steps_jdoptimizer_on_the_gramian_engine() -> None:
    def make() -> agg.Weighting:
        return agg.CRMOGMWeighting(agg.IMTLGWeighting(), alpha=0.5)

    check_jdoptimizer_step(make(), agg.GramianWeightedAggregator(make()), "autogram")
