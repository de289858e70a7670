"""The inputs of one batch (``BATCH`` samples), drawn from a generator."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._architecture import BATCH, DTYPE, VOCABULARY

Inputs = Callable[[torch.Generator], tuple[Tensor, ...]]


def randn(*shape: int) -> Inputs:
    def make(generator: torch.Generator) -> tuple[Tensor, ...]:
        return (torch.randn(BATCH, *shape, dtype=DTYPE, generator=generator),)

    return make


def indices(length: int) -> Inputs:
    """Token indices ``[BATCH, length]``; index 0 (the padding index) appears in every row."""

    def make(generator: torch.Generator) -> tuple[Tensor, ...]:
        idx = torch.randint(1, VOCABULARY, (BATCH, length), generator=generator)
        idx[:, 0] = 0
        idx[0, -1] = idx[1, -1]  # a token shared by two samples
        return (idx,)

    return make


def pair(*shapes: tuple[int, ...]) -> Inputs:
    def make(generator: torch.Generator) -> tuple[Tensor, ...]:
        return tuple(torch.randn(BATCH, *s, dtype=DTYPE, generator=generator) for s in shapes)

    return make


def two_inputs(generator: torch.Generator) -> tuple[Tensor, ...]:
    x1 = torch.randn(BATCH, 3, dtype=DTYPE, generator=generator)
    x2 = torch.randn(BATCH, 2, 5, dtype=DTYPE, generator=generator)
    return x1, x2
