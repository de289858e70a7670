"""Random methods draw from a user-given ``torch.Generator`` whose state travels in state_dict."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._checks import check_generator


class GeneratorMixin(nn.Module):
    """Holds an optional ``generator`` and saves its state with the module's ``state_dict``.

    Resuming from a checkpoint then continues the same random sequence as an uninterrupted run.
    """

    def __init__(self, generator: torch.Generator | None) -> None:
        super().__init__()
        check_generator(generator)
        self.generator = generator

    def draw_device(self, fallback: torch.device) -> torch.device:
        """The device to draw on: the generator's, or ``fallback`` without a generator."""
        return self.generator.device if self.generator is not None else fallback

    def get_extra_state(self) -> Any:
        return None if self.generator is None else self.generator.get_state()

    def set_extra_state(self, state: Any) -> None:
        if state is not None and self.generator is not None:
            self.generator.set_state(state)
