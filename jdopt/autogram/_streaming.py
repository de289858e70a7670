"""Output gradients consumed as the backward pass makes them, one layer at a time.

``torch.autograd.grad`` holds the gradient of every requested tensor until it returns: asking
for every hooked layer's output holds them all at once, a second copy of the activations. A
rule that can finish its work from one call's output gradient (a norm layer's per-sample
gradients, a convolution whose per-sample gradients are small) instead reads it from a tensor
hook while the pass runs, and lets it go. The hook only fires if the pass runs through the
layer's node, so such a layer's output is left out of the requested tensors only when another
requested one lies below it in the graph. The hook is on the node that made the output: it sees
the gradient of the output as the module made it, even after an in-place operation.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torch.autograd.graph import GradientEdge, Node, get_gradient_edge
from torch.utils.hooks import RemovableHandle

from ._layout import Layout
from ._rules import Rule, Use


def node_of(target: Tensor | GradientEdge) -> Node | None:
    return target.node if isinstance(target, GradientEdge) else target.grad_fn


def as_edge(target: Tensor | GradientEdge) -> GradientEdge:
    return target if isinstance(target, GradientEdge) else get_gradient_edge(target)


def covered(targets: Sequence[Tensor | GradientEdge]) -> list[bool]:
    """For each target, whether another target's node is reachable below its own (so a
    backward pass to that other target runs through this one's node)."""
    nodes = {node_of(t) for t in targets} - {None}
    below: dict[Node, bool] = {}  # node ↦ whether a target's node is strictly below it
    for start in nodes:
        stack: list[tuple[Node, bool]] = [(start, False)]
        while stack:
            node, expanded = stack.pop()
            if node in below:
                continue
            children = [child for child, _ in node.next_functions if child is not None]
            if not expanded:
                stack.append((node, True))
                stack.extend((child, False) for child in children if child not in below)
                continue
            below[node] = any(child in nodes or below.get(child, False) for child in children)
    return [below.get(node_of(t), False) for t in targets]


def consume_hook(
    rule: Rule, use: Use, layout: Layout, fired: set[int], parts: dict[int, Tensor]
) -> RemovableHandle:
    """A pre-hook on the node that made the call's output, which hands the output's gradient to
    the rule (``rule.consume``) as the pass makes it. Adds ``id(use)`` to ``fired`` and the
    rule's part of the Gramian, if it made one, to ``parts`` (``id(rule) ↦ part``)."""
    edge = as_edge(use.targets()[0])

    def hook(grad_outputs: tuple) -> None:
        grad = grad_outputs[edge.output_nr]
        # Once per pass: a rule that differentiates its own graph runs this node again.
        if grad is None or id(use) in fired:
            return
        use.grads = [as_output(grad.unsqueeze(0), use.outputs[0])]
        fired.add(id(use))
        found = rule.consume(use, rule.names, layout)
        if found is not None:
            parts[id(rule)] = found[0]
            if found[1]:
                use.grads = [None]

    return edge.node.register_prehook(hook)


def as_output(grad: Tensor, output: Tensor) -> Tensor:
    """A gradient ``[S, ...]`` read at an output's edge, in the output's shape ``[S, *shape]``
    (an edge of a view's base has the base's shape)."""
    return grad.reshape(grad.shape[0], *output.shape)
