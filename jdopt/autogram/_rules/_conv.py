from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

from .._layout import Layout
from ._base import Rule, Use
from ._factors import factor_gramian


class ConvRule(Rule):
    """``nn.Conv1d`` / ``nn.Conv2d`` (Conv1d is a Conv2d on a height-1 image).

    Per-sample weight gradients come from one grouped-convolution weight gradient, the
    samples (and slices) acting as groups — or, for layers with few input channels (where
    grouped kernels are slow), from the Linear formula on unfolded patches. The weighted
    gradient is one ordinary convolution weight gradient. Stride, padding (including
    ``'same'`` and padding modes), dilation and groups are those of the forward pass.
    """

    def __init__(self, module: nn.Module, names: Sequence[str]) -> None:
        super().__init__(module, names)
        self.two_d = isinstance(module, nn.Conv2d)
        m = module
        self.kernel, self.dilation, self.stride = (
            _two(v, 1) for v in (m.kernel_size, m.dilation, m.stride)
        )
        self.unfold = m.in_channels // m.groups < 8

    def exact_for(self, uses: Sequence[Use]) -> bool:
        # Unbatched inputs ([C, *spatial], legal in PyTorch) have no batch dimension to use.
        spatial = 2 if self.two_d else 1
        return all(use.args[0].ndim == spatial + 2 for use in uses)

    def _prepared(self, use: Use, layout: Layout) -> tuple[Tensor, tuple[int, int], Tensor]:
        """The padded input ``[B·N, C, H, W]``, the padding left to apply, and the output
        gradients ``[S, B, N, O, H', W']``."""
        if "conv" in use.cache:
            return use.cache["conv"]
        m = self.module
        dtype = m.weight.dtype
        x = layout.rows(use.args[0]).to(dtype)  # [B, N, C, *spatial]
        x = x.reshape(-1, *x.shape[2:])
        padding = m.padding
        if m.padding_mode != "zeros" or m.padding == "same":
            # Pad exactly as the forward pass did (for 'same', the extra pixel goes last).
            mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
            x = F.pad(x, m._reversed_padding_repeated_twice, mode=mode)
            padding = (0,) * len(m.kernel_size)
        elif m.padding == "valid":
            padding = (0,) * len(m.kernel_size)
        dy = layout.grad_rows(use.grads[0]).to(dtype)  # [S, B, N, O, *spatial]
        if not self.two_d:
            x, dy = x.unsqueeze(2), dy.unsqueeze(4)
        use.cache["conv"] = (x, _two(padding, 0), dy)
        return use.cache["conv"]

    def per_objective(self, uses: Sequence[Use], name: str, layout: Layout) -> Tensor:
        parts = [
            self._bias_grads(use, layout) if name == "bias" else self._weight_grads(use, layout)
            for use in uses
        ]
        return parts[0] if len(parts) == 1 else torch.stack(parts).sum(dim=0)

    def _bias_grads(self, use: Use, layout: Layout) -> Tensor:
        dy = self._prepared(use, layout)[2]
        s, b, _n, o = dy.shape[:4]
        return dy.sum(dim=(2, 4, 5)).reshape(s * b, o)

    def _weight_grads(self, use: Use, layout: Layout) -> Tensor:
        """``[R, numel]``: one grouped weight gradient, a group per (row, group, slice)."""
        x, padding, dy = self._prepared(use, layout)
        s, b, n, o = dy.shape[:4]
        g = self.module.groups
        x = x.reshape(b, n, *x.shape[1:]).transpose(0, 1).reshape(n, -1, *x.shape[2:])
        dy = dy.reshape(s, b, n, g, o // g, *dy.shape[4:]).permute(2, 1, 3, 0, 4, 5, 6)
        dy = dy.reshape(n, -1, *dy.shape[-2:])
        shape = (b * g * s * (o // g), x.shape[1] // (b * g), *self.kernel)
        grads = conv2d_weight(x, shape, dy, self.stride, padding, self.dilation, b * g)
        grads = grads.reshape(b, g, s, o // g, -1).permute(2, 0, 1, 3, 4)
        return grads.reshape(s * b, -1)

    def _patches(self, use: Use, layout: Layout) -> tuple[list[Tensor], list[Tensor]]:
        """Per group: patches ``[B, N·T, c·k]`` and output gradients ``[S, B, N·T, o/g]``."""
        x, padding, dy = self._prepared(use, layout)
        s, b, n, o = dy.shape[:4]
        patches = F.unfold(x, self.kernel, self.dilation, padding, self.stride)
        patches = patches.transpose(1, 2).reshape(b, -1, patches.shape[1])
        dy = dy.reshape(s, b, n, o, -1).transpose(3, 4).reshape(s, b, -1, o)
        return list(patches.chunk(self.module.groups, dim=2)), list(
            dy.chunk(self.module.groups, dim=3)
        )

    def gramian(self, uses: Sequence[Use], names: Sequence[str], layout: Layout) -> Tensor:
        if not self.unfold or "weight" not in names or len(uses) > 1:
            # Per-objective gradients (several calls must be summed before squaring).
            return super().gramian(uses, names, layout)
        xs, dys = self._patches(uses[0], layout)
        bias = "bias" in names
        parts = [factor_gramian(x, dy, bias=bias) for x, dy in zip(xs, dys, strict=True)]
        return parts[0] if len(parts) == 1 else torch.stack(parts).sum(dim=0)

    def weighted(self, uses: Sequence[Use], weights: Tensor, layout: Layout) -> dict[str, Tensor]:
        m = self.module
        grads: dict[str, Tensor] = {}
        for use in uses:
            x, padding, dy = self._prepared(use, layout)
            combined = torch.einsum(
                "sb,sbn...->bn...", weights.reshape(dy.shape[:2]).to(dy.dtype), dy
            )
            combined = combined.reshape(-1, *combined.shape[2:])
            shape = (m.out_channels, m.in_channels // m.groups, *self.kernel)
            found = {
                "weight": conv2d_weight(
                    x, shape, combined, self.stride, padding, self.dilation, m.groups
                ).reshape(m.weight.shape),
                "bias": combined.sum(dim=(0, 2, 3)),
            }
            for name in self.names:
                grads[name] = grads[name] + found[name] if name in grads else found[name]
        return grads


def _two(value: tuple[int, ...] | int, fill: int) -> tuple[int, int]:
    """A Conv1d setting as the Conv2d setting of a height-1 image (``fill`` for the height)."""
    value = tuple(value) if isinstance(value, tuple) else (value,)
    return value if len(value) == 2 else (fill, value[0])  # type: ignore[return-value]
