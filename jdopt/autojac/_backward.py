from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from torch import Tensor

from .._linalg import no_autocast
from .._losses import as_losses, check_chunk_size, check_inputs
from .._rows import identity_rows, jacobian_rows
from ._accumulate import accumulate, flatten_rows, kept_grads
from ._checks import tensor_entries
from ._graph import reached_leaves


def backward(
    tensors: Tensor | Sequence[Tensor],
    aggregator: Callable[[Tensor], Tensor],
    inputs: Iterable[Tensor] | None = None,
    retain_graph: bool = False,
    parallel_chunk_size: int | None = None,
) -> None:
    """Jacobian descent's ``backward``: aggregates the Jacobian of the losses into ``.grad``.

    Every element of ``tensors`` (any shape) is one objective. The Jacobian ``[m, n]`` of the
    ``m`` losses with respect to the ``n`` entries of ``inputs`` is computed row by row in
    batched backward passes, aggregated into one update ``[n]``, and added to the inputs'
    ``.grad`` (as ``loss.backward()`` would add a gradient). An input that the losses do not
    reach is a zero column of the Jacobian: its ``.grad`` gets the update's zeros.

    Args:
        tensors: the losses: a tensor, or a non-empty sequence of distinct tensors
            (concatenated).
        aggregator: maps the Jacobian ``[m, n]`` to the update ``[n]``, e.g.
            ``jdopt.aggregation.UPGrad()``.
        inputs: the tensors to differentiate with respect to: leaves, or tensors that called
            ``retain_grad()``; a repeated one counts once; empty: nothing happens. Default:
            every leaf tensor that requires grad and that the losses depend on, nearest to the
            losses first.
        retain_graph: keep the graph for another backward pass; ``False`` frees it.
        parallel_chunk_size: Jacobian rows per batched backward pass; ``None`` (default) means
            all at once, ``1`` one pass per row (less memory). An operation without a batching
            rule makes the rows fall back to one pass each (see ``Raises``).

    Raises:
        ValueError: empty or repeated ``tensors``, losses or inputs that do not require grad,
            a non-leaf input that did not call ``retain_grad()`` — before any ``.grad``
            changes.
        RuntimeError: an operation without a batching rule when the failed batched pass has
            freed the graph (the message says to pass ``parallel_chunk_size=1``).

    Note:
        The ``.grad`` of ``tensors`` and of the inputs that called ``retain_grad()`` is left as
        it was (plus the update, for the inputs). Other tensors in the graph that called
        ``retain_grad()`` are out of reach: PyTorch runs their hooks on every backward pass
        (with ``parallel_chunk_size=1`` they get the sum of the rows, the gradient of the sum
        of the losses; from a batched pass, a tensor without storage). Pass such a tensor in
        ``inputs`` to give it the aggregated update instead.

    Example:
        >>> import torch
        >>> from jdopt.aggregation import UPGrad
        >>> from jdopt.autojac import backward
        >>> param = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> losses = torch.stack([param.sum(), (param**2).sum()])
        >>> backward(losses, UPGrad())
        >>> param.grad
        tensor([1.5000, 2.5000])
    """
    check_chunk_size(parallel_chunk_size)
    entries = tensor_entries(tensors, "tensors")
    if inputs is not None:
        inputs = check_inputs(inputs, "inputs")
        if not inputs:
            return
    losses = as_losses(tensors, "tensors")
    if inputs is None:
        inputs = reached_leaves(entries)
    # Without the caller's autocast: the backward passes follow the forward's dtypes.
    with no_autocast(losses.device.type):
        with kept_grads([*entries, *inputs]):
            blocks, used = compute_jacobian(
                losses,
                inputs,
                retain_graph,
                parallel_chunk_size,
                zeros=True,
                keep_for_fallback=False,
            )
        accumulate(aggregator(flatten_rows(blocks)), used)


def compute_jacobian(
    losses: Tensor,
    inputs: Sequence[Tensor],
    retain_graph: bool,
    chunk_size: int | None,
    *,
    zeros: bool = False,
    keep_for_fallback: bool = True,
) -> tuple[list[Tensor], list[Tensor]]:
    """Returns the Jacobian over the inputs that ``losses`` reach, and those inputs (over every
    input, with zero columns for the unreached ones, when ``zeros``).

    The Jacobian is one block ``[m, input.numel()]`` per input, in the inputs' order:
    :func:`~._accumulate.flatten_rows` makes it the ``[m, n]`` matrix. ``keep_for_fallback``:
    see :func:`jdopt._rows.jacobian_rows`.
    """
    rows = jacobian_rows(
        [losses],
        inputs,
        [identity_rows(losses)],
        retain_graph=retain_graph,
        chunk_size=chunk_size,
        keep_for_fallback=keep_for_fallback,
    )
    if zeros:
        m = losses.numel()
        rows = [
            x.new_zeros(m, *x.shape) if r is None else r for x, r in zip(inputs, rows, strict=True)
        ]
    used = [x for x, row in zip(inputs, rows, strict=True) if row is not None]
    if not used:
        raise ValueError(
            "The losses depend on none of the given parameters. Pass the parameters the "
            "losses are computed from (for JDOptimizer: build the wrapped optimizer on the "
            "parameters of the model that computes the losses)."
        )
    return [row.reshape(row.shape[0], -1) for row in rows if row is not None], used
