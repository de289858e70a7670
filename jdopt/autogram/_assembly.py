"""The engine's second role: the Gramian from the rules' parts, on one process or on all."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..distributed import rank, world_size
from ._distributed import batch_sizes, combine_rows, gathered_uses
from ._layout import Layout
from ._objectives import Plans, generalize
from ._recording import Calls, Recording
from ._rules import Rule


@dataclass
class Step:
    """What one ``compute_gramian`` found, for the Gramian and for ``accumulate_grads``."""

    layout: Layout
    uses: Calls
    order: Tensor  # objective (s, b) ↦ flat index in the losses
    shape: torch.Size
    from_losses: dict[int, Tensor]  # id(param) ↦ per-objective gradients [R, numel]
    fallback: frozenset[int] = frozenset()  # id(param) of every parameter done from the losses
    global_shape: torch.Size | None = None  # distributed: the shape of every process's losses
    offset: int = 0  # distributed, per-sample: where this process's samples start
    # id(rule) ↦ its part of the Gramian, made during the backward pass (see ``_streaming``).
    parts: dict[int, Tensor] = field(default_factory=dict)


Rows = Callable[[Rule, list[str]], Tensor]  # per-objective gradients [R, Σ numel] of names


def gramian_of(recording: Recording, step: Step, plans: Plans, root: Tensor, alone: bool) -> Tensor:
    """The step's Gramian in the losses' shape ``[*S, *reversed(S)]``: of this process's losses
    when ``alone``, else of every process's (``plans`` give their order; ``root``: one of the
    tensors differentiated, for the dtype and device)."""
    if alone:
        return generalize(
            local_gramian(recording, step), step.shape, step.order, step.layout, plans.batch_dim
        )
    gramian = global_gramian(recording, step, plans.batch_dim)
    order = plans(step.global_shape, root.dtype, root.device).order
    return generalize(gramian, step.global_shape, order, step.layout, plans.batch_dim)


def local_gramian(recording: Recording, step: Step) -> Tensor:
    """The Gramian ``[R, R]`` of this process's objectives."""
    uses, layout = step.uses, step.layout

    def rows(rule: Rule, names: list[str]) -> Tensor:
        return torch.cat([rule.per_objective(uses[id(rule)], n, layout) for n in names], dim=1)

    parts = [
        step.parts[id(rule)]
        if id(rule) in step.parts
        else rule.gramian(uses[id(rule)], own, layout)
        for rule, own in _own(recording, step)
    ]
    parts.extend(_tied_parts(recording, step, rows))
    parts.extend(grads @ grads.T for grads in step.from_losses.values())
    return sum_parts(parts, step.order.device)


def global_gramian(recording: Recording, step: Step, batch_dim: int | None) -> Tensor:
    """The Gramian of every process's objectives (see ``_distributed``); sets the step's
    global shape and offset."""
    layout, uses = step.layout, step.uses
    shape, sizes = list(step.shape), None
    if layout.per_sample:
        sizes = batch_sizes(shape[batch_dim], step.order.device)
        step.offset = sum(sizes[: rank()])
        shape[batch_dim] = sum(sizes)
    step.global_shape = torch.Size(shape)
    gathered = gathered_uses(recording.rules, uses, step.order.device)
    scale = 1.0 if layout.per_sample else 1.0 / world_size()

    def rows(rule: Rule, names: list[str]) -> Tensor:
        if id(rule) in gathered:
            grads = [rule.per_objective(gathered[id(rule)], n, layout) for n in names]
            return torch.cat(grads, dim=1) * scale
        local = torch.cat([rule.per_objective(uses[id(rule)], n, layout) for n in names], 1)
        return combine_rows(local, layout, sizes)

    parts = []
    for rule, own in _own(recording, step):
        if id(rule) in gathered:
            parts.append(rule.gramian(gathered[id(rule)], own, layout) * scale**2)
        else:
            part = rows(rule, own)
            parts.append(part @ part.T)
    parts.extend(_tied_parts(recording, step, rows))
    for grads in step.from_losses.values():
        total = combine_rows(grads, layout, sizes)
        parts.append(total @ total.T)
    return sum_parts(parts, step.order.device)


def _own(recording: Recording, step: Step) -> list[tuple[Rule, list[str]]]:
    return recording.own_names(step.uses, step.fallback)


def _tied_parts(recording: Recording, step: Step, rows: Rows) -> list[Tensor]:
    """Parameters used by several closed-form modules: their per-objective gradients summed
    over the owners first, then squared (on the losses' device: the owners may sit on others)."""
    parts = []
    for owners in recording.tied(step.uses, step.fallback):
        summed = sum_parts([rows(rule, [name]) for rule, name in owners], step.order.device)
        parts.append(summed @ summed.T)
    return parts


def sum_parts(parts: list[Tensor], device: torch.device) -> Tensor:
    """The sum of the Gramian's parts, on ``device`` (the losses'), in the widest of their
    dtypes.

    A model split over several devices gives each layer's part on that layer's device: each
    part is moved before it is added. ``parts`` are fresh tensors (the rules' own): the sum
    reuses the first when it already has the device and dtype.
    """
    if not parts:
        raise ValueError("The losses depend on none of the hooked modules' parameters.")
    dtype = parts[0].dtype
    for part in parts[1:]:
        dtype = torch.promote_types(dtype, part.dtype)
    total = parts[0].to(device=device, dtype=dtype)
    for part in parts[1:]:
        total += part.to(device)  # in place: the rules' parts are not used after the sum
    return total
