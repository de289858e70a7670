"""The base of the scalarizers: a module that reduces a tensor of losses to one scalar."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..aggregation._checks import check_nonnegative


class Scalarizer(nn.Module, ABC):
    """Reduces a tensor of values (losses) of any shape to one scalar, whose ordinary
    ``backward()`` gives the update: the baseline that weights the losses without their
    gradients, at the cost of a plain step.

    Subclasses implement :meth:`forward`; calling the module checks the values first.
    ``JDOptimizer(optimizer, aggregator=scalarizer)`` takes one in place of an aggregator: its
    learnable parameters (UW, IMTL-L) join the optimizer, and its state is in
    ``JDOptimizer.state_dict()``.

    Attributes:
        stateful: whether the result depends on earlier calls (state in ``state_dict``, cleared
            by :meth:`reset`).
    """

    stateful: bool = False

    @abstractmethod
    def forward(self, values: Tensor, /) -> Tensor:
        """Returns the scalar (0-d) combination of ``values``."""

    def __call__(self, values: Tensor, /) -> Tensor:
        check_values(values)
        return super().__call__(values)

    def reset(self) -> None:
        """Forgets the state of earlier calls (nothing for a stateless scalarizer)."""

    def arguments(self) -> dict[str, Any]:
        """The constructor's arguments, for ``repr``."""
        return {}

    def __repr__(self) -> str:
        found = ", ".join(f"{k}={v!r}" for k, v in self.arguments().items())
        return f"{type(self).__name__}({found})"

    def __str__(self) -> str:
        return type(self).__name__


def check_values(values: object) -> None:
    if not isinstance(values, Tensor):
        raise TypeError(
            f"A scalarizer takes a tensor of values (losses). Found {type(values).__name__}: "
            "stack a list of losses with torch.stack."
        )
    if values.numel() == 0 or not values.is_floating_point():
        found = "no values" if values.numel() == 0 else f"dtype {values.dtype}"
        raise ValueError(
            f"A scalarizer takes a non-empty floating-point tensor of values. Found {found} "
            f"(shape {tuple(values.shape)})."
        )


def check_same_shape(tensor: Tensor | None, values: Tensor, name: str) -> None:
    if tensor is not None and tensor.shape != values.shape:
        raise ValueError(
            f"`{name}` should have the shape of the values, {tuple(values.shape)}. Found shape "
            f"{tuple(tensor.shape)}: give one {name[:-1] if name.endswith('s') else name} "
            "entry per value."
        )


def as_shape(shape: object) -> tuple[int, ...]:
    """``shape`` as a tuple of positive ints (an int ``n`` is ``(n,)``)."""
    dims = (shape,) if isinstance(shape, int) else shape
    valid = isinstance(dims, Sequence) and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims
    )
    if not valid or len(dims) == 0:
        raise ValueError(
            "`shape` should be a positive int or a non-empty sequence of positive ints (the "
            f"shape of the losses). Found {shape!r}."
        )
    return tuple(dims)


def check_positive(value: object, name: str, *, strict: bool) -> float:
    """``value`` as a float, checked as the aggregation methods check their hyperparameters."""
    check_nonnegative(value, name, strict=strict)
    return float(value)


def buffer(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else torch.as_tensor(tensor).detach().clone()
