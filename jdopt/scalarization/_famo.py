"""FAMO: task weights learned from how much each loss fell across a step, without gradients."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._base import Scalarizer, as_shape, buffer, check_positive, check_same_shape

_EPSILON = 1e-8  # keeps log(ℓ − b) finite at the bound
_BETAS, _ADAM_EPSILON = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults


class FAMO(Scalarizer):
    """Fast adaptive multitask optimization: ``c Σᵢ zᵢ log(ℓᵢ − bᵢ + ε)`` with ``z =
    softmax(w)`` and ``c = 1 / Σᵢ zᵢ / (ℓᵢ − bᵢ + ε)`` (a constant for autograd), whose
    gradient is a convex combination of the task gradients that makes all losses fall at
    about the same relative rate.

    From Liu et al., *FAMO: Fast Adaptive Multitask Optimization*, NeurIPS 2023
    (https://arxiv.org/abs/2306.03792).

    The logits ``w`` learn from the change ``δᵢ = log(ℓᵢ⁻ − bᵢ + ε) − log(ℓᵢ⁺ − bᵢ + ε)`` of
    the losses across a model step: one Adam step (``lr``, ``weight_decay``) along the
    gradient of ``zᵀδ`` with respect to ``w``. When that update happens:

    - **In JDOptimizer, or when you only call the scalarizer**: at each call, from the losses
      of the previous call (``ℓ⁻``, before the previous step) to these (``ℓ⁺``, after it), then
      the new weights combine these losses. The two are measured on consecutive batches: on
      the same batch (full-batch training) this is the paper's update, exactly; on new batches
      it also carries the difference between the batches.
    - **The paper's way**: call :meth:`update` with the losses recomputed on the same batch
      after the model step; the next call then does not update again.

    Stateful: ``w``, Adam's moments and the last losses are in ``state_dict``; the logits are a
    buffer, not a parameter (FAMO alone updates them). The losses must stay above ``b``.

    Args:
        shape: the shape of the values (an int ``n``: ``(n,)``).
        min_losses: the lower bounds ``b``, in that shape; ``None``: 0.
        lr: Adam's learning rate for the logits (the paper's 0.025).
        weight_decay: Adam's weight decay on the logits (the paper's 1e-3).
    """

    stateful = True

    def __init__(
        self,
        shape: int | tuple[int, ...],
        min_losses: Tensor | None = None,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
    ) -> None:
        super().__init__()
        self.shape = as_shape(shape)
        self.lr = check_positive(lr, "lr", strict=False)
        self.weight_decay = check_positive(weight_decay, "weight_decay", strict=False)
        bounds = torch.zeros(self.shape) if min_losses is None else buffer(min_losses)
        if bounds.shape != self.shape:
            raise ValueError(f"`min_losses` should have shape {self.shape}. Found {bounds.shape}.")
        self.register_buffer("min_losses", bounds)
        for name in ("logits", "first_moment", "second_moment"):
            self.register_buffer(name, torch.zeros(self.shape))
        self.reset()

    def forward(self, values: Tensor, /) -> Tensor:
        check_same_shape(self.logits, values, "logits")
        if self._last is not None:
            self.update(values)
        self._last = values.detach().clone()
        weights = torch.softmax(self.logits.flatten(), 0).reshape(self.shape).to(values)
        shifted = values - self.min_losses.to(values) + _EPSILON
        normalizer = (weights / shifted).sum().detach()
        return (weights / normalizer * shifted.log()).sum()

    @torch.no_grad()
    def update(self, values: Tensor, /) -> None:
        """One Adam step on the logits, from the losses of the last call to ``values``."""
        if self._last is None:
            raise ValueError(
                "FAMO.update needs the losses of a call first: call the scalarizer on the "
                "batch's losses, step the model, then update with the losses after the step."
            )
        check_same_shape(self.logits, values, "logits")
        bounds = self.min_losses.to(values) + 0.0
        delta = (self._last - bounds + _EPSILON).log() - (values - bounds + _EPSILON).log()
        delta = delta.flatten().to(self.logits)
        z = torch.softmax(self.logits.flatten(), 0)
        grad = (z * (delta - z @ delta)).reshape(self.shape)  # ∂(zᵀδ)/∂w
        self._adam(grad + self.weight_decay * self.logits)
        self._last = None

    def _adam(self, grad: Tensor) -> None:
        (beta1, beta2), self._steps = _BETAS, self._steps + 1
        self.first_moment.lerp_(grad, 1 - beta1)
        self.second_moment.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        correction1, correction2 = 1 - beta1**self._steps, 1 - beta2**self._steps
        denominator = self.second_moment.sqrt() / math.sqrt(correction2) + _ADAM_EPSILON
        self.logits.addcdiv_(self.first_moment, denominator, value=-self.lr / correction1)

    def reset(self) -> None:
        for tensor in (self.logits, self.first_moment, self.second_moment):
            tensor.zero_()
        self._steps, self._last = 0, None

    def get_extra_state(self) -> Any:
        return {"steps": self._steps, "last": self._last}

    def set_extra_state(self, state: Any) -> None:
        self._steps, self._last = int(state["steps"]), state["last"]

    def arguments(self) -> dict[str, Any]:
        return {"shape": self.shape, "lr": self.lr, "weight_decay": self.weight_decay}
