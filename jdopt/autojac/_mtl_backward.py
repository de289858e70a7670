from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from torch import Tensor

from .._losses import as_losses, check_chunk_size, check_inputs
from ._accumulate import accumulate, add_grad, flatten_rows
from ._graph import reached_leaves
from ._heads import split_at_features, task_roots
from ._jacobian import identity_rows, jacobian_rows
from ._stages import NO_FEATURES, shared_blocks, summed_rows, two_stage


def mtl_backward(
    losses: Tensor | Sequence[Tensor],
    features: Tensor | Sequence[Tensor],
    aggregator: Callable[[Tensor], Tensor],
    *,
    tasks_params: Sequence[Iterable[Tensor]] | None = None,
    shared_params: Iterable[Tensor] | None = None,
    retain_graph: bool = False,
    parallel_chunk_size: int | None = None,
) -> None:
    """Multi-task ``backward``: Jacobian descent on the shared trunk, gradients on the heads.

    Each task ``i`` has a loss ``losses[i]`` computed by its own head from the shared
    ``features``. The shared parameters (upstream of ``features``) get the aggregation of the
    Jacobian of the losses; every task-specific parameter gets its ordinary gradient (the
    gradient of its own task's loss). One batched backward pass computes both.

    Args:
        losses: ``[k]`` task losses (a tensor or a sequence of scalars).
        features: the shared representation (a tensor or several) the heads take as input.
        aggregator: maps the shared Jacobian ``[k, n]`` to the update ``[n]``.
        tasks_params: for each task, its own parameters. Default: the leaves the losses
            reach without going through ``features``.
        shared_params: the parameters upstream of ``features``. Default: every leaf that
            requires grad and that ``features`` depend on.
        retain_graph: keep the graph for another backward pass.
        parallel_chunk_size: rows per batched backward pass (see :func:`backward`).
    """
    tasks = list(losses) if isinstance(losses, Sequence) else None
    losses = as_losses(losses)
    features = check_features(features)
    check_chunk_size(parallel_chunk_size)
    shared = check_inputs(
        reached_leaves(features) if shared_params is None else shared_params, "shared_params"
    )
    if tasks_params is None:
        heads = reached_leaves([losses], stop_at=features)
    else:
        heads = _flatten_tasks_params(tasks_params, losses)
    blocks, used, head_grads = compute_mtl_jacobian(
        losses, features, shared, heads, retain_graph, parallel_chunk_size, tasks
    )
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
) -> tuple[list[Tensor], list[Tensor], list[tuple[Tensor, Tensor]]]:
    """The shared Jacobian, the shared inputs it covers, and the heads' gradients.

    The Jacobian is one block ``[k, p.numel()]`` per covered shared parameter ``p``.
    A head parameter reached by the losses gets the gradient of ``Σᵢ losses[i]``, so a
    parameter of task ``i`` only gets ``∂losses[i]/∂θ``; unreached ones are left out.

    When each task reaches ``features`` through graph nodes of its own (separate heads) and the
    shared parameters reach the losses only through ``features``, the heads run once, in one
    ordinary backward pass (:mod:`._heads`), and only the trunk runs batched over the ``k``
    rows. Otherwise one batched pass runs everything, heads included, for every row: ``k²``
    head passes. Tasks are told apart when ``losses`` is a ``torch.stack`` of scalars or when
    ``tasks`` (the tensors that ``losses`` concatenates, given as a list) are scalars.
    """
    roots = task_roots(losses, tasks)
    edges = None if roots is None else split_at_features(roots, features, shared)
    if edges is not None:
        return two_stage(losses, edges, features, shared, heads, retain_graph, chunk_size)
    inputs = [*features, *shared, *heads]
    rows = jacobian_rows(
        [losses],
        inputs,
        [identity_rows(losses)],
        retain_graph=retain_graph,
        chunk_size=chunk_size,
    )
    if all(row is None for row in rows[: len(features)]):
        raise ValueError(NO_FEATURES)
    shared_rows = rows[len(features) : len(features) + len(shared)]
    head_grads = summed_rows(heads, rows[len(features) + len(shared) :])
    return *shared_blocks(shared, shared_rows), head_grads


def check_features(features: object) -> list[Tensor]:
    """Returns ``features`` as a list of tensors that require grad, or raises."""
    features = [features] if isinstance(features, Tensor) else features
    if (
        not isinstance(features, Sequence)
        or not features
        or not all(isinstance(f, Tensor) for f in features)
    ):
        raise TypeError(
            "`features` should be a tensor or a non-empty sequence of tensors: the output of "
            f"the shared trunk. Found {type(features).__name__}."
        )
    for f in features:
        if not f.requires_grad:
            raise ValueError(
                "`features` should be part of the graph (require grad): pass the output of the "
                f"shared trunk, not a detached tensor. Found a tensor of shape {tuple(f.shape)} "
                "that does not require grad."
            )
    return list(features)


def _flatten_tasks_params(tasks_params: Sequence[Iterable[Tensor]], losses: Tensor) -> list[Tensor]:
    heads = [list(params) for params in tasks_params]
    if len(heads) != losses.numel():
        raise ValueError(
            f"`tasks_params` should have one entry per task: {losses.numel()} losses, "
            f"{len(heads)} entries."
        )
    return list({id(p): p for params in heads for p in params}.values())
