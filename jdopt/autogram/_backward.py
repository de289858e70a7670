"""The engine's backward passes: planned, then run.

:func:`backward_step` runs them for one Gramian, in order. :func:`plan_pass` picks the recorded
calls whose output gradients the closed forms need, which of them their rule consumes while the
pass runs (see ``_streaming``) and whether the graph must outlive the pass;
:func:`backward_to_outputs` runs that one pass (batched over the slices) and hands each call its
output gradients ``[S, *output.shape]``; :func:`grads_from_losses` gives the fallback
parameters' per-objective gradients, from a pass batched over the objectives.

Both batched passes fall back to one backward pass per row where an operation has no batching
rule (cuDNN's RNN backward, fused attention backward on CUDA, custom functions that read
values): :class:`Batching` learns it once per engine, so that later passes neither fail nor
keep the graph to recover.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._assembly import Step
from ._batching import Batching, batching_of
from ._checks import check_untracked_uses
from ._layout import Layout
from ._objectives import Roots
from ._recording import Calls, Recording
from ._rules import Rule, Use
from ._streaming import as_output, consume_hook, covered

Needed = list[tuple[Rule, Use]]


def backward_step(
    recording: Recording,
    recorded: Calls,
    fallback: dict[int, nn.Parameter],
    objectives: tuple[Roots, Layout, Tensor],
    retain_graph: bool,
    alone: bool,
) -> Step:
    """The output gradients of the recorded calls and the fallback parameters' per-objective
    gradients, for the ``objectives``: the roots, their layout and their order. ``alone``: the
    engine is not distributed."""
    roots, layout, order = objectives
    plan = plan_pass(recording, recorded, fallback, layout, alone)
    # A rule that differentiates its call's own graph after the pass needs the graph kept,
    # where the pass runs through that call.
    keep = retain_graph or plan.graph_needed
    retain = keep or bool(fallback)  # the fallback differentiates the losses again
    batching = batching_of(recording)
    uses, parts = backward_to_outputs(
        roots, plan, recorded, fallback, layout, retain, batching["outputs"]
    )
    # Every time: a tie or a penalty term can appear at any step.
    check_untracked_uses(roots.tensors, recording.rules, uses, fallback)
    from_losses = grads_from_losses(roots, fallback, order, keep, not alone, batching["losses"])
    if not any(uses.values()) and not from_losses:
        raise ValueError(
            "The losses depend on none of the hooked modules' calls recorded since the last "
            "Gramian. Compute the losses with the hooked modules."
        )
    return Step(layout, uses, order, roots.shape, from_losses, frozenset(fallback), parts=parts)


@dataclass
class Pass:
    """The engine's backward pass, planned (see :func:`plan_pass`)."""

    needed: Needed
    targets: list
    consumed: set[int]  # id(use) of the calls consumed during the pass
    graph_needed: bool


def plan_pass(
    recording: Recording, recorded: Calls, fallback: dict, layout: Layout, alone: bool
) -> Pass:
    """The calls whose output gradients the engine's backward pass must give, which of them
    their rule consumes during the pass, and whether the graph must be kept for a rule that
    differentiates its call's own graph after the pass.

    ``alone``: the engine is not distributed (processes share factors, not Gramian parts, so a
    distributed engine keeps every gradient)."""
    needed = [
        (rule, use)
        for rule in recording.rules
        if any(id(rule.param(n)) not in fallback for n in rule.names)
        for use in recorded[id(rule)]
    ]
    targets = [t for _, use in needed for t in use.targets()]
    # Under a batched pass, hooks would see batched tensors.
    single = alone and layout.slices == 1
    streamable = [
        single and _streams(recording, recorded, fallback, rule, use) for rule, use in needed
    ]
    differentiating = [rule.needs_graph for rule, _ in needed]
    through = (
        _run_through(needed, targets)
        if any(streamable) or any(differentiating)
        else [False] * len(needed)
    )
    calls = list(zip(needed, streamable, differentiating, through, strict=True))
    consumed = {id(use) for (_, use), stream, _, run in calls if stream and run}
    graph_needed = any(own and run and not stream for _, stream, own, run in calls)
    return Pass(needed, targets, consumed, graph_needed)


def _streams(recording: Recording, recorded: Calls, fallback: dict, rule: Rule, use: Use) -> bool:
    """Whether the rule can finish its work from this call's output gradient alone."""
    return (
        type(rule).consume is not Rule.consume
        and len(recorded[id(rule)]) == 1
        and len(use.outputs) == 1
        and all(recording.is_own(rule, name, fallback) for name in rule.names)
    )


def _run_through(needed: Needed, targets: list) -> list[bool]:
    """For each call, whether the pass runs through its nodes (and frees them): a target lies
    below one of its outputs."""
    flags = covered(targets)
    below, position = [], 0
    for _, use in needed:
        below.append(any(flags[position : position + len(use.outputs)]))
        position += len(use.outputs)
    return below


def backward_to_outputs(
    roots: Roots,
    plan: Pass,
    recorded: Calls,
    fallback: dict,
    layout: Layout,
    retain_graph: bool,
    batching: Batching,
) -> tuple[Calls, dict[int, Tensor]]:
    """Fills the output gradients ``[S, *output.shape]`` of the closed-form rules' calls;
    returns the calls the pass reached and the Gramian parts that rules made during it
    (``id(rule) ↦ part``). ``batching``: what the engine learned about this pass."""
    live: Calls = {key: [] for key in recorded}
    parts: dict[int, Tensor] = {}
    if not plan.targets:
        _check_something_recorded(recorded, fallback)
        return live, parts
    requested = [(rule, use) for rule, use in plan.needed if id(use) not in plan.consumed]
    fired: set[int] = set()  # the consumed calls whose hook ran
    handles = [
        consume_hook(rule, use, layout, fired, parts)
        for rule, use in plan.needed
        if id(use) in plan.consumed
    ]
    try:
        grads = _differentiate(roots, requested, layout.slices > 1, retain_graph, batching)
    finally:
        for handle in handles:
            handle.remove()
    for rule, use in plan.needed:
        if id(use) in fired:
            live[id(rule)].append(use)
    _hand_out(grads, requested, layout.slices > 1, live)
    return live, parts


def _check_something_recorded(recorded: Calls, fallback: dict) -> None:
    """Without outputs to differentiate, the losses need fallback parameters, of recorded
    calls."""
    if not fallback or not any(recorded.values()):
        raise RuntimeError(
            "The engine recorded no forward call of its modules with grad enabled. Compute "
            "the losses with the hooked modules (outside torch.no_grad()) after creating the "
            "engine. A model compiled and called before the engine existed runs code without "
            "its hooks: create the engine before the first call, or call "
            "torch._dynamo.reset() after creating it."
        )


def _differentiate(
    roots: Roots, requested: Needed, batched: bool, retain_graph: bool, batching: Batching
) -> list[Tensor | None]:
    """The gradients of the roots at the requested calls' outputs (at their edges when modified
    in place: see ``_hooks``), ``[S, ...]`` when batched over the slices."""
    targets = [t for _, use in requested for t in use.targets()]
    if batched:  # one pass per slice where an operation cannot run batched
        return batching.rows(roots.tensors, targets, roots.cotangents, retain_graph)
    return torch.autograd.grad(
        roots.tensors,
        targets,
        [c[0] for c in roots.cotangents],
        retain_graph=retain_graph,
        allow_unused=True,
    )


def _hand_out(grads: list, requested: Needed, batched: bool, live: Calls) -> None:
    """Gives each requested call its outputs' gradients; those the pass reached join ``live``."""
    position = 0
    for rule, use in requested:
        own = grads[position : position + len(use.outputs)]
        position += len(use.outputs)
        if all(g is None for g in own):
            continue  # a call outside the graph of these losses (e.g. an earlier step)
        use.grads = [
            None if g is None else as_output(g if batched else g.unsqueeze(0), output)
            for g, output in zip(own, use.outputs, strict=True)
        ]
        live[id(rule)].append(use)


def grads_from_losses(
    roots: Roots,
    fallback: dict[int, nn.Parameter],
    order: Tensor,
    retain: bool,
    keep_unreached: bool,
    batching: Batching,
) -> dict[int, Tensor]:
    """Per-objective gradients ``[R, numel]`` of the fallback parameters, from the losses.

    A parameter the roots do not reach gets no gradient, as with backward(), unless
    ``keep_unreached`` (the processes of a distributed engine keep zeros: they gather every
    entry together). ``batching``: what the engine learned about this pass."""
    if not fallback:
        return {}
    params = list(fallback.values())
    r = len(order)
    # Batched over the objectives; one pass per objective where an operation cannot run
    # batched.
    grads = batching.rows(roots.tensors, params, roots.per_objective(order), retain)
    return {
        id(p): (p.new_zeros(r, p.numel()) if g is None else g.reshape(r, -1).to(p.dtype))
        for p, g in zip(params, grads, strict=True)
        if g is not None or keep_unreached
    }
