"""Each task's gradient at the shared features, from one ordinary backward pass.

A batched backward pass over the ``k`` rows of a multi-task Jacobian runs every task head for
every row: ``k²`` head passes, ``k − 1`` of them on zeros. When each task reaches the features
through nodes of its own (separate heads), one plain backward pass of ``Σᵢ losses[i]`` already
carries ``∂losses[i]/∂features`` through task ``i``'s nodes, before the engine sums the tasks at
the features: hooks on the nodes that consume the features record it, per task.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.graph import Node

# (consumer node, position of the edge among its next_functions, index of the feature)
_Edge = tuple[Node, int, int]


class Split(NamedTuple):
    """How separate tasks reach the features."""

    edges: list[list[_Edge]]  # per task: the edges through which it reaches the features
    owners: dict[int, int]  # id of each leaf reached above the features ↦ the task reaching it
    nested: bool  # a feature is computed from another one (see _nested)


def task_roots(losses: Tensor, tasks: Sequence[Tensor] | None) -> list[Node | None] | None:
    """The graph node of each scalar objective, or ``None`` when they cannot be told apart.

    Objectives are known from ``tasks`` (the tensors given as a list, each a scalar), or from a
    ``torch.stack`` of scalars.
    """
    if tasks is not None:
        # A task that is a leaf (a parameter given as a loss) has no node to own it.
        if any(t.numel() != 1 or (t.grad_fn is None and t.requires_grad) for t in tasks):
            return None
        return [t.grad_fn for t in tasks]
    node = losses.grad_fn
    if losses.ndim == 1 and type(node).__name__ == "StackBackward0":
        roots = [child for child, _ in node.next_functions]
        return roots if len(roots) == losses.numel() else None
    return None


def split_at_features(
    roots: Sequence[Node | None],
    features: Sequence[Tensor],
    shared: Sequence[Tensor],
    trunk: set[Node] | None = None,
    *,
    heads: Sequence[Tensor] = (),
) -> Split | None:
    """How each task reaches the features, or ``None`` when a graph node is reached by two
    tasks, a shared parameter is reached around the features, or one of ``heads`` (the
    task-specific parameters) below them.

    ``trunk``: every node at or below a feature, when the caller has it already.
    """
    targets = {(f.grad_fn, f.output_nr): j for j, f in enumerate(features)}
    if any(node is None for node, _ in targets):
        return None  # a leaf feature: no node to stop at
    # The trunk: every node at or below a feature (shared parameters' accumulators included).
    # A task that enters it otherwise than through a feature edge mixes with the other tasks
    # there (nested features, a shared parameter used around the features, ...).
    if trunk is None:
        trunk = _below({node for node, _ in targets})
    head_ids = {id(p) for p in heads}
    if head_ids and any(id(getattr(node, "variable", None)) in head_ids for node in trunk):
        return None  # a head's gradient would mix the tasks, through the features
    shared_ids = {id(p) for p in shared}
    owner: dict[Node, int] = {}
    split = Split([[] for _ in roots], {}, _nested(targets, trunk))
    for i, root in enumerate(roots):
        stack = [] if root is None else [root]
        while stack:
            node = stack.pop()
            if node in trunk or owner.setdefault(node, i) != i:
                return None
            variable = getattr(node, "variable", None)
            if variable is not None:
                if id(variable) in shared_ids:
                    return None  # a shared parameter used around the features
                split.owners[id(variable)] = i
            for position, (child, nr) in enumerate(node.next_functions):
                if child is None:
                    continue
                feature = targets.get((child, nr))
                if feature is not None:
                    split.edges[i].append((node, position, feature))
                elif child not in owner:  # not expanded (nor queued) yet
                    owner[child] = i
                    stack.append(child)
                elif owner[child] != i:
                    return None
    return split


def _below(nodes: set[Node]) -> set[Node]:
    """``nodes`` and every node they lead to."""
    seen, stack = set(nodes), list(nodes)
    while stack:
        for child, _ in stack.pop().next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def separable(losses: Tensor, features: Sequence[Tensor], shared: Sequence[Tensor]) -> bool:
    """Whether the losses' gradients at the features are all they pass on to the trunk.

    True when the features are distinct, none is computed from another, and the losses reach
    the trunk only through the features: then the total gradient at each feature is exactly
    what flows from it into the trunk.
    """
    targets = {(f.grad_fn, f.output_nr) for f in features}
    nodes = {node for node, _ in targets}
    if len(targets) < len(features) or None in nodes or losses.grad_fn is None:
        return False
    trunk = _below(nodes)
    if _nested(targets, trunk):
        return False
    return split_at_features([losses.grad_fn], features, shared, trunk) is not None


def _nested(targets: Container[tuple[Node, int]], trunk: set[Node]) -> bool:
    """Whether a feature (its edge among ``targets``) is computed from another one, i.e. is the
    child of a node of the ``trunk`` (deep supervision, multi-scale heads): then a backward pass
    into the outer feature goes through the inner one's graph."""
    return any(
        (child, nr) in targets
        for node in trunk
        for child, nr in node.next_functions
        if child is not None
    )


def gradients_at_features(
    losses: Tensor,
    edges: list[list[_Edge]],
    features: Sequence[Tensor],
    heads: Sequence[Tensor],
    *,
    retain_graph: bool = True,
) -> tuple[list[list[Tensor | None]], tuple[Tensor | None, ...]]:
    """One backward pass of ``losses.sum()`` into ``features`` and ``heads``.

    Returns, for each task and feature, the task's gradient at the feature (``None`` where it
    does not reach it), and the heads' gradients. The pass stops at the features: the trunk's
    graph is kept even without ``retain_graph`` (which keeps the heads' part).
    """
    captured: list[list[Tensor | None]] = [[None] * len(features) for _ in edges]
    handles = []
    for task, task_edges in enumerate(edges):
        by_node: dict[Node, list[tuple[int, int]]] = {}
        for node, position, feature in task_edges:
            by_node.setdefault(node, []).append((position, feature))
        for node, positions in by_node.items():
            handles.append(node.register_hook(_recorder(captured[task], positions)))
    try:
        grads = torch.autograd.grad(
            [losses],
            [*features, *heads],
            [torch.ones_like(losses)],
            retain_graph=retain_graph,
            allow_unused=True,
        )
    finally:
        for handle in handles:
            handle.remove()
    return captured, grads[len(features) :]


def _recorder(slots: list[Tensor | None], positions: list[tuple[int, int]]):
    def hook(grad_inputs: tuple[Tensor | None, ...], _: tuple[Tensor | None, ...]) -> None:
        for position, feature in positions:
            grad = grad_inputs[position]
            if grad is not None:
                previous = slots[feature]
                slots[feature] = grad if previous is None else previous + grad

    return hook
