"""The task-specific parameters of ``mtl_backward``: given, or found in the graph."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor

from .._losses import check_inputs
from ._graph import reached_leaves


def task_params(
    tasks_params: Iterable[Iterable[Tensor]] | None,
    tasks: Sequence[Tensor] | None,
    losses: Tensor,
    features: Sequence[Tensor],
) -> tuple[list[Tensor], list[frozenset[int]] | None]:
    """The task-specific parameters, each once, and for each the tasks that list it.

    By default the parameters of task ``i`` are the leaves that ``tasks[i]`` reaches without
    going through ``features``. The lists are ``None`` when nothing tells the tasks' parameters
    apart (losses given as one tensor, no ``tasks_params``): then each parameter gets the
    gradient of every loss.

    Args:
        tasks_params: for each task, its parameters; or ``None``.
        tasks: the task losses given as a sequence of scalars, or ``None``.
        losses: all the losses as one tensor (``k`` elements, one per task).
        features: the shared features, where the search for default parameters stops.
    """
    if tasks_params is None:
        if tasks is None:
            return reached_leaves([losses], stop_at=features), None
        per_task = [reached_leaves([task], stop_at=features) for task in tasks]
    else:
        per_task = [check_inputs(params, "tasks_params") for params in tasks_params]
        if len(per_task) != losses.numel():
            raise ValueError(
                f"`tasks_params` should have one entry per task: {losses.numel()} losses, "
                f"{len(per_task)} entries. Give each task's parameters (an empty list for a "
                "task without any), in the order of `losses`."
            )
    heads = check_inputs([p for params in per_task for p in params], "tasks_params")
    ids = [{id(p) for p in params} for params in per_task]
    return heads, [frozenset(i for i, own in enumerate(ids) if id(head) in own) for head in heads]
