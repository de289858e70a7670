"""Small linear-algebra helpers shared by the aggregation methods and the engines."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def compute_gramian(matrix: Tensor, /) -> Tensor:
    """Returns ``matrix @ matrix.T``, symmetrised so that rounding cannot break symmetry.

    Args:
        matrix: ``[m, n]``.

    Returns:
        ``[m, m]``.
    """
    gramian = product_with_transpose(matrix)
    return (gramian + gramian.T) / 2


def product_with_transpose(left: Tensor, right: Tensor | None = None) -> Tensor:
    """``left @ right.T`` (``right`` defaults to ``left``); for short, wide operands, as a sum
    over column chunks.

    BLAS handles ``[m, n] @ [n, p]`` with small ``m``, ``p`` and large ``n`` poorly on CPUs
    (about a fifth of its usual speed at ``m = p = 10``, ``n = 65536``); one batched product of
    ``_CHUNK``-column slices, summed, runs at full speed.
    """
    right = left if right is None else right
    (m, n), p = left.shape, right.shape[0]
    if max(m, p) > _SHORT or n < _WIDE:
        return left @ right.T
    whole = n - n % _CHUNK
    slices = left[:, :whole].reshape(m, -1, _CHUNK).transpose(0, 1)  # [n / chunk, m, chunk]
    others = right[:, :whole].reshape(p, -1, _CHUNK).permute(1, 2, 0)  # [n / chunk, chunk, p]
    product = torch.bmm(slices, others).sum(dim=0)
    if whole < n:
        product += left[:, whole:] @ right[:, whole:].T
    return product


_SHORT, _WIDE, _CHUNK = 16, 16384, 1024


def sum_of_gramians(blocks: Sequence[Tensor], /) -> Tensor:
    """Returns the Gramian of the column-wise concatenation of ``blocks`` ``[m, nᵢ]``, ``[m, m]``.

    ``Σᵢ Bᵢ Bᵢᵀ`` in the promoted dtype (float32 for half precision), symmetrised: the Gramian of
    a Jacobian kept as one block per parameter, without concatenating it.
    """
    dtype = blocks[0].dtype
    for block in blocks[1:]:
        dtype = torch.promote_types(dtype, block.dtype)
    if dtype in (torch.float16, torch.bfloat16):  # their sums of squares overflow or round
        dtype = torch.float32
    gramian = sum(product_with_transpose(b.to(dtype)) for b in blocks)
    return (gramian + gramian.T) / 2


def normalize(gramian: Tensor, eps: float) -> Tensor:
    """Divides ``gramian`` by its trace, or returns zeros when the trace is at most ``eps``.

    The trace is the squared Frobenius norm of the Jacobian, so the result is the Gramian of the
    Jacobian scaled to unit Frobenius norm. A near-zero Gramian carries no direction worth
    solving for: returning zeros makes the callers fall back to their preference weights.
    """
    trace = gramian.diagonal().sum()
    if trace <= eps:
        return torch.zeros_like(gramian)
    return gramian / trace


def regularize(gramian: Tensor, eps: float) -> Tensor:
    """Adds ``eps`` times the identity, making a positive semi-definite Gramian definite."""
    return gramian + eps * torch.eye(gramian.shape[0], dtype=gramian.dtype, device=gramian.device)


def flatten_generalized(generalized_gramian: Tensor, /) -> Tensor:
    """``[*S, *reversed(S)]`` → the ``[∏S, ∏S]`` Gramian of the flattened losses."""
    k = generalized_gramian.ndim // 2
    m = math.prod(generalized_gramian.shape[:k])
    order = [*range(k), *reversed(range(k, 2 * k))]
    return generalized_gramian.permute(order).reshape(m, m)
