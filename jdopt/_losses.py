"""Validation of the losses and inputs given to the engines and to JDOptimizer.

Every check runs before any gradient or parameter is touched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def as_losses(losses: object, name: str = "losses") -> Tensor:
    """Returns ``losses`` as one tensor: a tensor as is, a sequence of tensors concatenated."""
    if isinstance(losses, Tensor):
        tensor = losses
    elif isinstance(losses, Sequence) and losses and all(isinstance(t, Tensor) for t in losses):
        if all(t.ndim == 0 for t in losses):  # one graph node rather than one per loss
            tensor = torch.stack(list(losses))
        else:
            tensor = torch.cat([t.reshape(-1) for t in losses])
    elif callable(losses):
        raise TypeError(
            f"`{name}` should be a tensor of losses; found a callable. Closures are not "
            "supported: compute the losses and call `step(losses)`."
        )
    else:
        raise TypeError(
            f"`{name}` should be a tensor (or a non-empty sequence of tensors) with one loss per "
            f"objective. Found {type(losses).__name__}."
        )
    if tensor.numel() == 0:
        raise ValueError(
            f"`{name}` is empty (shape {tuple(tensor.shape)}). Give at least one loss."
        )
    if not tensor.requires_grad:
        raise ValueError(
            f"`{name}` does not require grad: it is not connected to any trainable parameter. "
            "Compute it from the model's output, outside `torch.no_grad()`."
        )
    return tensor


def check_finite_losses(losses: Tensor, name: str = "losses") -> None:
    if not torch.isfinite(losses).all():
        raise ValueError(
            f"`{name}` contains NaN or inf ({int((~torch.isfinite(losses)).sum())} of "
            f"{losses.numel()} entries). Nothing was changed. Check the data and the learning "
            "rate, or use a GradScaler, which skips such steps."
        )


def check_chunk_size(chunk_size: object) -> None:
    if chunk_size is None:
        return
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(
            f"`parallel_chunk_size` should be None (all rows at once) or an int >= 1. Found "
            f"{chunk_size!r}."
        )


def check_inputs(inputs: Sequence[Tensor], name: str) -> list[Tensor]:
    inputs = list(inputs)
    if not inputs:
        raise ValueError(
            f"`{name}` is empty: the losses reach no tensor that requires grad. Check that the "
            "parameters have `requires_grad=True` and that the losses are computed from them."
        )
    for tensor in inputs:
        if not isinstance(tensor, Tensor) or not tensor.requires_grad:
            raise ValueError(f"Every entry of `{name}` should be a tensor that requires grad.")
    return inputs
