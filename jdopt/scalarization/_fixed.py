"""Scalarizers whose weights do not depend on the values: Sum, Mean, Constant, Random, and the
geometric mean."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..aggregation._generator import GeneratorMixin
from ._base import Scalarizer, check_same_shape


class Sum(Scalarizer):
    """The sum of the values: the usual summed loss."""

    def forward(self, values: Tensor, /) -> Tensor:
        return values.sum()


class Mean(Scalarizer):
    """The mean of the values."""

    def forward(self, values: Tensor, /) -> Tensor:
        return values.mean()


class Constant(Scalarizer):
    """``Σᵢ wᵢ Lᵢ`` with fixed weights.

    Args:
        weights: the weights, in the shape of the values.
    """

    def __init__(self, weights: Tensor) -> None:
        super().__init__()
        if not isinstance(weights, Tensor) or not weights.is_floating_point():
            raise TypeError(
                "`weights` should be a floating-point tensor with one weight per value. Found "
                f"{type(weights).__name__ if not isinstance(weights, Tensor) else weights.dtype}."
            )
        self.register_buffer("weights", weights.detach().clone())

    def forward(self, values: Tensor, /) -> Tensor:
        check_same_shape(self.weights, values, "weights")
        return (self.weights.to(values.dtype) * values).sum()

    def arguments(self) -> dict[str, Any]:
        return {"weights": self.weights}


class Random(GeneratorMixin, Scalarizer):
    """Random loss weighting (RLW): ``Σᵢ wᵢ Lᵢ`` with new weights at each call,
    ``w = softmax(z)``, ``z`` standard normal: positive and summing to 1.

    From Lin et al., *Reasonable Effectiveness of Random Weighting: A Litmus Test for
    Multi-Task Learning*, TMLR 2022 (https://arxiv.org/abs/2111.10603), Algorithm 2.

    Args:
        generator: the ``torch.Generator`` to draw from (its state is in ``state_dict``);
            ``None``: PyTorch's global generator.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__(generator)

    def forward(self, values: Tensor, /) -> Tensor:
        device = self.draw_device(values.device)
        draw = torch.randn(values.numel(), generator=self.generator, device=device)
        weights = torch.softmax(draw.to(values), dim=0).reshape(values.shape)
        return (weights * values).sum()

    def arguments(self) -> dict[str, Any]:
        return {"generator": self.generator}


class GeometricMean(Scalarizer):
    """The geometric mean of the values, ``(Πᵢ Lᵢ)^(1/m)``, computed as ``exp(mean(log L))``:
    the values must be positive. Its gradient weights each loss by ``GM / (m Lᵢ)``, so tasks
    with small losses weigh more.

    From Chennupati et al., *MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss
    Strategy for Multi-Task Learning*, CVPR Workshops 2019 (GLS).
    """

    def forward(self, values: Tensor, /) -> Tensor:
        return values.log().mean().exp()
