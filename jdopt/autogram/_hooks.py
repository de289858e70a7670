"""Which modules the engine hooks, and what a hook records."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.utils._pytree import tree_flatten

from ._rules import Use, covers_submodules


def parameter_owners(modules: Sequence[nn.Module]) -> list[tuple[nn.Module, list[str]]]:
    """The modules to hook, each with the names of the trainable parameters its calls use.

    A module reachable along several paths appears once; a parameter registered twice in one
    module (an alias) is named once.
    """
    owners: list[tuple[nn.Module, list[str]]] = []
    seen: set[int] = set()
    stack = list(reversed(modules))
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        if covers_submodules(module):  # its rule covers its submodules' parameters too
            named = module.named_parameters()
        else:
            named = ((n, p) for n, p in module._parameters.items() if p is not None)
            stack.extend(reversed(list(module.children())))
        names = _unique_trainable(named)
        if names:
            owners.append((module, names))
    return owners


def _unique_trainable(named) -> list[str]:
    names, ids = [], set()
    for name, param in named:
        if param.requires_grad and id(param) not in ids:
            ids.add(id(param))
            names.append(name)
    return names


def make_hook(uses: list[Use]) -> Callable:
    """A forward hook (``with_kwargs=True``) that records calls made with grad enabled.

    Under ``torch.compile`` the hook runs eagerly: the compiled region ends before it, so that
    it records real tensors, and the module's outputs, as outputs of that region, get an edge
    of their own in the autograd graph, to which the engine differentiates (inside a region,
    intermediate tensors have none). This needs ``torch._dynamo``, which is imported only if
    the process already uses ``torch.compile`` (importing it takes a second).
    """

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        if not torch.is_grad_enabled():
            return
        # One tensor in and out is the usual case: no tree_flatten then (tens of µs a call).
        flat = [output] if isinstance(output, Tensor) else tree_flatten(output)[0]
        outputs = [t for t in flat if isinstance(t, Tensor) and t.requires_grad]
        if not outputs:
            return
        if not kwargs and all(isinstance(t, Tensor) for t in args):
            inputs = list(args)
        else:
            inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
        # Detached: the Gramian must not hold on to (or extend) the forward graph.
        detached = tuple(t.detach() for t in inputs)
        versions = [t._version for t in (*inputs, *outputs)]
        edges = [_edge(t) for t in outputs]
        sources = [t.grad_fn for t in inputs if t.grad_fn is not None]
        uses.append(Use(detached, outputs, versions, edges=edges, sources=sources))

    return torch.compiler.disable(hook) if "torch._dynamo" in sys.modules else hook


def _edge(output: Tensor) -> GradientEdge | None:
    """Where the gradient of ``output`` as the module made it is read, should the output be
    modified in place later.

    An in-place operation gives the tensor a new ``grad_fn`` but keeps the node that made it in
    the graph, below the operation's: that node's edge still receives exactly the gradient of
    the unmodified output. A view is different: autograd rebases an in-place operation on a view
    onto the view's base, bypassing the view's own node, so a view is read at its base's edge
    when it is a reshape of the whole base (``nn.Linear`` on inputs with several leading
    dimensions makes one: its base is the module's own intermediate, used by nothing but the
    view, so the two gradients are the same numbers), and nowhere otherwise (the call then goes
    to the fallback).
    """
    if not output._is_view():
        return get_gradient_edge(output)
    base = output._base
    if base.grad_fn is not None and _reshapes(output, base):
        return get_gradient_edge(base)
    return None


def _reshapes(view: Tensor, base: Tensor) -> bool:
    """Whether ``view`` holds exactly ``base``'s elements in the same order."""
    return (
        view.numel() == base.numel()
        and view.storage_offset() == base.storage_offset()
        and view.is_contiguous()
        and base.is_contiguous()
    )


def readable(use: Use, needs_graph: bool) -> bool:
    """Whether a closed-form rule can use a call, given the in-place operations since.

    The rules compute with the inputs as the module saw them (a modified input is not), and
    with the gradients of the outputs as the module made them: readable at their edges, unless
    the rule also reads the outputs themselves or differentiates its graph from them
    (``needs_graph``). Unreadable calls go to the exact fallback, whose backward pass raises
    autograd's own error where the module saved what was modified.
    """
    if use.inputs_modified():
        return False
    modified = use.outputs_modified()
    if needs_graph:
        return not any(modified)
    return all(e is not None for e, m in zip(use.edges, modified, strict=True) if m)
