"""Random methods draw from a user-given ``torch.Generator`` whose state travels in state_dict."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._checks import check_generator


class GeneratorMixin(nn.Module):
    """Holds an optional ``generator`` and saves its state with the module's ``state_dict``.

    Resuming from a checkpoint then continues the same random sequence as an uninterrupted run.
    The state is a CPU ``uint8`` tensor for every generator (CUDA ones included); a checkpoint
    loaded with ``torch.load(..., map_location="cuda")`` has it on the GPU, and loading it
    moves it back.
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
            self.generator.set_state(generator_state(state, self.generator))


def generator_state(state: object, generator: torch.Generator) -> Tensor:
    """``state`` as ``generator.set_state`` takes it: a contiguous CPU ``uint8`` tensor, from
    a state on any device (a checkpoint loaded with ``map_location`` moves it).

    Raises:
        TypeError: ``state`` is not a ``uint8`` tensor.
        ValueError: it does not have the size of ``generator``'s state (saved from a generator
            of another kind: a CPU generator's state has thousands of bytes, a CUDA one's 16),
            or has no data (``meta`` device).
    """
    if not isinstance(state, Tensor) or state.dtype != torch.uint8:
        found = f"dtype {state.dtype}" if isinstance(state, Tensor) else type(state).__name__
        raise TypeError(
            "The saved state of the method's torch.Generator should be a torch.uint8 tensor (as "
            f"`generator.get_state()` gives). Found {found}: the state dict was changed after "
            "saving (e.g. converted to another dtype)."
        )
    expected = generator.get_state().numel()
    if state.ndim != 1 or state.numel() != expected:
        raise ValueError(
            f"The saved state of the method's torch.Generator has shape {tuple(state.shape)}, "
            f"but the generator ({generator.device.type}) takes a state of {expected} bytes: it "
            "was saved from a generator on another kind of device. Build the method with a "
            "generator of the same kind as the saved one."
        )
    if state.device.type == "meta":
        raise ValueError(
            "The saved state of the method's torch.Generator is on the meta device, which holds "
            "no data. Load the checkpoint with map_location='cpu' (or a real device)."
        )
    return state.detach().to("cpu").contiguous()
