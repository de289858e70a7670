from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._layout import Layout
from ._base import Rule, Use
from ._factors import (
    factor_gramian,
    per_objective_factors,
    position_sums,
    weighted_factors,
    weighted_sum,
)


class ConvRule(Rule):
    """``nn.Conv1d`` / ``nn.Conv2d`` as a Linear layer over unfolded patches.

    The input is unfolded into patches ``[B, T, C/g · k]`` (``T`` = output positions, stride,
    padding, dilation and padding modes applied as in the forward pass); the weight gradient of
    group ``g`` is ``Σ_t dY_g[t] ⊗ patch_g[t]``.
    """

    def __init__(self, module: nn.Module, names: Sequence[str]) -> None:
        super().__init__(module, names)
        self.two_d = isinstance(module, nn.Conv2d)

    def factors(self, uses: Sequence[Use], layout: Layout) -> list[tuple[Tensor, Tensor]]:
        """Per group: patches ``[B, T, c·k]`` and output gradients ``[S, B, T, o/g]``."""
        groups = self.module.groups
        per_use = [self._use_factors(use, layout) for use in uses]
        xs = [torch.cat([x[g] for x, _ in per_use], dim=1) for g in range(groups)]
        dys = [torch.cat([dy[g] for _, dy in per_use], dim=2) for g in range(groups)]
        return list(zip(xs, dys, strict=True))

    def _use_factors(self, use: Use, layout: Layout) -> tuple[list[Tensor], list[Tensor]]:
        m = self.module
        dtype = m.weight.dtype
        x = layout.rows(use.args[0]).to(dtype)  # [B, N, C, *spatial]
        b, n = x.shape[:2]
        x = x.reshape(b * n, *x.shape[2:])
        padding = m.padding
        if m.padding_mode != "zeros" or m.padding == "same":
            # Pad exactly as the forward pass did (for 'same', the extra pixel goes last).
            mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
            x = F.pad(x, m._reversed_padding_repeated_twice, mode=mode)
            padding = (0,) * len(m.kernel_size)
        elif m.padding == "valid":
            padding = (0,) * len(m.kernel_size)
        if not self.two_d:
            x = x.unsqueeze(2)
        kernel, dilation, stride = (_two(v, 1) for v in (m.kernel_size, m.dilation, m.stride))
        padding = _two(padding, 0)
        patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
        patches = patches.transpose(1, 2).reshape(b, -1, patches.shape[1])  # [B, N·T, C·k]
        dy = layout.grad_rows(use.grads[0]).to(dtype)  # [S, B, N, O, *spatial]
        s = dy.shape[0]
        dy = dy.reshape(s, b, n, dy.shape[3], -1).transpose(3, 4).reshape(s, b, -1, dy.shape[3])
        xs = patches.chunk(m.groups, dim=2)
        dys = dy.chunk(m.groups, dim=3)
        return list(xs), list(dys)

    def gramian(self, uses: Sequence[Use], names: Sequence[str], layout: Layout) -> Tensor:
        total = 0
        for x, dy in self.factors(uses, layout):
            if "weight" in names:
                total = total + factor_gramian(x, dy)
            if "bias" in names:
                bias = position_sums(dy)
                total = total + bias @ bias.T
        return total

    def per_objective(self, uses: Sequence[Use], name: str, layout: Layout) -> Tensor:
        factors = self.factors(uses, layout)
        if name == "bias":
            return torch.cat([position_sums(dy) for _, dy in factors], dim=1)
        return torch.cat([per_objective_factors(x, dy) for x, dy in factors], dim=1)

    def weighted(self, uses: Sequence[Use], weights: Tensor, layout: Layout) -> dict[str, Tensor]:
        factors = self.factors(uses, layout)
        w = weights.reshape(factors[0][1].shape[:2]).to(factors[0][1].dtype)
        grads = {}
        if "weight" in self.names:
            blocks = [weighted_factors(x, dy, w) for x, dy in factors]
            grads["weight"] = torch.cat(blocks, dim=0).reshape(self.module.weight.shape)
        if "bias" in self.names:
            grads["bias"] = torch.cat([weighted_sum(dy, w) for _, dy in factors])
        return grads


def _two(value: tuple[int, ...] | int, fill: int) -> tuple[int, int]:
    """A Conv1d setting as the Conv2d setting of a height-1 image (``fill`` for the height)."""
    value = tuple(value) if isinstance(value, tuple) else (value,)
    return value if len(value) == 2 else (fill, value[0])  # type: ignore[return-value]
