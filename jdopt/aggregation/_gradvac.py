"""GradVac: gradient vaccine, pairwise corrections towards each pair's running cosine."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting
from ._checks import check_nonnegative
from ._generator import GeneratorMixin


class GradVacWeighting(GeneratorMixin, Weighting):
    """The weights of :class:`GradVac`, from the Gramian alone.

    Each modified gradient is a combination ``g'ᵢ = Σₖ cᵢₖ gₖ`` of the rows (``C = I`` at
    first), so the quantities GradVac needs are entries of ``C G`` and ``C G Cᵀ``: for each row
    ``i`` and each other row ``j`` in a random order, ``φ = g'ᵢ·gⱼ / (‖g'ᵢ‖‖gⱼ‖ + ε)``; when
    ``φ`` is below the running target ``φ̂ᵢⱼ``, ``cᵢⱼ`` grows by
    ``‖g'ᵢ‖ (φ̂ √(1−φ²) − φ √(1−φ̂²)) / (‖gⱼ‖ √(1−φ̂²) + ε)`` (which brings the cosine of
    ``g'ᵢ`` and ``gⱼ`` up to ``φ̂``); then ``φ̂ᵢⱼ ← (1−β) φ̂ᵢⱼ + β φ``. The weights are the column
    sums of ``C``: the update is ``Σᵢ g'ᵢ``.

    Stateful: ``φ̂`` (zeros at first) is in ``state_dict`` with the generator's state, and
    :meth:`reset` forgets it (also when the number of rows changes). Runs in float64 on the
    CPU (``m(m−1)`` scalar steps).

    Args:
        beta: the rate ``β ∈ [0, 1]`` of the running cosines.
        eps: ``ε ≥ 0``, added to the denominators.
        generator: the ``torch.Generator`` (CPU) for the orders; ``None``: PyTorch's global one.
    """

    differentiable = False

    def __init__(
        self, beta: float = 0.5, eps: float = 1e-8, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(generator)
        check_nonnegative(beta, "beta")
        check_nonnegative(eps, "eps")
        if beta > 1:
            raise ValueError(f"`beta` should be in [0, 1] (an EMA rate). Found beta={beta}.")
        self.beta, self.eps = beta, eps
        self.reset()

    def forward(self, gramian: Tensor, /) -> Tensor:
        g = gramian.detach().to("cpu", torch.float64).numpy()
        m = g.shape[0]
        if self._targets is None or self._targets.shape[0] != m:
            self._targets = np.zeros((m, m))
        coefficients = np.eye(m)
        for i in range(m):
            self._vaccinate(g, coefficients[i], i)
        return torch.from_numpy(coefficients.sum(axis=0)).to(gramian)

    def _vaccinate(self, g: np.ndarray, row: np.ndarray, i: int) -> None:
        """Corrects ``g'ᵢ`` (its coefficients ``row``, in place) against each other row."""
        m, eps, targets = g.shape[0], self.eps, self._targets
        products = row @ g  # g'ᵢ · gₖ for every k
        order = torch.randperm(m - 1, generator=self.generator, device="cpu").tolist()
        for j in (k + (k >= i) for k in order):  # the rows other than i, shuffled
            norm_i = math.sqrt(max(float(products @ row), 0.0))
            norm_j = math.sqrt(max(float(g[j, j]), 0.0))
            cosine = float(products[j]) / (norm_i * norm_j + eps)
            target = float(targets[i, j])
            if cosine < target:
                slack = math.sqrt(max(1 - target**2, 0.0))
                change = math.sqrt(max(1 - cosine**2, 0.0))
                step = norm_i * (target * change - cosine * slack) / (norm_j * slack + eps)
                row[j] += step
                products += step * g[j]
            targets[i, j] = (1 - self.beta) * target + self.beta * cosine

    def reset(self) -> None:
        """Forgets the running cosines."""
        self._targets: np.ndarray | None = None

    def get_extra_state(self) -> Any:
        targets = None if self._targets is None else torch.from_numpy(self._targets.copy())
        return {"generator": super().get_extra_state(), "targets": targets}

    def set_extra_state(self, state: Any) -> None:
        super().set_extra_state(state["generator"])
        targets = state["targets"]
        self._targets = None if targets is None else targets.to("cpu", torch.float64).numpy().copy()


class GradVac(GramianWeightedAggregator):
    """Gradient vaccine: each task's gradient is corrected towards the others' where their
    cosine falls below its running average, and the corrected gradients are summed
    (:class:`GradVacWeighting` gives the weights; same arguments).

    From Wang, Tsvetkov, Firat & Cao, *Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models*, ICLR 2021 (https://arxiv.org/abs/2010.05874),
    with the whole model as one group.

    Properties: stateful, random (the orders), weighted, not non-conflicting, not linear under
    scaling (the corrections depend on the norms' ratios only, but the targets on the past).
    """

    def __init__(
        self, beta: float = 0.5, eps: float = 1e-8, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(GradVacWeighting(beta, eps, generator))

    def reset(self) -> None:
        self.weighting.reset()
