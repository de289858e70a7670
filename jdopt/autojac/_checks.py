"""The arguments of ``backward`` and ``mtl_backward``, checked as TorchJD 0.8 checks them.

Every check runs before any ``.grad`` changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .._losses import check_losses_type


def tensor_entries(tensors: object, name: str) -> list[Tensor]:
    """The tensors given as ``tensors``: a tensor alone, or the entries of a non-empty sequence
    of distinct tensors."""
    check_losses_type(tensors, name)
    if isinstance(tensors, Tensor):
        return [tensors]
    entries = list(tensors)
    check_distinct(entries, name)
    return entries


def task_losses(losses: object) -> list[Tensor] | None:
    """The task losses given as a sequence (one scalar per task), or ``None`` for a tensor
    (each of its elements is a task)."""
    if isinstance(losses, Tensor):
        return None
    tasks = tensor_entries(losses, "losses")
    for i, loss in enumerate(tasks):
        if loss.ndim > 0:
            raise ValueError(
                f"`losses` should contain one scalar per task. Found entry {i} of shape "
                f"{tuple(loss.shape)}. Reduce each task's loss to a scalar (e.g. `.mean()`), or "
                "pass one tensor of losses, each of whose elements is a task."
            )
    return tasks


def check_features(features: object) -> list[Tensor]:
    """Returns ``features`` as a list of tensors that require grad, or raises."""
    features = [features] if isinstance(features, Tensor) else features
    if not isinstance(features, Sequence) or not all(isinstance(f, Tensor) for f in features):
        raise TypeError(
            "`features` should be a tensor or a non-empty sequence of tensors: the output of "
            f"the shared trunk. Found {type(features).__name__}."
        )
    if not features:
        raise ValueError(
            "`features` is empty. Pass the output of the shared trunk (one tensor or several) "
            "that the task heads take as input."
        )
    for f in features:
        if not f.requires_grad:
            raise ValueError(
                "`features` should be part of the graph (require grad): pass the output of the "
                f"shared trunk, not a detached tensor. Found a tensor of shape {tuple(f.shape)} "
                "that does not require grad."
            )
    return list(features)


def check_distinct(tensors: Sequence[Tensor], name: str) -> None:
    first: dict[int, int] = {}
    for j, tensor in enumerate(tensors):
        i = first.setdefault(id(tensor), j)
        if i != j:
            raise ValueError(
                f"`{name}` should contain distinct tensors. Found entry {j} to be entry {i} "
                "again. Pass each tensor once."
            )


def check_no_overlap(
    shared: Sequence[Tensor], heads: Sequence[Tensor], *, tasks_given: bool
) -> None:
    """Raises when a tensor is both a shared parameter and a task-specific one."""
    both = [p for p in heads if id(p) in {id(s) for s in shared}]
    if not both:
        return
    shapes = ", ".join(str(tuple(p.shape)) for p in both)
    fix = (
        "Remove them from one of the two."
        if tasks_given
        else "By default the parameters of a task are those its loss reaches without going "
        "through `features`: a trunk parameter that a head also uses directly is both. Pass "
        "`tasks_params` (and `shared_params`) without it."
    )
    raise ValueError(
        "`tasks_params` and `shared_params` should have no tensor in common: a parameter gets "
        f"either Jacobian descent (shared) or its task's gradient. Found {len(both)} in both "
        f"(shapes {shapes}). {fix}"
    )
