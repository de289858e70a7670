"""``nn.MultiheadAttention``: closed forms for its projections.

The parameters of ``MultiheadAttention`` are those of linear maps over positions: the
in-projection (``in_proj_weight`` and ``in_proj_bias``, or ``q_proj_weight``, ``k_proj_weight``
and ``v_proj_weight`` when ``kdim``/``vdim`` differ from ``embed_dim``) and the out-projection
(``out_proj.weight``, ``out_proj.bias``). They are ``F.linear`` calls inside
``F.multi_head_attention_forward``; the attention between them has no parameters and runs as
it is (fused kernel included). The rule records each of those calls (``_attention_calls``): its
input, its output, and the rows of the parameters it used (cross-attention splits
``in_proj_weight`` into row blocks). The engine differentiates to the recorded outputs, and the
Linear formulas give the Gramian, the per-objective and the weighted gradients: blocks of rows
are disjoint, so their Gramians add up; calls of one block are stacked along positions.

Inside the function the projections see activations ``[T, B, E]`` (``batch_first`` inputs are
transposed before): the batch is on axis 1, and the out-projection's input ``[T·B, E]`` is read
as ``[T, B, E]``.

``add_bias_kv`` and ``add_zero_attn`` (parameters or positions outside the projections) keep the
exact ``AttentionRule`` (a batched backward pass through the module's own graph). A call whose
projections could not all be recorded goes to the exact fallback.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .._layout import Layout
from ._attention_calls import Projection, ProjectionRecorder
from ._base import Rule, Use
from ._factors import (
    factor_gramian,
    per_objective_factors,
    position_sums,
)
from ._fallback import AttentionRule


def make_attention_rule(module: nn.MultiheadAttention, names: Sequence[str]) -> Rule:
    """The projections' closed forms, or the batched-backward rule for the rare options."""
    if module.bias_k is not None or module.bias_v is not None or module.add_zero_attn:
        return AttentionRule(module, names)
    return ProjectionRule(module, names)


class ProjectionRule(Rule):
    """``nn.MultiheadAttention`` (without ``add_bias_kv``/``add_zero_attn``) through its
    projections' inputs and output gradients (see the module docstring)."""

    batch_axis = 1  # of the projections' activations [T, B, E]

    def __init__(self, module: nn.MultiheadAttention, names: Sequence[str]) -> None:
        super().__init__(module, names)
        self._recorder = ProjectionRecorder(module)

    def register_hooks(self, uses: list[Use]) -> list[RemovableHandle]:
        return self._recorder.register(uses)

    def exact_for(self, uses: Sequence[Use]) -> bool:
        return all(use.complete for use in uses)

    def batched(self, use: Use, batch: int) -> bool:
        # The projections' outputs may be flattened over positions and batch: read the inputs.
        x = use.args[0]
        return x.ndim > self.batch_axis and x.shape[self.batch_axis] == batch

    # ------------------------------------------------------------------ factors
    def _factors(
        self, uses: Sequence[Use], layout: Layout
    ) -> list[tuple[Projection, Tensor, Tensor]]:
        """Every projection with its inputs ``[B', N, i]`` and output gradients
        ``[S, B', N, o]``."""
        dtype = self.dtype(self.names[0])
        factors = []
        for use in uses:
            for projection, x, grad in zip(use.projections, use.args, use.grads, strict=True):
                if grad is None:
                    continue
                dy = grad.reshape(grad.shape[0], *x.shape[:2], grad.shape[-1])
                x = layout.rows(x, axis=1)
                dy = layout.grad_rows(dy, axis=1)
                x = x.reshape(x.shape[0], -1, x.shape[-1]).to(dtype)
                dy = dy.reshape(*dy.shape[:2], -1, dy.shape[-1]).to(dtype)
                factors.append((projection, x, dy))
        return factors

    def _blocks(
        self, uses: Sequence[Use], layout: Layout
    ) -> dict[str, dict[tuple[int, int], tuple[Tensor, Tensor]]]:
        """For each covered parameter, its row blocks ``(first, width)`` with the inputs and
        output gradients of every call of the block, stacked along positions."""
        blocks: dict[str, dict[tuple[int, int], list[tuple[Tensor, Tensor]]]] = {}
        for projection, x, dy in self._factors(uses, layout):
            for rows in (projection.weight, projection.bias):
                if rows is not None and rows[0] in self.names:
                    block = blocks.setdefault(rows[0], {}).setdefault(
                        (rows[1], projection.width), []
                    )
                    block.append((x, dy))
        return {
            name: {
                key: (torch.cat([x for x, _ in parts], 1), torch.cat([d for _, d in parts], 2))
                if len(parts) > 1
                else parts[0]
                for key, parts in by_rows.items()
            }
            for name, by_rows in blocks.items()
        }

    # ------------------------------------------------------------------ the quantities
    def gramian(self, uses: Sequence[Use], names: Sequence[str], layout: Layout) -> Tensor:
        blocks = self._blocks(uses, layout)
        total = None
        for name in names:
            if name not in blocks:
                continue
            if _disjoint(blocks[name]):  # disjoint rows: the blocks' Gramians add up
                weight = self.param(name).ndim == 2
                parts = [
                    factor_gramian(x, dy, weight=weight, bias=not weight, choose=self.choose)
                    for x, dy in blocks[name].values()
                ]
            else:  # one module called on overlapping blocks (e.g. as self- and cross-attention)
                grads = self._per_objective(blocks[name], name)
                parts = [grads @ grads.T]
            for part in parts:
                total = part if total is None else total + part
        if total is None:
            r = layout.objectives(uses[0].args[0].shape[1])
            return self.param(names[0]).new_zeros(r, r, dtype=self.dtype(names[0]))
        return total

    def per_objective(self, uses: Sequence[Use], name: str, layout: Layout) -> Tensor:
        blocks = self._blocks(uses, layout)
        if name not in blocks:
            r = layout.objectives(uses[0].args[0].shape[1])
            return self.param(name).new_zeros(r, self.param(name).numel(), dtype=self.dtype(name))
        return self._per_objective(blocks[name], name)

    def _per_objective(self, blocks: dict, name: str) -> Tensor:
        param = self.param(name)
        r = next(iter(blocks.values()))[1].shape[:2].numel()
        grads = param.new_zeros(r, *param.shape, dtype=self.dtype(name))
        for (first, width), (x, dy) in blocks.items():
            if param.ndim == 2:
                grads[:, first : first + width] += per_objective_factors(x, dy).reshape(
                    r, width, -1
                )
            else:
                grads[:, first : first + width] += position_sums(dy)
        return grads.reshape(r, -1)

    def weighted(self, uses: Sequence[Use], weights: Tensor, layout: Layout) -> dict[str, Tensor]:
        # Linear in the calls: each projection adds (Σ_s w[s, b] dy[s, t, b])ᵀ x[t, b] to its
        # rows, computed in the activations' own order [T, B] (no copy of the gradients).
        grads = {
            name: self.param(name).new_zeros(self.param(name).shape, dtype=self.dtype(name))
            for name in self.names
        }
        dtype = self.dtype(self.names[0])
        for use in uses:
            for projection, x, grad in zip(use.projections, use.args, use.grads, strict=True):
                if grad is None:
                    continue
                t, b, i = x.shape
                w = weights.reshape(grad.shape[0], -1).expand(-1, b).to(dtype)  # [S, B]
                dy = grad.reshape(-1, t, b, grad.shape[-1])
                if dy.shape[0] == 1:  # in dtype, by type promotion
                    combined = dy[0] * w[0].reshape(1, b, 1)
                else:
                    combined = torch.einsum("sb,stbo->tbo", w, dy.to(dtype))
                combined = combined.reshape(t * b, -1)
                weight, bias = projection.weight, projection.bias
                if weight[0] in grads:
                    rows = slice(weight[1], weight[1] + projection.width)
                    grads[weight[0]][rows] += combined.T @ x.reshape(t * b, i).to(combined.dtype)
                if bias is not None and bias[0] in grads:
                    grads[bias[0]][bias[1] : bias[1] + projection.width] += combined.sum(dim=0)
        return grads


def _disjoint(blocks: dict[tuple[int, int], object]) -> bool:
    spans = sorted(blocks)
    return all(a + w <= b for (a, w), (b, _) in itertools.pairwise(spans))
