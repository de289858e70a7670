"""Every way of computing convolution Gramians (``Engine(method=...)``: measured, inner
products of unfolded patches, or per-sample gradients from unfolded patches, a grouped weight
gradient or one weight gradient per row) against the reference, on every loss setting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jdopt.autogram import Engine
from tests.utils.device import draw_uniform, seeded

from ._reference import TOLERANCE, reference_gramian, reference_weighted_gradient, relative_error
from ._settings import SETTINGS, Setting


class _Convs(nn.Module):
    def __init__(self, channels: int, two_d: bool, twice: bool) -> None:
        super().__init__()
        conv = nn.Conv2d if two_d else nn.Conv1d
        self.first = conv(2, 2 * channels, 3, padding=1)
        self.second = conv(2 * channels, 4, 3, stride=2, dilation=2, groups=2, padding=2)
        self.twice = twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.first(x))
        out = self.second(h)
        if self.twice:
            out = out + self.second(torch.sin(h))
        return out.flatten(1)


@pytest.mark.parametrize("method", ["auto", "inner", "per_sample", "grouped", "looped"])
@pytest.mark.parametrize("two_d", [True, False], ids=["2d", "1d"])
@pytest.mark.parametrize("twice", [False, True], ids=["once", "twice"])
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_convolution_way_is_exact(
    method: str, two_d: bool, twice: bool, setting: Setting
) -> None:
    """Each way of the convolution rule, forced by ``Engine(method=...)`` or measured, gives
    the exact Gramian and weighted gradient: Conv1d and Conv2d, strided, dilated and grouped,
    called once or twice, on every loss setting."""
    torch.manual_seed(0)
    model = _Convs(3, two_d, twice).double()
    x = torch.randn(3, 2, *((7, 7) if two_d else (9,)), dtype=torch.float64)
    engine = Engine(model, batch_dim=setting.batch_dim, method=method)
    losses = setting.losses(model(x))
    params = list(model.parameters())
    gramian = engine.compute_gramian(losses)
    assert relative_error(gramian, reference_gramian(losses, params)) <= TOLERANCE
    weights = draw_uniform(losses.shape, generator=seeded(1), dtype=torch.float64)
    engine.accumulate_grads(weights)
    expected = reference_weighted_gradient(losses, weights, params)
    for param, grad in zip(params, expected, strict=True):
        assert relative_error(param.grad, grad) <= TOLERANCE
