"""Dynamic weight average: weights from how fast each loss fell over the last two epochs."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import Scalarizer, check_positive


class DWA(Scalarizer):
    """Dynamic weight average: ``Σₖ λₖ Lₖ`` with ``λ = K softmax(r / T)``, where ``rₖ`` is the
    ratio of task ``k``'s average loss over the last epoch to that over the epoch before.

    From Liu, Johns & Davison, *End-to-End Multi-Task Learning with Attention*, CVPR 2019
    (https://arxiv.org/abs/1803.10704).

    Each call adds the values to the current epoch's sums; call :meth:`step` at the end of
    each epoch (epochs are yours: neither the scalarizer nor JDOptimizer can tell where one
    ends). Until two epochs are complete the weights are 1. Stateful: the sums and the last two
    epochs' averages are in ``state_dict``; :meth:`reset` forgets them.

    Args:
        temperature: ``T > 0``; larger is more uniform.
    """

    stateful = True

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        self.temperature = check_positive(temperature, "temperature", strict=True)
        self.reset()

    def forward(self, values: Tensor, /) -> Tensor:
        weights = self._weights(values)
        detached = values.detach()
        if self._sum is not None and self._sum.shape != values.shape:
            raise ValueError(
                f"The values' shape changed from {tuple(self._sum.shape)} to "
                f"{tuple(values.shape)} within an epoch. Call `reset()` before changing it."
            )
        self._sum = detached.clone() if self._sum is None else self._sum + detached
        self._batches += 1
        return (weights * values).sum()

    def step(self) -> None:
        """Ends the epoch: its average loss joins the history (the last two are kept)."""
        if self._sum is None:
            return
        self._averages = [*self._averages, self._sum / self._batches][-2:]
        self._sum, self._batches = None, 0

    def reset(self) -> None:
        self._sum: Tensor | None = None
        self._batches = 0
        self._averages: list[Tensor] = []

    def _weights(self, values: Tensor) -> Tensor:
        if len(self._averages) < 2:
            return torch.ones_like(values)
        older, newer = self._averages
        if older.shape != values.shape:
            raise ValueError(
                f"The values' shape changed from {tuple(older.shape)} to "
                f"{tuple(values.shape)}. Call `reset()` before changing it."
            )
        rates = (newer / older).flatten().to(values)
        return values.numel() * torch.softmax(rates / self.temperature, 0).reshape(values.shape)

    def get_extra_state(self) -> Any:
        return {"sum": self._sum, "batches": self._batches, "averages": list(self._averages)}

    def set_extra_state(self, state: Any) -> None:
        self._sum, self._batches = state["sum"], int(state["batches"])
        self._averages = list(state["averages"])

    def arguments(self) -> dict[str, Any]:
        return {"temperature": self.temperature}
