"""Validation of the losses and inputs given to the engines and to JDOptimizer.

Every check runs before any gradient or parameter is touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


def as_losses(losses: object, name: str = "losses") -> Tensor:
    """Returns ``losses`` as one tensor: a tensor as is, a sequence of tensors concatenated."""
    check_losses_type(losses, name)
    if isinstance(losses, Tensor):
        tensor = losses
    elif all(t.ndim == 0 for t in losses):  # one graph node rather than one per loss
        tensor = torch.stack(list(losses))
    else:
        tensor = torch.cat([t.reshape(-1) for t in losses])
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


def check_losses_type(losses: object, name: str = "losses") -> None:
    """Raises unless ``losses`` is a tensor or a non-empty sequence of tensors."""
    if isinstance(losses, Tensor):
        return
    if isinstance(losses, Sequence) and all(isinstance(t, Tensor) for t in losses):
        if not losses:
            raise ValueError(f"`{name}` is an empty sequence. Give at least one loss.")
        return
    if callable(losses):
        raise TypeError(
            f"`{name}` should be a tensor of losses; found a callable. Closures are not "
            "supported: compute the losses and call `step(losses)`."
        )
    raise TypeError(
        f"`{name}` should be a tensor (or a non-empty sequence of tensors) with one loss per "
        f"objective. Found {type(losses).__name__}."
    )


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


def check_inputs(inputs: Iterable[Tensor], name: str) -> list[Tensor]:
    """Returns ``inputs`` without repeats (first occurrences, in order), or raises unless each
    is a tensor that requires grad and has a ``.grad`` of its own (a leaf, or a tensor that
    called ``retain_grad()``)."""
    unique = list({id(t): t for t in inputs}.values())
    for tensor in unique:
        if not isinstance(tensor, Tensor):
            raise TypeError(
                f"Every entry of `{name}` should be a tensor. Found {type(tensor).__name__}."
            )
        if not tensor.requires_grad:
            raise ValueError(
                f"Every entry of `{name}` should be a tensor that requires grad. Found one of "
                f"shape {tuple(tensor.shape)} that does not: leave it out, or call "
                "`requires_grad_()` on it."
            )
        if not (tensor.is_leaf or tensor.retains_grad):
            raise ValueError(
                f"Every entry of `{name}` should be a leaf tensor or one that called "
                f"`retain_grad()`, as PyTorch fills `.grad` only for those. Found a non-leaf "
                f"tensor of shape {tuple(tensor.shape)}: call `.retain_grad()` on it, or pass "
                "the leaves it is computed from."
            )
    return unique
