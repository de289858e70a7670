"""The two stages of a multi-task Jacobian: each task's gradient at the shared features, then
the trunk's rows from those gradients (see :mod:`._heads` for the first stage's graph work)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._heads import gradients_at_features, separable, split_at_features, task_roots
from ._jacobian import identity_rows, jacobian_rows

NO_FEATURES = (
    "The losses do not depend on `features`. Pass the shared trunk's output that the task "
    "heads take as input."
)


def two_stage(
    losses: Tensor,
    edges: list,
    features: Sequence[Tensor],
    shared: Sequence[Tensor],
    heads: Sequence[Tensor],
    retain_graph: bool,
    chunk_size: int | None,
) -> tuple[list[Tensor], list[Tensor], list[tuple[Tensor, Tensor]]]:
    """:func:`._mtl_backward.compute_mtl_jacobian` in two stages: one backward pass through the
    heads gives each task's gradient at the features, then one batched pass takes all ``k``
    rows through the trunk."""
    captured, head_grads = gradients_at_features(losses, edges, features, heads)
    reached, cotangents = _stacked(captured, features)
    shared_rows = jacobian_rows(
        reached, shared, cotangents, retain_graph=retain_graph, chunk_size=chunk_size
    )
    return *shared_blocks(shared, shared_rows), _own_storage(heads, head_grads)


def feature_cotangents(
    losses: Tensor,
    features: Sequence[Tensor],
    shared: Sequence[Tensor],
    heads: Sequence[Tensor],
    chunk_size: int | None,
    tasks: Sequence[Tensor] | None = None,
) -> tuple[list[Tensor], list[Tensor], list[tuple[Tensor, Tensor]]] | None:
    """Each objective's gradient at the features, for a trunk handled by the caller.

    Returns the features that the losses reach, their cotangents ``[k, *feature.shape]`` (row
    ``i``: what ``losses[i]`` passes to the trunk through the feature), and the heads'
    gradients; or ``None`` when some shared parameter also reaches the losses around the
    features (then the trunk's Jacobian is not a function of these cotangents), or when the
    batched pass that gives them cannot tell the features' own contributions apart (nested or
    repeated features). Keeps the graph.
    """
    roots = task_roots(losses, tasks)
    edges = None if roots is None else split_at_features(roots, features, shared)
    if edges is not None:
        captured, head_grads = gradients_at_features(losses, edges, features, heads)
        return *_stacked(captured, features), _own_storage(heads, head_grads)
    if not separable(losses, features, shared):
        return None
    rows = jacobian_rows(
        [losses],
        [*features, *heads],
        [identity_rows(losses)],
        retain_graph=True,
        chunk_size=chunk_size,
    )
    feature_rows = rows[: len(features)]
    reached = [f for f, row in zip(features, feature_rows, strict=True) if row is not None]
    if not reached:
        raise ValueError(NO_FEATURES)
    head_grads = summed_rows(heads, rows[len(features) :])
    return reached, [row for row in feature_rows if row is not None], head_grads


def _stacked(
    captured: list[list[Tensor | None]], features: Sequence[Tensor]
) -> tuple[list[Tensor], list[Tensor]]:
    """The features some task reaches, and their cotangents ``[k, *feature.shape]``."""
    reached = [j for j in range(len(features)) if any(task[j] is not None for task in captured)]
    if not reached:
        raise ValueError(NO_FEATURES)
    cotangents = [
        torch.stack(
            [features[j].new_zeros(features[j].shape) if t[j] is None else t[j] for t in captured]
        )
        for j in reached
    ]
    return [features[j] for j in reached], cotangents


def _own_storage(
    heads: Sequence[Tensor], head_grads: Sequence[Tensor | None]
) -> list[tuple[Tensor, Tensor]]:
    """The heads' gradients, each in memory of its own.

    autograd may hand one tensor (or an expanded view) to several parameters; the batched pass
    (a sum over rows) gives fresh tensors.
    """
    grads, storages = [], set()
    for head, grad in zip(heads, head_grads, strict=True):
        if grad is None:
            continue
        storage = grad.untyped_storage().data_ptr()
        if grad._base is not None or not grad.is_contiguous() or storage in storages:
            grad = grad.clone(memory_format=torch.contiguous_format)
        storages.add(grad.untyped_storage().data_ptr())
        grads.append((head, grad))
    return grads


def shared_blocks(
    shared: Sequence[Tensor], rows: Sequence[Tensor | None]
) -> tuple[list[Tensor], list[Tensor]]:
    used = [p for p, row in zip(shared, rows, strict=True) if row is not None]
    if not used:
        raise ValueError("`features` do not depend on any shared parameter.")
    return [row.reshape(row.shape[0], -1) for row in rows if row is not None], used


def summed_rows(
    heads: Sequence[Tensor], rows: Sequence[Tensor | None]
) -> list[tuple[Tensor, Tensor]]:
    """Each head parameter reached by the losses with its gradient: the sum of its rows."""
    return [(h, row.sum(dim=0)) for h, row in zip(heads, rows, strict=True) if row is not None]
