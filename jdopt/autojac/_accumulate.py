"""Writing updates into ``.grad`` — the only state jdopt ever leaves on parameters."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor


def flatten_rows(rows: Sequence[Tensor]) -> Tensor:
    """Concatenates per-input rows ``[m, *shape]`` into one matrix ``[m, n]``."""
    m = rows[0].shape[0]
    return rows[0].reshape(m, -1) if len(rows) == 1 else _cat([r.reshape(m, -1) for r in rows])


def accumulate(update: Tensor | Sequence[Tensor], params: Sequence[Tensor]) -> None:
    """Adds the slices of ``update [n]`` (or its blocks, one per parameter) to the ``.grad`` of
    ``params``, as ``backward`` would."""
    if isinstance(update, Tensor):
        update = update.split([p.numel() for p in params])
    for param, flat in zip(params, update, strict=True):
        add_grad(param, flat.reshape(param.shape))


def add_grad(param: Tensor, grad: Tensor) -> None:
    grad = grad.to(dtype=param.dtype)
    if param.grad is None:
        param.grad = grad.clone() if grad._base is not None else grad
    elif param.grad.is_sparse:  # from a sparse Embedding's own backward: the sum is dense
        param.grad = grad + param.grad
    else:
        param.grad += grad


@contextmanager
def kept_grads(tensors: Iterable[Tensor]) -> Iterator[None]:
    """Gives the tensors among ``tensors`` that called ``retain_grad()`` their ``.grad`` back on
    exit.

    autograd runs the ``retain_grad()`` hooks of the tensors it goes through, in the
    ``autograd.grad`` calls that compute a Jacobian too: each would get the sum of the rows,
    or, from a batched pass, a tensor that escaped ``vmap`` and has no storage.
    """
    kept = [(t, t.grad) for t in {id(t): t for t in tensors}.values() if t.retains_grad]
    try:
        yield
    finally:
        for tensor, grad in kept:
            tensor.grad = grad


def _cat(matrices: list[Tensor]) -> Tensor:
    dtype = matrices[0].dtype
    for matrix in matrices[1:]:
        dtype = torch.promote_types(dtype, matrix.dtype)
    return torch.cat([matrix.to(dtype) for matrix in matrices], dim=1)
