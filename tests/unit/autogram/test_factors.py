"""The closed-form Gramians of Linear-like gradients against materialised gradients."""

from __future__ import annotations

import pytest
import torch

from jdopt.autogram._rules._factors import factor_gramian
from tests.utils.device import draw


def _explicit(x: torch.Tensor, dy: torch.Tensor, bias: bool) -> torch.Tensor:
    """Row ``(s, b)``: ``Σ_t dy[s, b, t] ⊗ x[b, t]`` (and ``Σ_t dy[s, b, t]``), by a loop."""
    s, b = dy.shape[:2]
    rows = []
    for si in range(s):
        for bi in range(b):
            weight = sum(torch.outer(dy[si, bi, t], x[bi, t]) for t in range(x.shape[1]))
            parts = [weight.reshape(-1)] + ([dy[si, bi].sum(dim=0)] if bias else [])
            rows.append(torch.cat(parts))
    grads = torch.stack(rows)
    return grads @ grads.T


# (s, b, t, i, o): with and without a batch dimension, each form of the cost model.
SHAPES = [
    (6, 1, 5, 40, 40),
    (1, 1, 3, 20, 20),
    (6, 1, 30, 2, 2),
    (1, 1, 7, 9, 9),
    (3, 4, 2, 30, 30),
    (2, 3, 9, 2, 2),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_factor_gramian_equals_the_gramian_of_materialised_gradients(shape, bias) -> None:
    """With or without a batch dimension, one or many positions, few or many features."""
    s, b, t, i, o = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = draw(b, t, i, generator=g, dtype=torch.float64)
    dy = draw(s, b, t, o, generator=g, dtype=torch.float64)
    expected = _explicit(x, dy, bias)
    assert torch.allclose(factor_gramian(x, dy, bias=bias), expected, rtol=1e-10, atol=1e-10)
