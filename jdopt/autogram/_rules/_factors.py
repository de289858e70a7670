"""Gramians of Linear-like gradients ``Σ_t dY[t] ⊗ X[t]`` from their factors.

``x``: ``[B, T, i]`` inputs, ``dy``: ``[S, B, T, o]`` output gradients; objectives
``r = (s, b)``, ``R = S·B``. The gradient of objective ``r`` with respect to the weight is
``Σ_t dy[s, b, t] ⊗ x[b, t]``, and with respect to the bias ``Σ_t dy[s, b, t]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..._linalg import product_with_transpose
from ._methods import MEASURED, Chooser


def factor_gramian(
    x: Tensor, dy: Tensor, *, weight: bool = True, bias: bool = False, choose: Chooser = MEASURED
) -> Tensor:
    """The Gramian ``[R, R]`` of the weight's (and/or the bias') per-objective gradients.

    For one position, ``(x xᵀ + 1) ⊙ (dy dyᵀ)``; otherwise see :func:`weight_gramian`."""
    s, b, t, o = dy.shape
    r = s * b
    if t == 1:
        d = dy.reshape(r, o)
        kd = d @ d.T
        if not weight:
            return kd
        kx = x.reshape(b, x.shape[-1]) @ x.reshape(b, x.shape[-1]).T
        if bias:
            kx = kx + 1
        return kd * (kx if s == 1 else kx.repeat(s, s))
    total = weight_gramian(x, dy, choose)[0] if weight else 0
    if bias:
        sums = position_sums(dy)
        total = total + sums @ sums.T
    return total


def weight_gramian(
    x: Tensor, dy: Tensor, choose: Chooser = MEASURED
) -> tuple[Tensor, Tensor | None]:
    """The Gramian ``[R, R]`` of the weight's per-objective gradients, with those gradients
    ``[R, o·i]`` when the way chosen materialised them (else ``None``).

    Two exact ways (see ``_methods``): ``"inner"``, inner products of the factors (without a
    batch dimension, ``B = 1``, the input kernel applied to each slice's gradients first) —
    offered when its kernels take no more memory than the gradients they avoid —, and
    ``"per_sample"``, the materialised gradients and their products.
    """
    methods: dict[str, Callable[[], tuple[Tensor, Tensor | None]]] = {
        "per_sample": lambda: _materialised_gramian(x, dy)
    }
    if inner_workspace(*dy.shape) <= dy.shape[:2].numel() * dy.shape[-1] * x.shape[-1]:
        methods["inner"] = lambda: (inner_gramian(x, dy), None)
    key = ("factors", tuple(x.shape), tuple(dy.shape), x.dtype)
    return choose(key, x.device, methods)


def _materialised_gramian(x: Tensor, dy: Tensor) -> tuple[Tensor, Tensor]:
    grads = per_objective_factors(x, dy)
    return product_with_transpose(grads), grads


def inner_gramian(x: Tensor, dy: Tensor) -> Tensor:
    """The weight's Gramian ``[R, R]`` from inner products of the factors: ``O(R²T²o + B²T²i)``,
    or ``O(T²i + ST²o + S²To)`` without a batch dimension."""
    s, b, t, o = dy.shape
    i = x.shape[-1]
    r = s * b
    if b == 1:
        kx = x.reshape(t, i) @ x.reshape(t, i).T
        d = dy.reshape(s, t, o)
        applied = torch.matmul(kx, d)  # [s, t, o]: Σ_v kx[t, v] d[s, v]
        return product_with_transpose(d.reshape(s, t * o), applied.reshape(s, t * o))
    kx = (x.reshape(b * t, i) @ x.reshape(b * t, i).T).reshape(b, t, b, t)
    d = dy.reshape(r * t, o)
    kd = (d @ d.T).reshape(s, b, t, s, b, t)
    return torch.einsum("sbtucv,btcv->sbuc", kd, kx).reshape(r, r)


def inner_workspace(s: int, b: int, t: int, o: int) -> int:
    """The size of the kernels :func:`inner_gramian` builds for output gradients
    ``[S, B, T, o]``."""
    if b == 1:
        return t * t + s * t * o
    return (s * b * t) ** 2 + (b * t) ** 2


def per_objective_factors(x: Tensor, dy: Tensor) -> Tensor:
    """The per-objective weight gradients ``[R, o·i]``."""
    s, b, t, o = dy.shape
    if b == 1:  # one product: [s·o, t] @ [t, i]
        return (dy.reshape(s, t, o).transpose(1, 2).reshape(s * o, t) @ x.reshape(t, -1)).reshape(
            s, -1
        )
    if s == 1:  # one batched product, without einsum's copies (about half the time on CPU)
        return torch.bmm(dy[0].transpose(1, 2), x).reshape(b, -1)
    return torch.einsum("sbto,bti->sboi", dy, x).reshape(s * b, -1)


def weighted_dy(dy: Tensor, weights: Tensor) -> Tensor:
    """``Σ_s weights[s, b] · dy[s, b]``: ``[B, T, o]``."""
    if dy.shape[0] == 1:
        return dy[0] * weights[0].reshape(-1, 1, 1)
    return torch.einsum("sb,sbto->bto", weights, dy)


def weighted_factors(x: Tensor, combined_dy: Tensor) -> Tensor:
    """``Σ_r weights[r] · gradient_r`` as an ``[o, i]`` matrix, from ``weighted_dy``."""
    o, i = combined_dy.shape[-1], x.shape[-1]
    return combined_dy.reshape(-1, o).T @ x.reshape(-1, i)


def position_sums(dy: Tensor) -> Tensor:
    """Per-objective bias gradients ``[R, o]``: the output gradients summed over positions."""
    s, b, _, o = dy.shape
    return dy.sum(dim=2).reshape(s * b, o)
