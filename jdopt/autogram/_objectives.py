"""The objectives of one Gramian: what the engine differentiates, and in which order.

The losses ``S`` become ``R`` objectives ``(s, b)``, slices first (see ``_layout``): a
:class:`Plan` gives the slices, the order of the objectives among the losses' flat entries and
the cotangents of each backward slice; :class:`Roots` holds the tensors to differentiate with
those cotangents; :func:`generalize` turns the Gramian of the objectives back into the losses'
shape ``[*S, *reversed(S)]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ._layout import Layout


class Plan(NamedTuple):
    """The slices, the order of the objectives ``(s, b)`` (objective ↦ flat index in the
    losses) and the slices' cotangents ``[S, *shape]``."""

    layout: Layout
    order: Tensor
    cotangents: Tensor


class Plans:
    """The plans of the shapes of losses seen lately (shapes rarely change: a few are kept).

    Args:
        batch_dim: the engine's ``batch_dim``.
    """

    def __init__(self, batch_dim: int | None) -> None:
        self.batch_dim = batch_dim
        self._plans: dict[tuple, Plan] = {}

    def __call__(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Plan:
        key = (shape, dtype, device, self.batch_dim)
        if key not in self._plans:
            if len(self._plans) > 4:
                self._plans.clear()
            self._plans[key] = _make_plan(shape, dtype, device, self.batch_dim)
        return self._plans[key]


def _make_plan(
    shape: torch.Size, dtype: torch.dtype, device: torch.device, batch_dim: int | None
) -> Plan:
    numel = math.prod(shape)
    index = torch.arange(numel, device=device).reshape(shape)
    if batch_dim is None:
        eye = torch.eye(numel, dtype=dtype, device=device)
        return Plan(Layout(numel, per_sample=False), index.reshape(-1), eye.reshape(numel, *shape))
    if len(shape) == 0 or not -len(shape) <= batch_dim < len(shape):
        raise ValueError(
            f"`batch_dim`={batch_dim} does not exist for losses of shape {tuple(shape)}. Give "
            "per-sample losses (batch along batch_dim) or use batch_dim=None."
        )
    moved = index.movedim(batch_dim, 0).reshape(shape[batch_dim], -1)  # [B, k]
    k = moved.shape[1]
    order = moved.T.reshape(-1)
    cotangents = torch.zeros(k, numel, dtype=dtype, device=device)
    slice_of = torch.arange(k, device=device).repeat_interleave(moved.shape[0])
    cotangents[slice_of, order] = 1
    return Plan(Layout(k, per_sample=True), order, cotangents.reshape(k, *shape))


@dataclass
class Roots:
    """What the engine differentiates: tensors, their cotangents ``[S, ...]`` per slice, the
    shape of the objectives, and their cotangents ``[R, ...]`` per objective (given the order
    of the objectives)."""

    tensors: list[Tensor]
    cotangents: list[Tensor]
    shape: torch.Size
    per_objective: Callable[[Tensor], list[Tensor]]

    @staticmethod
    def of_losses(losses: Tensor, cotangents: Tensor) -> Roots:
        def per_objective(order: Tensor) -> list[Tensor]:
            eye = torch.eye(losses.numel(), dtype=losses.dtype, device=losses.device)
            return [eye[order].reshape(len(order), *losses.shape)]

        return Roots([losses], [cotangents], losses.shape, per_objective)

    @staticmethod
    def of_rows(outputs: Sequence[Tensor], cotangents: Sequence[Tensor]) -> Roots:
        """``k`` vector-Jacobian products of ``outputs``: one objective per row."""
        k = cotangents[0].shape[0]
        return Roots(list(outputs), list(cotangents), torch.Size([k]), lambda _: list(cotangents))


def generalize(
    gramian: Tensor, shape: torch.Size, order: Tensor, layout: Layout, batch_dim: int | None
) -> Tensor:
    """The Gramian ``[R, R]`` of the objectives, in the objectives' order, as the generalized
    Gramian ``[*S, *reversed(S)]`` of losses of shape ``S`` (a 0-d tensor for ``S = ()``)."""
    if layout.per_sample and layout.slices > 1 and shape[batch_dim] > 1:
        # Objectives are (s, b), slices first; the losses' flat order is another one.
        inverse = torch.argsort(order)
        gramian = gramian[inverse][:, inverse]
    k = len(shape)
    if k == 0:
        return gramian.reshape(())
    full = gramian.reshape(*shape, *shape)
    return full.permute(*range(k), *reversed(range(k, 2 * k)))
