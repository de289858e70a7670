"""Modules without a closed-form rule: exact per-sample gradients by backward passes.

``FallbackRule`` (any module with direct parameters) and ``AttentionRule``
(``nn.MultiheadAttention`` with ``add_bias_kv`` or ``add_zero_attn``) are ``LocalRule``s: each
objective's output gradient, masked to its sample, is back-propagated through the call's own
part of the graph only, all objectives at once (``is_grads_batched``) — per-sample gradients
without touching the rest of the model, as a per-sample backward of the module would give
them. With per-sample losses ``[B]`` this happens during the engine's backward pass
(``consume``), before that pass frees the call's graph; otherwise after it, on the graph the
engine keeps. The per-objective gradients are kept for the weighted gradient.

Where that is not exact, the engine differentiates the losses themselves instead (one
backward pass batched over the objectives): several calls in one step (a call's graph would
include the earlier ones), an output modified in place, outputs without the batch first, or a
parameter that the graph also uses outside the call (``local_references``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..._linalg import at_least_float32
from ..._rows import jacobian_rows
from .._layout import Layout
from ._base import Rule, Use


class LocalRule(Rule):
    """Per-objective gradients from the call's own part of the graph (module docstring)."""

    needs_graph = True
    closed_form = False

    def exact_for(self, uses: Sequence[Use]) -> bool:
        return len(uses) == 1

    def local_references(self, use: Use) -> dict[int, int]:
        if "local_references" not in use.cache:  # asked for twice a step: walked once
            use.cache["local_references"] = self._walk(use)
        return use.cache["local_references"]

    def _walk(self, use: Use) -> dict[int, int]:
        keys = {id(self.param(name)) for name in self.names}
        counts = dict.fromkeys(keys, 0)
        stop = set(use.sources)
        stack = [t.grad_fn for t in use.outputs if t.grad_fn is not None]
        seen: set = set()
        while stack:
            node = stack.pop()
            if node in seen or node in stop:
                continue
            seen.add(node)
            for child, _ in node.next_functions:
                variable = None if child is None else getattr(child, "variable", None)
                if variable is not None:
                    if id(variable) in keys:
                        counts[id(variable)] += 1
                elif child is not None:
                    stack.append(child)
        return counts

    def graph_references(self, uses: Sequence[Use], name: str) -> int:
        return sum(self.local_references(use)[id(self.param(name))] for use in uses)

    def consume(self, use: Use, names: Sequence[str], layout: Layout) -> tuple[Tensor, bool] | None:
        return self.gramian([use], names, layout), True

    def per_objective(self, uses: Sequence[Use], name: str, layout: Layout) -> Tensor:
        return self._per_objective(uses, layout)[name]

    def gramian(self, uses: Sequence[Use], names: Sequence[str], layout: Layout) -> Tensor:
        grads = self._per_objective(uses, layout)
        flat = torch.cat([grads[name] for name in names], dim=1)
        flat = flat.to(at_least_float32(flat.dtype))  # autograd's are in the parameters' dtype
        return flat @ flat.T

    def _per_objective(self, uses: Sequence[Use], layout: Layout) -> dict[str, Tensor]:
        """``name ↦ [R, numel]``, computed once per call and kept."""
        (use,) = uses
        if all(name in use.kept for name in self.names):
            return use.kept
        params = [self.param(name) for name in self.names]
        outputs, cotangents = self._cotangents(use, layout)
        # Batched over the objectives; one pass per objective where an operation cannot be.
        grads = jacobian_rows(outputs, params, cotangents, retain_graph=True, chunk_size=None)
        r = cotangents[0].shape[0]
        use.kept.update(
            {
                name: param.new_zeros(r, param.numel()) if g is None else g.reshape(r, -1)
                for name, param, g in zip(self.names, params, grads, strict=True)
            }
        )
        return use.kept

    def _axis(self, output_index: int) -> int:
        """The batch's axis in output ``output_index``."""
        return self.batch_axis

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


class LossesRule(Rule):
    """Per-objective gradients from the losses, always: for modules whose outputs do not all
    have the batch first (a recurrent layer's final states are ``[layers, B, H]``), which the
    local pass could not split per sample."""

    from_losses = True
    closed_form = False

    def per_objective(self, uses: Sequence[Use], name: str, layout: Layout) -> Tensor:
        raise RuntimeError("The engine computes these gradients from the losses.")


class FallbackRule(LocalRule):
    """Any module with direct parameters: outputs with the batch first."""

    def batched(self, use: Use, batch: int) -> bool:
        return all(t.ndim > 0 and t.shape[0] == batch for t in use.outputs)


class AttentionRule(LocalRule):
    """``nn.MultiheadAttention`` with ``add_bias_kv`` or ``add_zero_attn``."""

    def __init__(self, module: nn.MultiheadAttention, names: Sequence[str]) -> None:
        super().__init__(module, names)
        self.batch_axis = 0 if module.batch_first else 1

    def _axis(self, output_index: int) -> int:
        # Output 0 is the attention output; output 1 the attention weights, batch first.
        return self.batch_axis if output_index == 0 else 0
