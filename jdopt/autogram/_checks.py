"""Set-ups the engine refuses, each with the reason and the fix."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._rules import Rule, Use

_CROSS_SAMPLE = (nn.modules.batchnorm._BatchNorm,)


def check_modules(modules: Sequence[nn.Module], batch_dim: int | None) -> None:
    if not modules:
        raise ValueError("Engine needs at least one module: Engine(model, batch_dim=0).")
    for module in modules:
        if not isinstance(module, nn.Module):
            raise TypeError(f"Engine takes nn.Module objects. Found {type(module).__name__}.")
    for i, a in enumerate(modules):
        for j, b in enumerate(modules):
            if i < j and a is b:
                raise ValueError(
                    f"The same {type(a).__name__} was given to Engine twice. Give it once."
                )
            if i != j and a is not b and any(m is b for m in a.modules()):
                raise ValueError(
                    f"The modules given to Engine must not contain each other: "
                    f"{type(b).__name__} is inside {type(a).__name__}. Give only the outer one."
                )
    if batch_dim is not None and (not isinstance(batch_dim, int) or isinstance(batch_dim, bool)):
        raise TypeError(f"`batch_dim` should be an int or None. Found {batch_dim!r}.")
    if batch_dim is None:
        return
    for module in modules:
        for name, sub in module.named_modules():
            if isinstance(sub, _CROSS_SAMPLE):
                raise ValueError(
                    f"{type(sub).__name__} ({name or 'the module itself'}) mixes the samples of "
                    "a batch, so per-sample gradients (batch_dim=0) are not defined. Replace it "
                    "with GroupNorm or LayerNorm, or use batch_dim=None."
                )


def check_untracked_uses(
    roots: Sequence[Tensor], rules: Sequence[Rule], uses: dict[int, list[Use]], fallback: dict
) -> None:
    """Refuses a closed-form parameter that the graph uses more often than the hooked calls do
    (a weight tied to a module outside the engine), which would make its Gramian wrong.

    Every call of a closed-form layer references its parameter from one node of the graph; a
    walk of the graph counts those references.
    """
    calls: dict[int, int] = {}
    names: dict[int, str] = {}
    for rule in rules:
        for name in rule.names:
            key = id(rule.param(name))
            if key not in fallback:
                calls[key] = calls.get(key, 0) + rule.graph_references(uses[id(rule)], name)
                names[key] = f"{name!r} of {type(rule.module).__name__}"
    references = graph_references(roots, set(calls))
    for key, count in references.items():
        if count > calls[key]:
            raise ValueError(
                f"The parameter {names[key]} is used {count} times by the losses but only "
                f"{calls[key]} time(s) by the hooked modules: it is tied to a module outside "
                "the engine, used by a function (e.g. F.linear(h, embedding.weight)), or used "
                "in the loss itself (e.g. a weight penalty). Give the engine every module that "
                "uses it (e.g. Engine(model)) and call tied weights through their module; for a "
                "weight penalty, use the optimizer's weight_decay instead."
            )


def graph_references(roots: Sequence[Tensor], keys: set[int]) -> dict[int, int]:
    """How many times the graph of ``roots`` references each parameter of ``keys`` (ids)."""
    counts: dict[int, int] = {}
    seen: set[object] = set()
    stack = [root.grad_fn for root in roots if root.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for next_node, _ in node.next_functions:
            if next_node is None:
                continue
            variable = getattr(next_node, "variable", None)
            if variable is not None:
                if id(variable) in keys:
                    counts[id(variable)] = counts.get(id(variable), 0) + 1
            else:
                stack.append(next_node)
    return counts


def check_against_backward(
    losses: Tensor, params: Sequence[Tensor], gramian: Tensor, tolerance: float
) -> bool:
    """Refuses a Gramian ``[m, m]`` that an ordinary backward pass contradicts.

    For a fixed random ``z``, ``zᵀGz`` must equal ``‖∇(zᵀ losses)‖²`` over ``params`` (to a
    relative ``tolerance``). Set-ups
    that break the engine's assumptions fail it: per-sample losses that mix the samples of the
    batch (an in-batch contrastive loss, ``h - h.mean(0)`` between hooked layers) or that come
    in another order than the batch, a batch dimension that only happens to have the batch's
    size (positions, learned queries), a module that computes with more than what its hook
    sees. Costs one backward pass; the engine runs it until one Gramian has passed it.

    Returns whether the check could decide: ``False`` when either side is zero or not finite
    (e.g. an overflowing step under a GradScaler).
    """
    generator = torch.Generator(device=losses.device).manual_seed(0)
    z = torch.randn(losses.shape, generator=generator, device=losses.device, dtype=losses.dtype)
    grads = torch.autograd.grad(losses, params, z, retain_graph=True, allow_unused=True)
    expected = sum(float(g.double().square().sum()) for g in grads if g is not None)
    flat = z.reshape(-1).double()
    found = float(flat @ gramian.double() @ flat)
    if not (0 < expected < float("inf") and 0 < found < float("inf")):
        return False
    if abs(found - expected) > tolerance * max(expected, found):
        raise ValueError(
            "The engine's Gramian disagrees with an ordinary backward pass (for a random z, "
            f"zᵀGz = {found:.4g} but ‖∇(zᵀ losses)‖² = {expected:.4g}): the losses break the "
            "engine's assumptions. With batch_dim=0, losses[i] must depend on sample i only, in "
            "the order of the batch, and every hooked layer's input must have the batch on its "
            "first dimension: no in-batch contrastive loss, no reordering, no layer mixing "
            "samples (e.g. h - h.mean(0)), no learned queries or positions of the batch's "
            "size; and no hook that changes a layer's output or a parameter's gradient. Use "
            "batch_dim=None, or JDOptimizer without `model` (the autojac engine)."
        )
    return True


def losses_argument(losses: object, output: object) -> tuple[object, str]:
    """``compute_gramian``'s losses, given as ``losses`` or by TorchJD's name, ``output``, with
    the name it was given by."""
    if losses is not None and output is not None:
        raise TypeError(
            "compute_gramian() got both `losses` and `output`, two names for the same argument. "
            "Give only one: compute_gramian(losses)."
        )
    if losses is None and output is None:
        raise TypeError("compute_gramian() missing its argument: compute_gramian(losses).")
    return (losses, "losses") if output is None else (output, "output")
