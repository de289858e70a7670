from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from torch import Tensor

from .._losses import as_losses, check_chunk_size, check_inputs
from ._accumulate import accumulate, add_grad, flatten_rows
from ._graph import reached_leaves
from ._jacobian import identity_rows, jacobian_rows


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
    ``features``. The heads' parameters get the ordinary gradient of their own loss; the
    shared parameters (upstream of ``features``) get the aggregation of the Jacobian of all the
    losses, obtained by back-propagating each task's gradient at ``features`` through the trunk
    (a batched pass), never through the heads twice.

    Args:
        losses: ``[k]`` task losses (a tensor or a sequence of scalars).
        features: the shared representation (a tensor or several) the heads take as input.
        aggregator: maps the shared Jacobian ``[k, n]`` to the update ``[n]``.
        tasks_params: for each task, its own parameters. Default: the leaves each loss
            reaches without going through ``features``.
        shared_params: the parameters upstream of ``features``. Default: every leaf that
            requires grad and that ``features`` depend on.
        retain_graph: keep the graph for another backward pass.
        parallel_chunk_size: rows per batched backward pass (see :func:`backward`).
    """
    losses = as_losses(losses)
    features = check_features(features)
    check_chunk_size(parallel_chunk_size)
    shared = check_inputs(
        reached_leaves(features) if shared_params is None else shared_params, "shared_params"
    )
    heads = _tasks_params(losses, features, tasks_params)
    jacobian, used, head_grads = compute_mtl_jacobian(
        losses, features, shared, heads, retain_graph, parallel_chunk_size
    )
    accumulate(aggregator(jacobian), used)
    for param, grad in head_grads:
        add_grad(param, grad)


def compute_mtl_jacobian(
    losses: Tensor,
    features: Sequence[Tensor],
    shared: Sequence[Tensor],
    heads: Sequence[Sequence[Tensor]],
    retain_graph: bool,
    chunk_size: int | None,
) -> tuple[Tensor, list[Tensor], list[tuple[Tensor, Tensor]]]:
    """Returns the shared Jacobian ``[k, n]``, the shared inputs it covers, and head gradients.

    Head parameter ``θ`` of task ``i`` gets ``∂losses[i]/∂θ`` (row ``i`` of its Jacobian).
    """
    flat = losses.reshape(-1)
    head_params = list({id(p): p for params in heads for p in params}.values())
    rows = jacobian_rows(
        [flat],
        [*features, *head_params],
        [identity_rows(flat)],
        retain_graph=True,
        chunk_size=chunk_size,
    )
    feature_rows = [
        row if row is not None else f.new_zeros(len(flat), *f.shape)
        for f, row in zip(features, rows, strict=False)
    ]
    if all(row is None for row in rows[: len(features)]):
        raise ValueError("The losses do not depend on `features`. Pass the trunk's output.")
    head_rows = dict(zip(map(id, head_params), rows[len(features) :], strict=True))
    head_grads = [
        (p, head_rows[id(p)][i])
        for i, params in enumerate(heads)
        for p in params
        if head_rows[id(p)] is not None
    ]
    shared_rows = jacobian_rows(
        features, shared, feature_rows, retain_graph=retain_graph, chunk_size=chunk_size
    )
    used = [p for p, row in zip(shared, shared_rows, strict=True) if row is not None]
    if not used:
        raise ValueError("`features` do not depend on any shared parameter.")
    return flatten_rows([row for row in shared_rows if row is not None]), used, head_grads


def check_features(features: object) -> list[Tensor]:
    features = [features] if isinstance(features, Tensor) else list(features)  # type: ignore[arg-type]
    if not features or not all(isinstance(f, Tensor) for f in features):
        raise TypeError("`features` should be a tensor or a non-empty sequence of tensors.")
    for f in features:
        if not f.requires_grad:
            raise ValueError(
                "`features` should be part of the graph (require grad): pass the output of the "
                f"shared trunk, not a detached tensor. Found a tensor of shape {tuple(f.shape)} "
                "that does not require grad."
            )
    return features


def _tasks_params(
    losses: Tensor, features: Sequence[Tensor], tasks_params: Sequence[Iterable[Tensor]] | None
) -> list[list[Tensor]]:
    flat = losses.reshape(-1)
    if tasks_params is None:
        return [reached_leaves([loss], stop_at=features) for loss in flat]
    heads = [list(params) for params in tasks_params]
    if len(heads) != len(flat):
        raise ValueError(
            f"`tasks_params` should have one entry per task: {len(flat)} losses, "
            f"{len(heads)} entries."
        )
    return heads
