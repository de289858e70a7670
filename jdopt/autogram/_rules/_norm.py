from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .._layout import Layout
from ._base import Rule, Use


class NormRule(Rule):
    """LayerNorm, GroupNorm and RMSNorm: per-objective gradients are cheap, so materialise them.

    With ``x̂`` the input normalised without the affine map, the weight gradient is
    ``Σ dY ⊙ x̂`` and the bias gradient ``Σ dY``, summed over positions (and the inner batch).
    """

    gatherable = True
    computes_with = frozenset({"weight", "bias"})

    def consume(self, use: Use, names: Sequence[str], layout: Layout) -> tuple[Tensor, bool] | None:
        # Per-objective gradients are one vector per sample: keep them, not the output gradient.
        use.kept.update({name: self.per_objective([use], name, layout) for name in self.names})
        return sum(use.kept[name] @ use.kept[name].T for name in names), True

    def per_objective(self, uses: Sequence[Use], name: str, layout: Layout) -> Tensor:
        if name in uses[0].kept:
            return uses[0].kept[name]
        total = None
        for use in uses:
            grads = self._use_grads(use, name, layout)
            total = grads if total is None else total + grads
        return total

    def _use_grads(self, use: Use, name: str, layout: Layout) -> Tensor:
        dtype = self.dtype(name)
        dy = layout.grad_rows(use.grads[0]).to(dtype)  # [S, B, N, *shape]
        if name == "weight":
            dy = dy * layout.rows(self.normalised(use.args[0].to(dtype))).unsqueeze(0)
        s, b = dy.shape[:2]
        return self.reduce(dy.reshape(s * b, *dy.shape[2:]))

    def normalised(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def reduce(self, grads: Tensor) -> Tensor:
        """``[R, N, *shape]`` → ``[R, numel]``: sum over everything but the parameter's axes."""
        raise NotImplementedError


class LayerNormRule(NormRule):
    def normalised(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.module.normalized_shape, None, None, self.module.eps)

    def reduce(self, grads: Tensor) -> Tensor:
        k = len(self.module.normalized_shape)
        return grads.reshape(grads.shape[0], -1, *grads.shape[grads.ndim - k :]).sum(1).flatten(1)


class RMSNormRule(LayerNormRule):
    def normalised(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.module.normalized_shape, None, self.module.eps)


class GroupNormRule(NormRule):
    """GroupNorm on ``[N, C, *spatial]``: the parameters follow the channel axis."""

    def normalised(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.module.num_groups, None, None, self.module.eps)

    def reduce(self, grads: Tensor) -> Tensor:
        r, n, c = grads.shape[:3]
        return grads.reshape(r, n, c, -1).sum(dim=(1, 3))


def norm_rules() -> dict[type[nn.Module], type[NormRule]]:
    rules: dict[type[nn.Module], type[NormRule]] = {
        nn.LayerNorm: LayerNormRule,
        nn.GroupNorm: GroupNormRule,
    }
    if hasattr(nn, "RMSNorm"):  # torch >= 2.4
        rules[nn.RMSNorm] = RMSNormRule
    return rules
