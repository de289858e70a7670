"""Input validation shared by the aggregation methods.

Each check raises with what was expected, what was found, and how to fix it.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor


def check_matrix(matrix: Tensor, name: str, *, min_rows: int = 1) -> None:
    """Checks that ``matrix`` is a finite 2-D tensor with at least ``min_rows`` rows."""
    if not isinstance(matrix, Tensor):
        raise TypeError(f"`{name}` should be a torch.Tensor. Found {type(matrix).__name__}.")
    if matrix.ndim != 2:
        raise ValueError(
            f"`{name}` should be a matrix (2-D tensor, one row per objective). Found a tensor "
            f"of shape {tuple(matrix.shape)}. Reshape it to [m, n]."
        )
    if matrix.shape[0] < min_rows:
        raise ValueError(
            f"`{name}` should have at least one row (one per objective). Found shape "
            f"{tuple(matrix.shape)}."
        )
    check_finite(matrix, name)


def check_gramian(gramian: Tensor, name: str = "gramian", *, min_rows: int = 1) -> None:
    """Checks that ``gramian`` is a finite square matrix with at least ``min_rows`` rows."""
    check_matrix(gramian, name, min_rows=min_rows)
    if gramian.shape[0] != gramian.shape[1]:
        raise ValueError(
            f"`{name}` should be a square matrix [m, m] (for example `J @ J.T`). Found shape "
            f"{tuple(gramian.shape)}."
        )


def check_finite(tensor: Tensor, name: str) -> None:
    if not torch.isfinite(tensor).all():
        raise ValueError(
            f"`{name}` should contain only finite values. Found NaN or inf. Check the losses "
            "for NaN/inf, or use a GradScaler to skip steps with overflowing gradients."
        )


def check_nonnegative(value: object, name: str, *, strict: bool = False) -> None:
    """Checks that a hyperparameter is a real number, ``> 0`` when ``strict``, ``>= 0`` else."""
    if not isinstance(value, Real) or isinstance(value, bool):
        raise TypeError(f"`{name}` should be a real number. Found {type(value).__name__}.")
    bad = not math.isfinite(value) or (value <= 0 if strict else value < 0)
    if bad:
        bound = "positive" if strict else "non-negative"
        raise ValueError(f"`{name}` should be a finite {bound} number. Found {name}={value}.")


def check_int(value: object, name: str, *, minimum: int) -> None:
    """Checks that a hyperparameter is an integer ``>= minimum``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"`{name}` should be an int. Found {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"`{name}` should be at least {minimum}. Found {name}={value}.")


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` should be one of {choices}. Found {name}={value!r}.")


def check_vector(vector: object, name: str, *, allow_empty: bool = False) -> Tensor:
    """Checks that ``vector`` is a finite 1-D tensor, non-empty unless ``allow_empty``, and
    returns it."""
    if not isinstance(vector, Tensor):
        raise TypeError(f"`{name}` should be a 1-D torch.Tensor. Found {type(vector).__name__}.")
    if vector.ndim != 1 or (vector.numel() == 0 and not allow_empty):
        kind = "1-D" if allow_empty else "non-empty 1-D"
        raise ValueError(f"`{name}` should be a {kind} tensor. Found shape {tuple(vector.shape)}.")
    check_finite(vector, name)
    return vector


def check_length(vector: Tensor, name: str, m: int) -> None:
    """Checks that a per-objective vector matches the number of objectives ``m``."""
    if vector.shape[0] != m:
        raise ValueError(
            f"`{name}` has {vector.shape[0]} entries but there are {m} objectives. Give one "
            "entry per objective (row of the Jacobian)."
        )


def check_generator(generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"`generator` should be a torch.Generator or None. Found {type(generator).__name__}."
        )
