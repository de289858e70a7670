"""Small linear-algebra helpers shared by the aggregation methods and the engines."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor


def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """The dtype jdopt's own products and solves run in for data of ``dtype``: float32 for half
    precision (whose sums of squares overflow or round), else ``dtype`` (float64 stays)."""
    return torch.promote_types(dtype, torch.float32)


@contextmanager
def no_autocast(device_type: str) -> Iterator[None]:
    """Turns the caller's autocast off on ``device_type`` for jdopt's own computations (the
    Gramian, the weights, the update), as PyTorch recommends for backward passes. Free when
    autocast is off."""
    if not _autocast_enabled(device_type):
        yield
        return
    with torch.autocast(device_type, enabled=False):
        yield


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type without autocast ("meta")
        return False
    except TypeError:  # torch < 2.4: CUDA's flag takes no argument
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return device_type == "cuda" and torch.is_autocast_enabled()


@contextmanager
def exact_float32() -> Iterator[None]:
    """Float32 matrix products in float32 inside: neither TF32 (``torch.backends.cuda.matmul``)
    nor bfloat16 (oneDNN's ``torch.backends.mkldnn.matmul``, on CPUs), which
    ``torch.set_float32_matmul_precision("high" | "medium")``, the ``allow_tf32`` flags or the
    ``fp32_precision`` settings allow. The caller's settings are restored on exit. Free (two
    flag reads) when none is allowed, as by default. Like ``torch.backends.cudnn.flags``, it
    changes process-wide settings while it lasts."""
    saved = _matmul_precisions()
    if not _reduced(saved):
        yield
        return
    legacy = _legacy_precision(saved)
    _set_matmul_precisions("highest", ("ieee", "ieee") if saved else ())
    try:
        yield
    finally:
        _set_matmul_precisions(legacy, saved)


_PER_BACKEND = hasattr(torch.backends, "fp32_precision")  # torch >= 2.9


def _matmul_precisions() -> tuple[str, ...]:
    """The precisions CUDA's and oneDNN's float32 matrix products may use (none before torch
    2.9, whose only setting is ``torch.get_float32_matmul_precision()``)."""
    if not _PER_BACKEND:
        return ()
    backends = torch.backends
    return backends.cuda.matmul.fp32_precision, backends.mkldnn.matmul.fp32_precision


def _reduced(precisions: tuple[str, ...]) -> bool:
    if not precisions:
        return torch.get_float32_matmul_precision() != "highest"
    return precisions[0] == "tf32" or precisions[1] in ("tf32", "bf16")


def _legacy_precision(precisions: tuple[str, ...]) -> str:
    """``torch.get_float32_matmul_precision()``; where per-backend settings that it does not
    express make it refuse, deduced from the checks that refuse: CUDA's (legacy "highest" iff
    no TF32) and oneDNN's (bfloat16 needs "medium", TF32 "high")."""
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError:
        cuda, mkldnn = precisions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch deprecates the legacy flag
        try:
            highest = not torch.backends.cuda.matmul.allow_tf32
        except RuntimeError:  # the legacy setting disagrees with the per-backend one
            highest = cuda == "tf32"
    if highest:
        return "highest"
    return "high" if mkldnn == "bf16" else "medium"


def _set_matmul_precisions(legacy: str, precisions: tuple[str, ...]) -> None:
    """Sets the legacy setting (CUDA checks it against the per-backend one), then the
    per-backend ones; one equal to the generic ``torch.backends.fp32_precision`` is set back
    to ``"none"``, which inherits it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch deprecates the legacy setting
        torch.set_float32_matmul_precision(legacy)
        if precisions:
            generic = torch.backends.fp32_precision
            cuda, mkldnn = ("none" if p == generic else p for p in precisions)
            torch.backends.cuda.matmul.fp32_precision = cuda
            torch.backends.mkldnn.matmul.fp32_precision = mkldnn


def compute_gramian(matrix: Tensor, /) -> Tensor:
    """Returns ``matrix @ matrix.T``, symmetrised so that rounding cannot break symmetry, in at
    least float32 (see :func:`sum_of_gramians`).

    Args:
        matrix: ``[m, n]``.

    Returns:
        ``[m, m]``.
    """
    return sum_of_gramians([matrix])


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
    dtype = at_least_float32(blocks[0].dtype)  # half precision's sums of squares overflow
    for block in blocks[1:]:
        dtype = torch.promote_types(dtype, block.dtype)
    gramian = sum(product_with_transpose(b.to(dtype)) for b in blocks)
    return (gramian + gramian.T) / 2


def normalize(gramian: Tensor, eps: float) -> Tensor:
    """Divides ``gramian`` by its trace, or returns zeros when the trace is at most ``eps``.

    The trace is the squared Frobenius norm of the Jacobian, so the result is the Gramian of the
    Jacobian scaled to unit Frobenius norm. A near-zero Gramian carries no direction worth
    solving for: returning zeros makes the callers fall back to their preference weights.
    """
    trace = gramian.diagonal().sum()
    # Without a branch, which would read the trace on the host.
    return torch.where(trace > eps, gramian / trace, torch.zeros_like(gramian))


def regularize(gramian: Tensor, eps: float) -> Tensor:
    """Adds ``eps`` times the identity, making a positive semi-definite Gramian definite."""
    return gramian + eps * torch.eye(gramian.shape[0], dtype=gramian.dtype, device=gramian.device)


def flatten_generalized(generalized_gramian: Tensor, /) -> Tensor:
    """``[*S, *reversed(S)]`` → the ``[∏S, ∏S]`` Gramian of the flattened losses."""
    k = generalized_gramian.ndim // 2
    m = math.prod(generalized_gramian.shape[:k])
    order = [*range(k), *reversed(range(k, 2 * k))]
    return generalized_gramian.permute(order).reshape(m, m)
