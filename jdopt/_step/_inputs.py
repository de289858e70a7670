"""The validated input of one JDOptimizer step, shared by every backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor

from .._losses import as_losses
from ..autojac import check_features, reached_leaves


@dataclass(frozen=True)
class Step:
    """What a backend needs to compute one step's Gramian or Jacobian.

    Attributes:
        losses: the objectives, as one tensor of any shape (a sequence of losses concatenated).
        params: the wrapped optimizer's parameters that require grad.
        tasks: the losses as given, when given as a sequence (it tells the tasks apart).
        features: the shared features of a multi-task step; ``None`` for other steps.
        shared: the ``params`` upstream of ``features`` (the trunk); empty without features.
        heads: the other ``params`` of a multi-task step (the task heads).
    """

    losses: Tensor
    params: list[Tensor]
    tasks: list[Tensor] | None = None
    features: list[Tensor] | None = None
    shared: list[Tensor] = field(default_factory=list)
    heads: list[Tensor] = field(default_factory=list)


def prepare(
    losses: Tensor | Sequence[Tensor],
    features: object,
    params: list[Tensor],
) -> Step:
    """Validates a step's input (before anything changes) and splits a multi-task step's
    parameters into the trunk and the heads. Whether the losses are finite is read later, with
    the step's other checks (:func:`._aggregate.decide_checked`).

    Args:
        losses: a tensor of losses, or a sequence of them.
        features: ``None``, or the shared features of a multi-task step.
        params: the optimizer's parameters that require grad.
    """
    tasks = list(losses) if isinstance(losses, Sequence) else None
    tensor = as_losses(losses)
    if features is None:
        return Step(tensor, params, tasks)
    features = check_features(features)
    upstream = {id(t) for t in reached_leaves(features)}
    shared = [p for p in params if id(p) in upstream]
    heads = [p for p in params if id(p) not in upstream]
    return Step(tensor, params, tasks, features, shared, heads)
