"""Modules without a closed-form rule.

``FallbackRule``: any module with direct parameters. The engine differentiates the losses
themselves with respect to its parameters, all objectives at once (one backward pass batched
over the objectives with ``is_grads_batched``). Exact whatever the module does — nested or
dict outputs, recurrent states, several calls in sequence — and slower than a closed form:
documented as such.

``AttentionRule``: ``nn.MultiheadAttention``. Each objective's output gradient, masked to its
sample, is back-propagated through the module's own recorded graph only, all objectives at
once: per-sample gradients without touching the rest of the model. Used for a single call per
step; several calls go to the exact fallback (a call's graph would include the earlier ones),
and so does a call whose output was modified in place (the graph is differentiated from the
output: ``needs_graph``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._layout import Layout
from ._base import Rule, Use


class FallbackRule(Rule):
    """Per-objective gradients come from the losses (computed by the engine)."""

    from_losses = True

    def per_objective(self, uses: Sequence[Use], name: str, layout: Layout) -> Tensor:
        raise RuntimeError("The engine computes the fallback's gradients from the losses.")


class AttentionRule(Rule):
    needs_graph = True

    def __init__(self, module: nn.MultiheadAttention, names: Sequence[str]) -> None:
        super().__init__(module, names)
        self.batch_axis = 0 if module.batch_first else 1

    def exact_for(self, uses: Sequence[Use]) -> bool:
        return len(uses) == 1

    def per_objective(self, uses: Sequence[Use], name: str, layout: Layout) -> Tensor:
        return self._per_objective(uses, layout)[name]

    def gramian(self, uses: Sequence[Use], names: Sequence[str], layout: Layout) -> Tensor:
        grads = self._per_objective(uses, layout)
        flat = torch.cat([grads[name] for name in names], dim=1)
        return flat @ flat.T

    def _per_objective(self, uses: Sequence[Use], layout: Layout) -> dict[str, Tensor]:
        (use,) = uses
        params = [self.param(name) for name in self.names]
        outputs, cotangents = self._cotangents(use, layout)
        grads = torch.autograd.grad(
            outputs, params, cotangents, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
        r = cotangents[0].shape[0]
        return {
            name: param.new_zeros(r, param.numel()) if g is None else g.reshape(r, -1)
            for name, param, g in zip(self.names, params, grads, strict=True)
        }

    def _axis(self, output_index: int) -> int:
        # Output 0 is the attention output; output 1 the attention weights, batch first.
        return self.batch_axis if output_index == 0 else 0

    def _cotangents(self, use: Use, layout: Layout) -> tuple[list[Tensor], list[Tensor]]:
        """Each output's gradient split into one masked copy per objective: ``[R, *shape]``."""
        outputs, cotangents = [], []
        for index, (output, grad) in enumerate(zip(use.outputs, use.grads, strict=True)):
            if grad is None:
                continue
            if layout.per_sample:
                axis = self._axis(index)
                grad = grad.movedim(1 + axis, 1)
                b = grad.shape[1]
                eye = torch.eye(b, dtype=grad.dtype, device=grad.device)
                grad = grad.unsqueeze(1) * eye.reshape(1, b, b, *([1] * (grad.ndim - 2)))
                grad = grad.movedim(2, 2 + axis).reshape(-1, *output.shape)
            outputs.append(output)
            cotangents.append(grad)
        return outputs, cotangents

    def weighted(self, uses: Sequence[Use], weights: Tensor, layout: Layout) -> dict[str, Tensor]:
        (use,) = uses
        params = [self.param(name) for name in self.names]
        outputs, cotangents = [], []
        for index, (output, grad) in enumerate(zip(use.outputs, use.grads, strict=True)):
            if grad is None:
                continue
            w = weights.reshape(grad.shape[0], -1).to(grad.dtype)  # [S, B']
            if layout.per_sample:
                shape = [w.shape[0]] + [1] * (grad.ndim - 1)
                shape[1 + self._axis(index)] = w.shape[1]
                cotangent = (grad * w.reshape(shape)).sum(dim=0)
            else:
                cotangent = torch.einsum("s,s...->...", w[:, 0], grad)
            outputs.append(output)
            cotangents.append(cotangent)
        grads = torch.autograd.grad(
            outputs, params, cotangents, retain_graph=True, allow_unused=True
        )
        return {n: g for n, g in zip(self.names, grads, strict=True) if g is not None}
