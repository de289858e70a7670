"""Any module with direct parameters: per-objective gradients by a batched VJP.

Exact for every module that treats samples independently, with no second forward pass: the
output gradient of each objective (masked to its sample) is back-propagated through the
module's own recorded graph to its parameters, all objectives at once with
``is_grads_batched``. Slower than the closed-form rules (``R`` backward passes through the
module, vectorised), and documented as such.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._layout import Layout
from ._base import Rule, Use


class FallbackRule(Rule):
    def __init__(self, module: nn.Module, names: Sequence[str], batch_axis: int = 0) -> None:
        super().__init__(module, names)
        self.batch_axis = batch_axis

    def per_objective(self, uses: Sequence[Use], name: str, layout: Layout) -> Tensor:
        return self._per_objective(uses, layout)[name]

    def gramian(self, uses: Sequence[Use], names: Sequence[str], layout: Layout) -> Tensor:
        grads = self._per_objective(uses, layout)
        flat = torch.cat([grads[name] for name in names], dim=1)
        return flat @ flat.T

    def _per_objective(self, uses: Sequence[Use], layout: Layout) -> dict[str, Tensor]:
        params = [self.param(name) for name in self.names]
        total: dict[str, Tensor] = {}
        for use in uses:
            outputs, cotangents = self._cotangents(use, layout)
            if not outputs:
                continue
            grads = torch.autograd.grad(
                outputs,
                params,
                cotangents,
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
            for name, grad in zip(self.names, grads, strict=True):
                if grad is not None:
                    flat = grad.reshape(grad.shape[0], -1)
                    total[name] = total[name] + flat if name in total else flat
        r = layout.objectives(self._batch(uses[0]))
        for name, param in zip(self.names, params, strict=True):
            total.setdefault(name, param.new_zeros(r, param.numel()))
        return total

    def _cotangents(self, use: Use, layout: Layout) -> tuple[list[Tensor], list[Tensor]]:
        """Each output's gradient split into one masked copy per objective: ``[R, *shape]``."""
        outputs, cotangents = [], []
        for output, grad in zip(use.outputs, use.grads, strict=True):
            if grad is None:
                continue
            if layout.per_sample:
                grad = grad.movedim(1 + self.batch_axis, 1)
                b = grad.shape[1]
                eye = torch.eye(b, dtype=grad.dtype, device=grad.device)
                mask = eye.reshape(1, b, b, *([1] * (grad.ndim - 2)))
                grad = (grad.unsqueeze(1) * mask).movedim(2, 2 + self.batch_axis)
                grad = grad.reshape(-1, *output.shape)
            outputs.append(output)
            cotangents.append(grad)
        return outputs, cotangents

    def weighted(self, uses: Sequence[Use], weights: Tensor, layout: Layout) -> dict[str, Tensor]:
        params = [self.param(name) for name in self.names]
        total: dict[str, Tensor] = {}
        for use in uses:
            outputs, cotangents = [], []
            for output, grad in zip(use.outputs, use.grads, strict=True):
                if grad is None:
                    continue
                w = weights.reshape(grad.shape[0], -1).to(grad.dtype)  # [S, B']
                if layout.per_sample:
                    shape = [w.shape[0]] + [1] * (grad.ndim - 1)
                    shape[1 + self.batch_axis] = w.shape[1]
                    cotangent = (grad * w.reshape(shape)).sum(dim=0)
                else:
                    cotangent = torch.einsum("s,s...->...", w[:, 0], grad)
                outputs.append(output)
                cotangents.append(cotangent)
            if not outputs:
                continue
            grads = torch.autograd.grad(
                outputs, params, cotangents, retain_graph=True, allow_unused=True
            )
            for name, grad in zip(self.names, grads, strict=True):
                if grad is not None:
                    total[name] = total[name] + grad if name in total else grad
        return total

    def _batch(self, use: Use) -> int:
        return use.outputs[0].shape[self.batch_axis]
