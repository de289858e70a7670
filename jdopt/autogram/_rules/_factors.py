"""Gramians of Linear-like gradients ``Σ_t dY[t] ⊗ X[t]`` from their factors.

``x``: ``[B, T, i]`` inputs, ``dy``: ``[S, B, T, o]`` output gradients; objectives
``r = (s, b)``, ``R = S·B``. The gradient of objective ``r`` with respect to the weight is
``Σ_t dy[s, b, t] ⊗ x[b, t]``, and with respect to the bias ``Σ_t dy[s, b, t]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..._linalg import product_with_transpose


def factor_gramian(x: Tensor, dy: Tensor, *, weight: bool = True, bias: bool = False) -> Tensor:
    """The Gramian ``[R, R]`` of the weight's (and/or the bias') per-objective gradients.

    Picks the cheapest exact form: for one position, ``(x xᵀ + 1) ⊙ (dy dyᵀ)``; otherwise
    inner products of the factors (``O(R²T²o + B²T²i)``; without a batch dimension, ``B = 1``,
    the input kernel applied to each slice's gradients first: ``O(T²i + ST²o + S²To)``) or
    materialised per-objective gradients (``O(RTio + R²io)``), whichever costs fewer
    operations.
    """
    s, b, t, o = dy.shape
    i = x.shape[-1]
    r = s * b
    if t == 1:
        d = dy.reshape(r, o)
        kd = d @ d.T
        if not weight:
            return kd
        kx = x.reshape(b, i) @ x.reshape(b, i).T
        if bias:
            kx = kx + 1
        return kd * (kx if s == 1 else kx.repeat(s, s))
    total = 0
    if weight:
        if prefers_materialising(x, dy):
            grads = per_objective_factors(x, dy)
            total = product_with_transpose(grads)
        elif b == 1:
            kx = x.reshape(t, i) @ x.reshape(t, i).T
            d = dy.reshape(s, t, o)
            applied = torch.matmul(kx, d)  # [s, t, o]: Σ_v kx[t, v] d[s, v]
            total = product_with_transpose(d.reshape(s, t * o), applied.reshape(s, t * o))
        else:
            kx = (x.reshape(b * t, i) @ x.reshape(b * t, i).T).reshape(b, t, b, t)
            d = dy.reshape(r * t, o)
            kd = (d @ d.T).reshape(s, b, t, s, b, t)
            total = torch.einsum("sbtucv,btcv->sbuc", kd, kx).reshape(r, r)
    if bias:
        sums = position_sums(dy)
        total = total + sums @ sums.T
    return total


def prefers_materialising(x: Tensor, dy: Tensor) -> bool:
    """Whether materialised per-objective weight gradients give the Gramian in fewer
    operations than inner products of the factors (``T > 1``)."""
    s, b, t, o = dy.shape
    i = x.shape[-1]
    r = s * b
    if b == 1:  # no batch dimension: apply the input kernel to each slice's gradients
        inner_cost = t * t * i + s * t * t * o + s * s * t * o
    else:
        inner_cost = (r * t) ** 2 * o + (b * t) ** 2 * i + (r * t) ** 2
    return r * t * o * i + r * r * o * i < inner_cost


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
