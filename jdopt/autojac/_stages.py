"""The two stages of a multi-task Jacobian: each task's gradient at the shared features, then
the trunk's rows from those gradients (see :mod:`._heads` for the first stage's graph work)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._rows import identity_rows, jacobian_rows
from ._heads import Split, gradients_at_features, separable, split_at_features, task_roots

NO_FEATURES = (
    "The losses do not depend on `features`. Pass the shared trunk's output that the task "
    "heads take as input."
)


def two_stage(
    losses: Tensor,
    split: Split,
    features: Sequence[Tensor],
    shared: Sequence[Tensor],
    heads: Sequence[Tensor],
    retain_graph: bool,
    chunk_size: int | None,
    *,
    listed: Sequence[frozenset[int]] | None = None,
    zeros: bool = False,
    keep_for_fallback: bool = True,
) -> tuple[list[Tensor], list[Tensor], list[tuple[Tensor, Tensor]]]:
    """:func:`._mtl_backward.compute_mtl_jacobian` in two stages: one backward pass through the
    heads gives each task's gradient at the features, then one batched pass takes all ``k``
    rows through the trunk.

    Each head parameter is reached by one task at most (its owner): its gradient is the
    owner's, kept when the owner lists it (``listed``: for each head, the tasks that list it).
    """
    # Nested features: the first pass goes through the trunk's graph, which the second needs.
    keep = retain_graph or split.nested
    captured, grads = gradients_at_features(losses, split.edges, features, heads, retain_graph=keep)
    reached, cotangents = _stacked(captured, features, strict=not zeros)
    shared_rows: list[Tensor | None] = [None] * len(shared)
    if reached and shared:
        shared_rows = jacobian_rows(
            reached,
            shared,
            cotangents,
            retain_graph=retain_graph,
            chunk_size=chunk_size,
            keep_for_fallback=keep_for_fallback,
        )
    grads = _own_storage(grads)
    if listed is not None:
        grads = [
            None if split.owners.get(id(head)) not in tasks else grad
            for head, grad, tasks in zip(heads, grads, listed, strict=True)
        ]
    m = losses.numel() if zeros else None
    return *shared_blocks(shared, shared_rows, m), with_grads(heads, grads, zeros)


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
    split = None if roots is None else split_at_features(roots, features, shared)
    if split is not None:
        captured, grads = gradients_at_features(losses, split.edges, features, heads)
        return *_stacked(captured, features), with_grads(heads, _own_storage(grads), False)
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
    head_grads = with_grads(heads, summed_rows(rows[len(features) :]), False)
    return reached, [row for row in feature_rows if row is not None], head_grads


def _stacked(
    captured: list[list[Tensor | None]], features: Sequence[Tensor], *, strict: bool = True
) -> tuple[list[Tensor], list[Tensor]]:
    """The features some task reaches, and their cotangents ``[k, *feature.shape]``; raises
    when there are none if ``strict``."""
    reached = [j for j in range(len(features)) if any(task[j] is not None for task in captured)]
    if not reached and strict:
        raise ValueError(NO_FEATURES)
    cotangents = [
        torch.stack(
            [features[j].new_zeros(features[j].shape) if t[j] is None else t[j] for t in captured]
        )
        for j in reached
    ]
    return [features[j] for j in reached], cotangents


def _own_storage(grads: Sequence[Tensor | None]) -> list[Tensor | None]:
    """The heads' gradients, each in memory of its own.

    autograd may hand one tensor (or an expanded view) to several parameters; the batched pass
    (a sum over rows) gives fresh tensors.
    """
    owned: list[Tensor | None] = []
    storages = set()
    for grad in grads:
        if grad is not None:
            storage = grad.untyped_storage().data_ptr()
            if grad._base is not None or not grad.is_contiguous() or storage in storages:
                grad = grad.clone(memory_format=torch.contiguous_format)
            storages.add(grad.untyped_storage().data_ptr())
        owned.append(grad)
    return owned


def shared_blocks(
    shared: Sequence[Tensor], rows: Sequence[Tensor | None], m: int | None = None
) -> tuple[list[Tensor], list[Tensor]]:
    """The Jacobian's blocks ``[m, p.numel()]`` and the shared parameters they cover: those
    the losses reach, or (given ``m``) every one, with zeros for the others."""
    if m is not None:
        rows = [
            p.new_zeros(m, *p.shape) if r is None else r for p, r in zip(shared, rows, strict=True)
        ]
    used = [p for p, row in zip(shared, rows, strict=True) if row is not None]
    if not used and m is None:
        raise ValueError("`features` do not depend on any shared parameter.")
    return [row.reshape(row.shape[0], -1) for row in rows if row is not None], used


def summed_rows(
    rows: Sequence[Tensor | None], listed: Sequence[frozenset[int]] | None = None
) -> list[Tensor | None]:
    """Each head's gradient: the sum of its rows (of the rows of the tasks that list it)."""
    if listed is None:
        return [None if row is None else row.sum(dim=0) for row in rows]
    return [
        None if row is None else row[sorted(tasks)].sum(dim=0)
        for row, tasks in zip(rows, listed, strict=True)
    ]


def with_grads(
    heads: Sequence[Tensor], grads: Sequence[Tensor | None], zeros: bool
) -> list[tuple[Tensor, Tensor]]:
    """Each head with its gradient; one without gets zeros if ``zeros``, else is left out."""
    return [
        (head, head.new_zeros(head.shape) if grad is None else grad)
        for head, grad in zip(heads, grads, strict=True)
        if grad is not None or zeros
    ]
