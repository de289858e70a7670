from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._layout import Layout
from ._base import Rule, Use
from ._factors import (
    factor_gramian,
    per_objective_factors,
    position_sums,
    weighted_dy,
    weighted_factors,
)


class LinearRule(Rule):
    """``nn.Linear`` with inputs ``[batch, *, in]``: the positions ``*`` (and the calls of the
    module) are stacked along one axis, ``T``."""

    gatherable = True
    computes_with = frozenset({"weight", "bias"})

    def factors(self, uses: Sequence[Use], layout: Layout) -> tuple[Tensor, Tensor]:
        """Inputs ``[B, T, i]`` and output gradients ``[S, B, T, o]`` of all calls."""
        dtype = self.dtype(self.names[0])
        xs, dys = [], []
        for use in uses:
            x = layout.rows(use.args[0])
            dy = layout.grad_rows(use.grads[0])
            xs.append(x.reshape(x.shape[0], -1, x.shape[-1]).to(dtype))
            dys.append(dy.reshape(*dy.shape[:2], -1, dy.shape[-1]).to(dtype))
        if len(uses) == 1:
            return xs[0], dys[0]
        return torch.cat(xs, dim=1), torch.cat(dys, dim=2)

    def gramian(self, uses: Sequence[Use], names: Sequence[str], layout: Layout) -> Tensor:
        x, dy = self.factors(uses, layout)
        return factor_gramian(
            x, dy, weight="weight" in names, bias="bias" in names, choose=self.choose
        )

    def per_objective(self, uses: Sequence[Use], name: str, layout: Layout) -> Tensor:
        x, dy = self.factors(uses, layout)
        return per_objective_factors(x, dy) if name == "weight" else position_sums(dy)

    def weighted(self, uses: Sequence[Use], weights: Tensor, layout: Layout) -> dict[str, Tensor]:
        x, dy = self.factors(uses, layout)
        combined = weighted_dy(dy, weights.reshape(dy.shape[:2]).to(dy.dtype))
        grads = {}
        if "weight" in self.names:
            grads["weight"] = weighted_factors(x, combined)
        if "bias" in self.names:
            grads["bias"] = combined.sum(dim=(0, 1))
        return grads
