"""Walks the autograd graph to find the tensors that gradients would accumulate into."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from torch import Tensor


def reached_leaves(roots: Sequence[Tensor], *, stop_at: Iterable[Tensor] = ()) -> list[Tensor]:
    """Returns the leaves requiring grad that ``roots`` depend on, in breadth-first order.

    The order is TorchJD's: the leaves closest to the roots first (for a sequential model, the
    last layer's parameters first), so a Jacobian's columns come in the same order.

    Args:
        roots: tensors whose graph is walked (a root that is itself a leaf comes first).
        stop_at: tensors whose own subgraph is not entered (e.g. the shared features, to find
            the task-specific parameters of multi-task losses).
    """
    blocked_leaves = {id(t) for t in stop_at if t.grad_fn is None}
    seen: set[object] = {t.grad_fn for t in stop_at if t.grad_fn is not None}
    leaves = {
        id(t): t
        for t in roots
        if t.grad_fn is None and t.requires_grad and id(t) not in blocked_leaves
    }
    starts = dict.fromkeys(t.grad_fn for t in roots if t.grad_fn is not None)
    queue = deque(node for node in starts if node not in seen)
    seen.update(queue)
    while queue:
        node = queue.popleft()
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) not in blocked_leaves:
            leaves.setdefault(id(variable), variable)
        for child, _ in node.next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                queue.append(child)
    return list(leaves.values())
