from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from torch import Tensor

from .._losses import as_losses, check_chunk_size, check_inputs
from ._accumulate import accumulate, flatten_rows
from ._graph import reached_leaves
from ._jacobian import identity_rows, jacobian_rows


def backward(
    losses: Tensor | Sequence[Tensor],
    aggregator: Callable[[Tensor], Tensor],
    inputs: Iterable[Tensor] | None = None,
    *,
    retain_graph: bool = False,
    parallel_chunk_size: int | None = None,
) -> None:
    """Jacobian descent's ``backward``: aggregates the Jacobian of ``losses`` into ``.grad``.

    Every element of ``losses`` (any shape) is one objective. The Jacobian ``[m, n]`` of the
    ``m`` losses with respect to the ``n`` entries of ``inputs`` is computed row by row in
    batched backward passes, aggregated into one update ``[n]``, and added to the inputs'
    ``.grad`` (as ``loss.backward()`` would add a gradient).

    Args:
        losses: a tensor of losses, or a sequence of tensors (concatenated).
        aggregator: maps the Jacobian ``[m, n]`` to the update ``[n]``, e.g.
            ``jdopt.aggregation.UPGrad()``.
        inputs: the tensors to differentiate with respect to. Default: every leaf tensor that
            requires grad and that the losses depend on.
        retain_graph: keep the graph for another backward pass.
        parallel_chunk_size: Jacobian rows per batched backward pass; ``None`` (default) means
            all at once, ``1`` one pass per row (less memory). Operations without a batching
            rule fall back to one pass per row automatically.

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
    losses = as_losses(losses)
    check_chunk_size(parallel_chunk_size)
    inputs = check_inputs(reached_leaves([losses]) if inputs is None else inputs, "inputs")
    blocks, used = compute_jacobian(losses, inputs, retain_graph, parallel_chunk_size)
    accumulate(aggregator(flatten_rows(blocks)), used)


def compute_jacobian(
    losses: Tensor,
    inputs: Sequence[Tensor],
    retain_graph: bool,
    chunk_size: int | None,
    *,
    zeros: bool = False,
) -> tuple[list[Tensor], list[Tensor]]:
    """Returns the Jacobian over the inputs that ``losses`` reach, and those inputs (over every
    input, with zero columns for the unreached ones, when ``zeros``).

    The Jacobian is one block ``[m, input.numel()]`` per input, in the inputs' order:
    :func:`~._accumulate.flatten_rows` makes it the ``[m, n]`` matrix.
    """
    rows = jacobian_rows(
        [losses],
        inputs,
        [identity_rows(losses)],
        retain_graph=retain_graph,
        chunk_size=chunk_size,
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
