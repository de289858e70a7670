"""Per-objective weight gradients of a convolution, from its padded inputs and output gradients.

``x``: the padded input ``[B·N, C, H, W]`` (a Conv1d's is a height-1 image), ``dy``: the output
gradients ``[S, B, N, O, H', W']``, ``padding``: what is left to apply; objectives
``r = (s, b)``, ``R = S·B``. Three kernels give the same gradients ``[R, numel]`` (see
``ConvRule``): one grouped weight gradient, one weight gradient per row, or the Linear formula
on unfolded patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_weight

from ..._linalg import product_with_transpose
from ._factors import per_objective_factors

Prepared = tuple[Tensor, tuple[int, int], Tensor]  # x, padding, dy of one call


@dataclass(frozen=True)
class Geometry:
    """A Conv2d's settings (a Conv1d's as those of a height-1 image)."""

    kernel: tuple[int, int]
    dilation: tuple[int, int]
    stride: tuple[int, int]
    groups: int

    def weight_grad(
        self, x: Tensor, shape: tuple, dy: Tensor, padding: tuple, groups: int
    ) -> Tensor:
        """The weight gradient of a convolution of ``x`` with these settings and ``groups``."""
        return conv2d_weight(x, shape, dy, self.stride, padding, self.dilation, groups)


def grouped(geometry: Geometry, prepared: Prepared) -> Tensor:
    """One grouped weight gradient, a group per (row, group, slice)."""
    x, padding, dy = prepared
    s, b, n, o = dy.shape[:4]
    g = geometry.groups
    x = x.reshape(b, n, *x.shape[1:]).transpose(0, 1).reshape(n, -1, *x.shape[2:])
    dy = dy.reshape(s, b, n, g, o // g, *dy.shape[4:]).permute(2, 1, 3, 0, 4, 5, 6)
    dy = dy.reshape(n, -1, *dy.shape[-2:])
    shape = (b * g * s * (o // g), x.shape[1] // (b * g), *geometry.kernel)
    grads = geometry.weight_grad(x, shape, dy, padding, b * g)
    grads = grads.reshape(b, g, s, o // g, -1).permute(2, 0, 1, 3, 4)
    return grads.reshape(s * b, -1)


def looped(geometry: Geometry, prepared: Prepared, numel: int) -> Tensor:
    """One weight gradient per row, the slices acting as extra output channels (``numel``: the
    weight's)."""
    x, padding, dy = prepared
    s, b, n, o = dy.shape[:4]
    g = geometry.groups
    grads = dy.new_empty(s, b, numel)
    shape = (g * s * (o // g), x.shape[1] // g, *geometry.kernel)
    for row in range(b):
        # Output channels ordered (group, slice, channel): each group keeps its inputs.
        d = dy[:, row].reshape(s, n, g, o // g, *dy.shape[4:]).permute(1, 2, 0, 3, 4, 5)
        d = d.reshape(n, -1, *dy.shape[4:])
        part = geometry.weight_grad(x[row * n : (row + 1) * n], shape, d, padding, g)
        grads[:, row] = part.reshape(g, s, o // g, -1).transpose(0, 1).reshape(s, -1)
    return grads.reshape(s * b, -1)


def unfolded(geometry: Geometry, prepared: Prepared) -> Tensor:
    """The Linear formula on unfolded patches, group by group."""
    parts = [per_objective_factors(x, dy) for x, dy in patches(geometry, [prepared])]
    if len(parts) == 1:
        return parts[0]
    r = parts[0].shape[0]
    return torch.cat([p.reshape(r, -1) for p in parts], dim=1)


def unfolded_gramian(geometry: Geometry, calls: Sequence[Prepared]) -> tuple[Tensor, Tensor | None]:
    """The weight's Gramian from unfolded patches, the per-objective gradients made a few
    output channels at a time so that none is bigger than the patches they come from
    (returned only when made at once)."""
    factors = patches(geometry, calls)  # per group: [B, P, c·k], [S, B, P, o/g]
    s, _, positions, width = factors[0][1].shape
    pieces = min(width, -(-(s * width) // positions))
    total, parts = None, []
    for x, dy in factors:
        for d in dy.chunk(pieces, dim=-1):
            grads = per_objective_factors(x, d)  # [R, o'·c·k]
            part = product_with_transpose(grads)
            total = part if total is None else total + part
            if pieces == 1:
                parts.append(grads)
    if pieces > 1:
        return total, None
    return total, (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))


def patches(geometry: Geometry, calls: Sequence[Prepared]) -> list[tuple[Tensor, Tensor]]:
    """Per group: patches ``[B, N·T, c·k]`` and output gradients ``[S, B, N·T, o/g]``, the
    calls stacked along the positions."""
    xs, dys = [], []
    for x, padding, dy in calls:
        s, b, n, o = dy.shape[:4]
        columns = F.unfold(x, geometry.kernel, geometry.dilation, padding, geometry.stride)
        xs.append(columns.transpose(1, 2).reshape(b, -1, columns.shape[1]))
        dys.append(dy.reshape(s, b, n, o, -1).transpose(3, 4).reshape(s, b, -1, o))
    x = xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)
    dy = dys[0] if len(dys) == 1 else torch.cat(dys, dim=2)
    g = geometry.groups
    return list(zip(x.chunk(g, dim=2), dy.chunk(g, dim=3), strict=True))


def bias_grads(dys: Sequence[Tensor]) -> Tensor:
    """Per-objective bias gradients ``[R, O]``: the output gradients summed over positions."""
    total = None
    for dy in dys:
        s, b, _n, o = dy.shape[:4]
        part = dy.sum(dim=(2, 4, 5)).reshape(s * b, o)
        total = part if total is None else total + part
    return total
