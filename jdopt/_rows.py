"""Rows of a Jacobian by reverse mode: batched with ``is_grads_batched``, in chunks; one
backward pass per row where an operation cannot run batched. Shared by both engines."""

from __future__ import annotations

import sys
import warnings
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
    keep_for_fallback: bool = True,
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
            loop. The loop also takes over when an operation has no batching rule, and for a
            graph that goes through code compiled by ``torch.compile``.
        keep_for_fallback: let every batched pass keep the graph, for the loop to take over
            if it fails; the graph then lives as long as ``outputs`` do. ``False`` frees it
            in the last pass (as ``torch.autograd.grad`` and TorchJD do) unless
            ``retain_graph``: if that pass fails, the loop can take over only if the failure
            came before any freeing; otherwise a ``RuntimeError`` says how to call again.

    Returns:
        One entry per input: its ``m`` rows, or ``None`` when no output depends on it.
    """
    m = grad_outputs[0].shape[0]
    size = m if chunk_size is None else chunk_size
    blocks = list(zip(*(g.split(size) for g in grad_outputs), strict=True))
    chunks: list[list[Tensor | None]] = []
    # Until an operation turns out to have no batching rule.
    batched = not through_compiled_code(outputs)
    for k, block in enumerate(blocks):
        retain = retain_graph or k < len(blocks) - 1
        keep = retain or keep_for_fallback
        rows, batched = batched_or_looped_rows(
            outputs, inputs, block, retain=retain, keep=keep, batched=batched
        )
        chunks.append(rows)
    lengths = [len(block[0]) for block in blocks]
    return [_concat([chunk[i] for chunk in chunks], inputs[i], lengths) for i in range(len(inputs))]


def identity_rows(losses: Tensor) -> Tensor:
    """The cotangents ``[m, *losses.shape]`` that select each entry of ``losses`` in turn."""
    m = losses.numel()
    return torch.eye(m, dtype=losses.dtype, device=losses.device).reshape(m, *losses.shape)


def batched_or_looped_rows(
    outputs: Sequence[Tensor],
    inputs: Sequence[Tensor],
    block: tuple[Tensor, ...],
    *,
    retain: bool,
    keep: bool,
    batched: bool,
) -> tuple[list[Tensor | None], bool]:
    """The rows of one chunk, and whether the next chunk may still be batched.

    ``retain``: keep the graph after this chunk; ``keep``: keep it after a batched pass in any
    case; ``batched``: try a batched pass (a loop otherwise).
    """
    if not batched or len(block[0]) == 1:
        return _loop(outputs, inputs, block, retain), batched
    try:
        with warnings.catch_warnings():
            # An operation without a batching rule runs in a loop inside the batched pass: as
            # exact, and no slower than a loop of whole passes, so PyTorch's warning is noise.
            warnings.filterwarnings("ignore", message=".*performance drop.*batching rule")
            grads = torch.autograd.grad(
                outputs,
                inputs,
                block,
                retain_graph=keep,
                allow_unused=True,
                is_grads_batched=True,
            )
        return [None if g is None else _dense(g) for g in grads], True
    except RuntimeError as error:
        if "vmap" not in str(error) and "batch" not in str(error).lower():
            raise
        return _loop_after(error, outputs, inputs, block, retain), False


def _loop(
    outputs: Sequence[Tensor], inputs: Sequence[Tensor], block: tuple[Tensor, ...], retain: bool
) -> list[Tensor | None]:
    """One backward pass per row; the last one frees the graph unless ``retain``."""
    n = len(block[0])
    rows = []
    for r in range(n):
        grads = torch.autograd.grad(
            outputs,
            inputs,
            [g[r] for g in block],
            retain_graph=retain or r < n - 1,
            allow_unused=True,
        )
        rows.append([None if g is None else _dense(g).unsqueeze(0) for g in grads])
    return [_concat([row[i] for row in rows], inputs[i], [1] * n) for i in range(len(inputs))]


def _loop_after(
    failure: RuntimeError,
    outputs: Sequence[Tensor],
    inputs: Sequence[Tensor],
    block: tuple[Tensor, ...],
    retain: bool,
) -> list[Tensor | None]:
    """Falls back to one pass per row after a batched pass failed, if it left the graph."""
    try:
        return _loop(outputs, inputs, block, retain)
    except RuntimeError as error:
        if "second time" not in str(error):
            raise
        raise RuntimeError(
            "An operation in the graph cannot run batched over the Jacobian's rows "
            f"({str(failure).splitlines()[0]}), and one backward pass per row cannot take "
            "over: the graph has been freed (by the failed batched pass, or by an earlier "
            "backward pass). Pass `parallel_chunk_size=1` (one backward pass per row), or "
            "`retain_graph=True` to let jdopt fall back to one pass per row by itself."
        ) from failure


def through_compiled_code(outputs: Sequence[Tensor]) -> bool:
    """Whether the graph of ``outputs`` goes through code compiled by ``torch.compile``.

    Such code is one ``CompiledFunctionBackward`` node, whose compiled kernels read their
    inputs' memory: the batched tensors of ``is_grads_batched`` have none ("Cannot access data
    pointer of Tensor that doesn't have storage"), so its rows take one pass each. Without
    ``torch._dynamo`` imported, nothing was compiled and the graph is not walked.
    """
    if "torch._dynamo" not in sys.modules:
        return False
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    seen = set(stack)
    while stack:
        node = stack.pop()
        if node.name() == "CompiledFunctionBackward":
            return True
        for child, _ in node.next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                stack.append(child)
    return False


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
