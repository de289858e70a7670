"""An entry of the zoo: a seeded model factory with its inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tests.utils.device import CPU, DEVICE, seeded

BATCH = 4
VOCABULARY = 7
DTYPE = torch.float64


@dataclass(frozen=True)
class Architecture:
    """A model factory with its inputs.

    Args:
        name: the test id.
        build: builds the model (seeded, float64, training mode).
        inputs: the positional inputs of one batch, drawn from a CPU generator on ``DEVICE``.
    """

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], tuple[Tensor, ...]]

    def make(self, seed: int = 0) -> tuple[nn.Module, tuple[Tensor, ...]]:
        """The model and one batch, on ``DEVICE``: initialised on the CPU from ``seed`` and
        moved, so that every device tests the same numbers."""
        with torch.device(CPU):
            torch.manual_seed(seed)
            model = self.build().to(DTYPE)
        return model.to(DEVICE).train(), self.inputs(seeded(seed + 1))

    @staticmethod
    def outputs(model: nn.Module, inputs: tuple[Tensor, ...]) -> Tensor:
        """One forward pass; the outputs of every head, flattened per sample: ``[BATCH, d]``."""
        out = model(*inputs)
        heads = out if isinstance(out, tuple) else (out,)
        return torch.cat([head.reshape(head.shape[0], -1) for head in heads], dim=1)


def trainable_parameters(*modules: nn.Module) -> list[nn.Parameter]:
    """The distinct parameters of ``modules`` that require grad, in a fixed order."""
    params = {id(p): p for module in modules for p in module.parameters() if p.requires_grad}
    return list(params.values())
