"""The engine's third role: the weighted gradient ``Σᵢ wᵢ ∇lossesᵢ`` from the saved factors."""

from __future__ import annotations

import torch
from torch import Tensor

from ._assembly import Step
from ._distributed import reduce_grads
from ._recording import Recording


def local_weights(step: Step, weights: Tensor, batch_dim: int | None) -> Tensor:
    """This process's weights ``[R]``, in the objectives' order, from weights in the shape of
    the losses (of every process's losses, when distributed)."""
    expected = step.global_shape or step.shape
    if not isinstance(weights, Tensor) or weights.shape != expected:
        found = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(
            f"`weights` should have the shape of the losses, {tuple(expected)}. Found {found}."
        )
    weights = weights.detach()
    if step.global_shape is not None and step.layout.per_sample:
        weights = weights.narrow(batch_dim, step.offset, step.shape[batch_dim])
    return weights.reshape(-1)[step.order]


def weighted_grads(recording: Recording, step: Step, flat: Tensor) -> dict[int, Tensor]:
    """``id(param) ↦ Σ_r flat[r] · gradient_r`` over this process's objectives (``flat``:
    ``[R]``, in the objectives' order), summed over the processes when distributed."""
    grads: dict[int, Tensor] = {}
    for rule in recording.rules:
        if not step.uses[id(rule)]:
            continue
        # On the rule's device: a model split over devices has its layers on several.
        weights = flat.to(rule.param(rule.names[0]).device)
        for name, grad in rule.weighted(step.uses[id(rule)], weights, step.layout).items():
            key = id(rule.param(name))
            if key not in step.fallback:
                grads[key] = grads[key] + grad if key in grads else grad
    for key, per_objective in step.from_losses.items():
        grads[key] = flat.to(per_objective.device, per_objective.dtype) @ per_objective
    if step.global_shape is not None:  # every process adds its share, in the same order
        grads = {
            id(p): grads.get(id(p), torch.zeros_like(p)).reshape(p.shape) for p in recording.params
        }
        reduce_grads(list(grads.values()), step.layout)
    return grads


def add_to_grads(recording: Recording, step: Step, grads: dict[int, Tensor]) -> None:
    """Adds the weighted gradients to the parameters' ``.grad``, sparse where the parameter's
    own backward would give a sparse gradient."""
    params = {id(p): p for p in recording.params}
    for key, grad in grads.items():
        param = params[key]
        grad = grad.reshape(param.shape).to(param.dtype)
        if key in recording.sparse and key not in step.fallback:
            grad = grad.to_sparse(sparse_dim=1)
        if param.grad is None:
            param.grad = grad
        else:  # dense + sparse is dense; sparse + sparse stays sparse
            param.grad = grad + param.grad if param.grad.is_sparse else param.grad + grad
