"""Walks the autograd graph to find the tensors that gradients would accumulate into."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor


def reached_leaves(roots: Sequence[Tensor], *, stop_at: Iterable[Tensor] = ()) -> list[Tensor]:
    """Returns the leaves requiring grad that ``roots`` depend on, in discovery order.

    Args:
        roots: tensors whose graph is walked.
        stop_at: tensors whose own subgraph is not entered (e.g. the shared features, to find
            the task-specific parameters of multi-task losses).
    """
    blocked = {t.grad_fn for t in stop_at if t.grad_fn is not None}
    blocked_leaves = {id(t) for t in stop_at if t.grad_fn is None}
    leaves: dict[int, Tensor] = {}
    seen: set[object] = set()
    stack = [t.grad_fn for t in reversed(roots) if t.grad_fn is not None]
    stack += [t for t in roots if t.grad_fn is None and t.requires_grad]
    while stack:
        node = stack.pop()
        if isinstance(node, Tensor):
            if id(node) not in blocked_leaves:
                leaves.setdefault(id(node), node)
            continue
        if node in seen or node in blocked:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) not in blocked_leaves:
            leaves.setdefault(id(variable), variable)
        stack.extend(next_node for next_node, _ in reversed(node.next_functions) if next_node)
    return list(leaves.values())
