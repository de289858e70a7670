"""Gramians of Linear-like gradients ``Σ_t dY[t] ⊗ X[t]`` from their factors.

``x``: ``[B, T, i]`` inputs, ``dy``: ``[S, B, T, o]`` output gradients; objectives
``r = (s, b)``, ``R = S·B``. The gradient of objective ``r`` is ``Σ_t dy[s, b, t] ⊗ x[b, t]``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def factor_gramian(x: Tensor, dy: Tensor) -> Tensor:
    """``G[r, r'] = ⟨Σ_t dy[r,t] ⊗ x[b,t], Σ_t' dy[r',t'] ⊗ x[b',t']⟩``, ``[R, R]``.

    Picks the cheaper of two exact forms: inner products of the factors
    (``O(R²T²o + B²T²i)``) or materialised per-objective gradients (``O(RTio + R²io)``).
    """
    s, b, t, o = dy.shape
    i = x.shape[-1]
    r = s * b
    if t == 1:  # (x xᵀ) ⊙ (dy dyᵀ): the common MLP case
        kx = x[:, 0] @ x[:, 0].T
        d = dy.reshape(r, o)
        return (d @ d.T) * kx.repeat(s, s)
    inner_cost = (r * t) ** 2 * o + (b * t) ** 2 * i + (r * t) ** 2
    materialise_cost = r * t * o * i + r * r * o * i
    if materialise_cost < inner_cost:
        grads = per_objective_factors(x, dy)
        return grads @ grads.T
    kx = (x.reshape(b * t, i) @ x.reshape(b * t, i).T).reshape(b, t, b, t)
    d = dy.reshape(r * t, o)
    kd = (d @ d.T).reshape(s, b, t, s, b, t)
    return torch.einsum("sbtucv,btcv->sbuc", kd, kx).reshape(r, r)


def per_objective_factors(x: Tensor, dy: Tensor) -> Tensor:
    """The per-objective gradients ``[R, o·i]``."""
    s, b = dy.shape[:2]
    return torch.einsum("sbto,bti->sboi", dy, x).reshape(s * b, -1)


def weighted_factors(x: Tensor, dy: Tensor, weights: Tensor) -> Tensor:
    """``Σ_r weights[r] · gradient_r`` as an ``[o, i]`` matrix; ``weights``: ``[S, B]``."""
    weighted_dy = torch.einsum("sb,sbto->bto", weights, dy)
    o, i = dy.shape[-1], x.shape[-1]
    return weighted_dy.reshape(-1, o).T @ x.reshape(-1, i)


def weighted_sum(dy: Tensor, weights: Tensor) -> Tensor:
    """``Σ_{s,b,t} weights[s, b] · dy[s, b, t]`` — a bias gradient, ``[o]``."""
    return torch.einsum("sb,sbto->o", weights, dy)


def position_sums(dy: Tensor) -> Tensor:
    """Per-objective bias gradients ``[R, o]``: the output gradients summed over positions."""
    s, b, _, o = dy.shape
    return dy.sum(dim=2).reshape(s * b, o)
