"""The inputs of one batch (``BATCH`` samples), drawn on the CPU from a generator, on ``DEVICE``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tests.utils.device import draw, draw_integers

from ._architecture import BATCH, DTYPE, VOCABULARY

Inputs = Callable[[torch.Generator], tuple[Tensor, ...]]


def randn(*shape: int) -> Inputs:
    def make(generator: torch.Generator) -> tuple[Tensor, ...]:
        return (draw(BATCH, *shape, generator=generator, dtype=DTYPE),)

    return make


def indices(length: int) -> Inputs:
    """Token indices ``[BATCH, length]``; index 0 (the padding index) appears in every row."""

    def make(generator: torch.Generator) -> tuple[Tensor, ...]:
        idx = draw_integers(1, VOCABULARY, (BATCH, length), generator=generator)
        idx[:, 0] = 0
        idx[0, -1] = idx[1, -1]  # a token shared by two samples
        return (idx,)

    return make


def pair(*shapes: tuple[int, ...]) -> Inputs:
    def make(generator: torch.Generator) -> tuple[Tensor, ...]:
        return tuple(draw(BATCH, *s, generator=generator, dtype=DTYPE) for s in shapes)

    return make


def two_inputs(generator: torch.Generator) -> tuple[Tensor, ...]:
    x1 = draw(BATCH, 3, generator=generator, dtype=DTYPE)
    x2 = draw(BATCH, 2, 5, generator=generator, dtype=DTYPE)
    return x1, x2
