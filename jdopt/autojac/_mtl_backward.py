from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from torch import Tensor

from .._linalg import no_autocast
from .._losses import as_losses, check_chunk_size, check_inputs
from .._rows import identity_rows, jacobian_rows
from ._accumulate import accumulate, add_grad, flatten_rows, kept_grads
from ._checks import check_distinct, check_features, check_no_overlap, task_losses
from ._graph import reached_leaves
from ._heads import split_at_features, task_roots
from ._stages import NO_FEATURES, shared_blocks, summed_rows, two_stage, with_grads
from ._tasks import task_params


def mtl_backward(
    losses: Sequence[Tensor] | Tensor,
    features: Sequence[Tensor] | Tensor,
    aggregator: Callable[[Tensor], Tensor],
    tasks_params: Sequence[Iterable[Tensor]] | None = None,
    shared_params: Iterable[Tensor] | None = None,
    retain_graph: bool = False,
    parallel_chunk_size: int | None = None,
) -> None:
    """Multi-task ``backward``: Jacobian descent on the shared trunk, gradients on the heads.

    Each task ``i`` has a loss ``losses[i]`` computed by its own head from the shared
    ``features``. The shared parameters (upstream of ``features``) get the aggregation of the
    Jacobian ``[k, n]`` of the ``k`` losses with respect to their ``n`` entries; each
    task-specific parameter gets the gradient of the losses of the tasks that list it (by
    default, of the tasks whose loss reaches it). Both are added to ``.grad``. Parameters that
    are listed but not reached get zeros (zero columns of the Jacobian, for shared ones).

    Args:
        losses: the ``k`` task losses: a sequence of distinct scalars, or (unlike TorchJD) one
            tensor, each of whose elements is a task.
        features: the shared representation (a tensor or several distinct ones) that the heads
            take as input.
        aggregator: maps the shared Jacobian ``[k, n]`` to the update ``[n]``.
        tasks_params: for each task, its own parameters (repeats count once). Default: the
            leaves that its loss reaches without going through ``features``.
        shared_params: the parameters upstream of ``features`` (repeats count once); none in
            common with ``tasks_params``. Default: every leaf that requires grad and that
            ``features`` depend on. Empty: only the heads get gradients.
        retain_graph: keep the graph for another backward pass; ``False`` frees it.
        parallel_chunk_size: rows per batched backward pass (see :func:`backward`).

    Raises:
        ValueError: empty or repeated losses or features, a non-scalar entry of ``losses``, a
            parameter both shared and task-specific, parameters that do not require grad or
            (non-leaf ones) did not call ``retain_grad()`` — before any ``.grad`` changes.

    Note:
        The ``.grad`` of the losses and features is left as it was; shared and task
        parameters that called ``retain_grad()`` get exactly their update or gradient. For
        other tensors in the graph that called ``retain_grad()``, see :func:`backward`.
    """
    check_chunk_size(parallel_chunk_size)
    tasks = task_losses(losses)
    features = check_features(features)
    check_distinct(features, "features")
    losses = as_losses(losses)
    shared = check_inputs(
        reached_leaves(features) if shared_params is None else shared_params, "shared_params"
    )
    heads, listed = task_params(tasks_params, tasks, losses, features)
    check_no_overlap(shared, heads, tasks_given=tasks_params is not None)
    if not shared and not heads:
        return
    with no_autocast(losses.device.type):  # as in backward
        with kept_grads([*(tasks or [losses]), *features, *shared, *heads]):
            blocks, used, head_grads = compute_mtl_jacobian(
                losses,
                features,
                shared,
                heads,
                retain_graph,
                parallel_chunk_size,
                tasks,
                listed=listed,
                zeros=True,
                keep_for_fallback=False,
            )
        if used:
            accumulate(aggregator(flatten_rows(blocks)), used)
        for param, grad in head_grads:
            add_grad(param, grad)


def compute_mtl_jacobian(
    losses: Tensor,
    features: Sequence[Tensor],
    shared: Sequence[Tensor],
    heads: Sequence[Tensor],
    retain_graph: bool,
    chunk_size: int | None,
    tasks: Sequence[Tensor] | None = None,
    *,
    listed: Sequence[frozenset[int]] | None = None,
    zeros: bool = False,
    keep_for_fallback: bool = True,
) -> tuple[list[Tensor], list[Tensor], list[tuple[Tensor, Tensor]]]:
    """The shared Jacobian, the shared inputs it covers, and the heads' gradients.

    The Jacobian is one block ``[k, p.numel()]`` per covered shared parameter ``p``. A head
    parameter gets the gradient of the sum of the losses, or, given ``listed`` (for each head,
    the tasks that list it), of the listed tasks' losses. Shared parameters and heads that the
    losses do not reach are left out, or get zeros with ``zeros`` (which also accepts losses
    that reach no feature). ``keep_for_fallback``: see :func:`jdopt._rows.jacobian_rows`.

    When each task reaches ``features`` through graph nodes of its own (separate heads) and the
    shared parameters reach the losses only through ``features``, the heads run once, in one
    ordinary backward pass (:mod:`._heads`), and only the trunk runs batched over the ``k``
    rows. Otherwise one batched pass runs everything, heads included, for every row: ``k²``
    head passes. Tasks are told apart when ``losses`` is a ``torch.stack`` of scalars or when
    ``tasks`` (the tensors that ``losses`` concatenates, given as a list) are scalars.
    """
    roots = task_roots(losses, tasks)
    split = None if roots is None else split_at_features(roots, features, shared, heads=heads)
    if split is not None:
        return two_stage(
            losses,
            split,
            features,
            shared,
            heads,
            retain_graph,
            chunk_size,
            listed=listed,
            zeros=zeros,
            keep_for_fallback=keep_for_fallback,
        )
    inputs = [*features, *shared, *heads]
    rows = jacobian_rows(
        [losses],
        inputs,
        [identity_rows(losses)],
        retain_graph=retain_graph,
        chunk_size=chunk_size,
        keep_for_fallback=keep_for_fallback,
    )
    if not zeros and all(row is None for row in rows[: len(features)]):
        raise ValueError(NO_FEATURES)
    shared_rows = rows[len(features) : len(features) + len(shared)]
    head_grads = summed_rows(rows[len(features) + len(shared) :], listed)
    m = losses.numel() if zeros else None
    return *shared_blocks(shared, shared_rows, m), with_grads(heads, head_grads, zeros)
