"""The optimizer's part of a step, between the backend's two halves: unscale what the backend
found and check it once, then compute the weights or the update."""

from __future__ import annotations

import torch
from torch import Tensor

from .._linalg import at_least_float32, sum_of_gramians
from .._losses import check_finite_losses
from ..aggregation import Aggregator, GramianWeightedAggregator, Weighting
from ..autojac import add_grad, flatten_rows
from ._backend import Decision, Found, Gramian


def scaling(scaler: torch.amp.GradScaler | None) -> bool:
    """Whether a GradScaler will skip steps with non-finite gradients (a disabled one, as in
    ``GradScaler(enabled=use_amp)``, does not: the error contract of no scaler holds then)."""
    return scaler is not None and scaler.is_enabled()


def scale_of(scaler: torch.amp.GradScaler | None) -> float:
    """The factor the losses were multiplied by (one read of the scaler's scale)."""
    return float(scaler.get_scale()) if scaling(scaler) else 1.0


def unscale(found: Found, scale: float) -> tuple[Tensor, list[Tensor] | None]:
    """The unscaled Gramian ``[m, m]``, and, for a Jacobian, its unscaled blocks.

    A Jacobian is unscaled before the products: ``scale² |J|²`` can overflow float32 when
    ``J`` cannot.
    """
    if isinstance(found, Gramian):
        return (found.matrix / scale**2 if scale != 1.0 else found.matrix), None
    blocks = [block / scale for block in found.blocks] if scale != 1.0 else found.blocks
    return sum_of_gramians(blocks), blocks


def decide_checked(
    aggregator: Aggregator,
    found: Found,
    gramian: Tensor,
    unscaled: list[Tensor] | None,
    scale: float,
    losses: Tensor,
    scaling: bool,
) -> Decision | None:
    """:func:`decide`, with the step's checks read from the device at once, after it: finite
    losses (unless ``scaling``), a finite Gramian and finite weights.

    Nothing has changed yet, so the checks can wait for the weights: a step reads the device
    once for all of them. A non-finite Gramian under a GradScaler skips the step (``None``);
    otherwise each check raises its own error, the inputs' first (an error of the method on
    bad inputs is theirs).
    """
    decision, failure = None, None
    if isinstance(aggregator, GramianWeightedAggregator) and aggregator.weighting.uses_losses:
        values = losses.detach().reshape(-1)
        aggregator.weighting.observe_losses(values / scale if scale != 1.0 else values)
    try:
        decision = decide(aggregator, found, gramian, unscaled, scale)
    except Exception as error:
        failure = error
    weights = None if decision is None else decision[0]
    gramian_ok, losses_ok, weights_ok = _finite(gramian, None if scaling else losses, weights)
    if not losses_ok:
        check_finite_losses(losses)
    if not gramian_ok:
        if scaling:
            return None
        raise ValueError(
            "The Jacobian of the losses contains NaN or inf although the losses are finite "
            "(an overflow in the backward pass). Nothing was changed. Lower the learning "
            "rate or use a GradScaler (pass `scaler=` to JDOptimizer)."
        )
    if failure is not None:
        raise failure
    if not weights_ok:
        name = type(aggregator.weighting).__name__
        raise ValueError(_bad_weights(name, "non-finite weights", weights.numel()))
    return decision


def _finite(*tensors: Tensor | None) -> list[bool]:
    """Whether each tensor is finite (``None``: yes), read from the device at once."""
    device = next(t.device for t in tensors if t is not None)
    yes = torch.ones((), dtype=torch.bool, device=device)
    flags = [yes if t is None else torch.isfinite(t).all().to(device) for t in tensors]
    return torch.stack(flags).tolist()


def skip(params: list[Tensor]) -> None:
    """Skips the step the way a GradScaler skips an overflowing backward: NaN gradients, which
    ``scaler.step`` finds, so that it neither steps nor keeps the scale."""
    for param in params:
        add_grad(param, torch.full_like(param, torch.nan))


def decide(
    aggregator: Aggregator,
    found: Found,
    gramian: Tensor,
    unscaled: list[Tensor] | None,
    scale: float,
) -> tuple[Tensor | None, Tensor | list[Tensor]]:
    """The weights (``None`` for a method that is not weighted), and what the backend applies:
    the weights for a Gramian, the update blocks (in the scaler's space) for a Jacobian.

    Args:
        aggregator: the method.
        found: what the backend computed.
        gramian: its unscaled, finite Gramian ``[m, m]``.
        unscaled: for a Jacobian, its unscaled blocks.
        scale: the GradScaler's scale.
    """
    if not isinstance(aggregator, GramianWeightedAggregator):  # only from a Jacobian backend
        jacobian = flatten_rows(unscaled)
        update = aggregator(jacobian.to(at_least_float32(jacobian.dtype)))
        update = update * scale if scale != 1.0 else update
        return None, list(update.split([block.shape[1] for block in found.blocks]))
    weights = weights_of(aggregator.weighting, gramian, found.shape)
    if isinstance(found, Gramian):
        return weights, weights
    flat = weights.reshape(-1)
    return weights, [flat.to(block.dtype) @ block for block in found.blocks]


def weights_of(weighting: Weighting, gramian: Tensor, shape: torch.Size) -> Tensor:
    """The weighting's weights in the objectives' ``shape``; a ValueError unless it returned
    one weight per objective (their finiteness is read with the step's other checks). A
    stateless weighting gets the Gramian unchecked (the step checks it after, in the same
    read); the others check it first, so that a bad step leaves their state alone."""
    weights = weighting.weigh(gramian) if weighting.stateless else weighting(gramian)
    if weights.numel() != shape.numel():
        found = f"weights of shape {tuple(weights.shape)}"
        raise ValueError(_bad_weights(type(weighting).__name__, found, shape.numel()))
    return weights.reshape(shape)


def _bad_weights(name: str, found: str, count: int) -> str:
    return (
        f"The weighting {name} returned {found} for a Gramian of {count} objectives. Nothing "
        "was changed. A weighting must return one finite weight per objective."
    )
