"""Which modules the engine hooks, and what a hook records."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from ._rules import Use

# Modules that use their submodules' parameters without calling the submodules.
_OPAQUE = (nn.MultiheadAttention,)


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
        if isinstance(module, _OPAQUE):
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
    """A forward hook (``with_kwargs=True``) that records calls made with grad enabled."""

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
        uses.append(Use(detached, outputs, versions))

    return hook


def check_unmodified(module: nn.Module, use: Use) -> None:
    tensors = [*use.args, *use.outputs]
    for tensor, version in zip(tensors, use.versions, strict=True):
        if tensor._version != version:
            raise RuntimeError(
                f"An input or output of {type(module).__name__} was modified in place after "
                "the forward pass (e.g. by ReLU(inplace=True) or `x += ...`); the engine needs "
                "them as the losses saw them. Use the out-of-place operation (inplace=False)."
            )
