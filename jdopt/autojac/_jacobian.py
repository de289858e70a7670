"""Rows of a Jacobian by reverse mode: batched with ``is_grads_batched``, in chunks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def jacobian_rows(
    outputs: Sequence[Tensor],
    inputs: Sequence[Tensor],
    grad_outputs: Sequence[Tensor],
    *,
    retain_graph: bool,
    chunk_size: int | None,
) -> list[Tensor | None]:
    """Returns, for each input, the ``m`` vector-Jacobian products ``[m, *input.shape]``.

    Row ``r`` is the gradient of ``Σₖ ⟨grad_outputs[k][r], outputs[k]⟩`` with respect to the
    input.

    Args:
        outputs: the tensors to differentiate.
        inputs: the tensors to differentiate with respect to.
        grad_outputs: one ``[m, *output.shape]`` tensor of cotangents per output.
        retain_graph: keep the graph after the last chunk.
        chunk_size: rows per batched backward pass; ``None`` means all at once, ``1`` a plain
            loop (also used automatically when an operation has no batching rule).

    Returns:
        One entry per input: its ``m`` rows, or ``None`` when no output depends on it.
    """
    m = grad_outputs[0].shape[0]
    size = m if chunk_size is None else chunk_size
    blocks = list(zip(*(g.split(size) for g in grad_outputs), strict=True))
    chunks = [
        _rows(outputs, inputs, block, retain_graph or k < len(blocks) - 1)
        for k, block in enumerate(blocks)
    ]
    lengths = [len(block[0]) for block in blocks]
    return [_concat([chunk[i] for chunk in chunks], inputs[i], lengths) for i in range(len(inputs))]


def identity_rows(losses: Tensor) -> Tensor:
    """The cotangents ``[m, *losses.shape]`` that select each entry of ``losses`` in turn."""
    m = losses.numel()
    return torch.eye(m, dtype=losses.dtype, device=losses.device).reshape(m, *losses.shape)


def _rows(
    outputs: Sequence[Tensor], inputs: Sequence[Tensor], block: tuple[Tensor, ...], retain: bool
) -> list[Tensor | None]:
    if len(block[0]) == 1:
        cotangents = [g[0] for g in block]
        grads = torch.autograd.grad(
            outputs, inputs, cotangents, retain_graph=retain, allow_unused=True
        )
        return [None if g is None else _dense(g).unsqueeze(0) for g in grads]
    try:
        grads = torch.autograd.grad(
            outputs, inputs, block, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
        return [None if g is None else _dense(g) for g in grads]
    except RuntimeError as error:
        if "vmap" not in str(error) and "batch" not in str(error).lower():
            raise
    # Some operation has no batching rule: fall back to one backward pass per row.
    rows = [
        _rows(outputs, inputs, tuple(g[r : r + 1] for g in block), retain=True)
        for r in range(len(block[0]))
    ]
    ones = [1] * len(rows)
    return [_concat([row[i] for row in rows], inputs[i], ones) for i in range(len(inputs))]


def _dense(grad: Tensor) -> Tensor:
    """A sparse Embedding's gradient is sparse: Jacobian rows are dense."""
    return grad.to_dense() if grad.is_sparse else grad


def _concat(parts: list[Tensor | None], like: Tensor, lengths: list[int]) -> Tensor | None:
    """Stacks the chunks of one input's rows; chunks that did not reach it are zeros."""
    if all(part is None for part in parts):
        return None
    filled = [
        part if part is not None else like.new_zeros(length, *like.shape)
        for part, length in zip(parts, lengths, strict=True)
    ]
    return filled[0] if len(filled) == 1 else torch.cat(filled)
