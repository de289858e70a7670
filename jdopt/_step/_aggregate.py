"""The optimizer's part of a step, between the backend's two halves: unscale what the backend
found and check it once, then compute the weights or the update."""

from __future__ import annotations

import torch
from torch import Tensor

from .._linalg import at_least_float32, sum_of_gramians
from ..aggregation import Aggregator, GramianWeightedAggregator, Weighting
from ..autojac import add_grad, flatten_rows
from ._backend import Found, Gramian


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


def check_finite(gramian: Tensor, *, scaling: bool) -> bool:
    """Whether the step can go on: ``False`` (skip it) for a non-finite Gramian under a
    GradScaler; a ValueError without one. A NaN or inf in ``J`` makes ``G`` non-finite, and
    ``G`` is ``m × m``: checking it is cheap."""
    if bool(torch.isfinite(gramian).all()):
        return True
    if not scaling:
        raise ValueError(
            "The Jacobian of the losses contains NaN or inf although the losses are finite "
            "(an overflow in the backward pass). Nothing was changed. Lower the learning "
            "rate or use a GradScaler (pass `scaler=` to JDOptimizer)."
        )
    return False


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
    one finite weight per objective."""
    weights = weighting(gramian)
    if weights.numel() != shape.numel() or not bool(torch.isfinite(weights).all()):
        found = (
            "non-finite weights"
            if weights.numel() == shape.numel()
            else f"weights of shape {tuple(weights.shape)}"
        )
        raise ValueError(
            f"The weighting {type(weighting).__name__} returned {found} for a Gramian of "
            f"{shape.numel()} objectives. Nothing was changed. A weighting must return one "
            "finite weight per objective."
        )
    return weights.reshape(shape)
