from __future__ import annotations

import torch

import jdopt.aggregation as agg
from tests.utils.device import draw, seeded


def _generalized_gramian(jacobian: torch.Tensor) -> torch.Tensor:
    """``[*S, *reversed(S)]`` from a Jacobian ``[*S, n]``, entry by entry (slow, obvious)."""
    shape = jacobian.shape[:-1]
    out = torch.empty(*shape, *reversed(shape), dtype=jacobian.dtype)
    for i in torch.cartesian_prod(*[torch.arange(s) for s in shape]).reshape(-1, len(shape)):
        for j in torch.cartesian_prod(*[torch.arange(s) for s in shape]).reshape(-1, len(shape)):
            out[(*i.tolist(), *reversed(j.tolist()))] = jacobian[tuple(i)] @ jacobian[tuple(j)]
    return out


def test_flattening_equals_weighting_on_flattened_losses() -> None:
    jacobian = draw(3, 2, 5, generator=seeded(0), dtype=torch.float64)
    weights = agg.Flattening(agg.UPGradWeighting())(_generalized_gramian(jacobian))
    flat = jacobian.reshape(6, 5)
    expected = agg.UPGradWeighting()(flat @ flat.T).reshape(3, 2)
    assert weights.shape == (3, 2)
    assert torch.allclose(weights, expected, atol=1e-10)


def test_flattening_of_a_vector_and_of_a_scalar() -> None:
    jacobian = draw(4, 5, generator=seeded(1), dtype=torch.float64)
    gramian = jacobian @ jacobian.T
    assert torch.allclose(
        agg.Flattening(agg.MGDAWeighting())(gramian), agg.MGDA().compute_weights(jacobian)
    )
    scalar = agg.Flattening(agg.MeanWeighting())(torch.tensor(2.0))
    assert scalar.shape == () and scalar.item() == 1.0
