from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._layout import Layout
from ._base import Rule, Use


class EmbeddingRule(Rule):
    """``nn.Embedding``: ``G[r, r'] = Σ_{t,t'} [idx[b,t] = idx[b',t']] dY[r,t]·dY[r',t']``.

    Positions whose index is ``padding_idx`` get no gradient, as in the forward pass.
    """

    gatherable = True
    computes_with = frozenset({"weight"})

    def sparse(self, name: str) -> bool:
        return self.module.sparse and name == "weight"

    def factors(self, uses: Sequence[Use], layout: Layout) -> tuple[Tensor, Tensor]:
        """Indices ``[B, T]`` and output gradients ``[S, B, T, d]`` of all calls."""
        dtype = self.module.weight.dtype
        indices, dys = [], []
        for use in uses:
            idx = layout.rows(use.args[0])
            idx = idx.reshape(idx.shape[0], -1)
            dy = layout.grad_rows(use.grads[0]).to(dtype)
            dy = dy.reshape(*dy.shape[:2], -1, dy.shape[-1])
            if self.module.padding_idx is not None:
                dy = dy * (idx != self.module.padding_idx).unsqueeze(-1).to(dtype)
            indices.append(idx)
            dys.append(dy)
        return torch.cat(indices, dim=1), torch.cat(dys, dim=2)

    def gramian(self, uses: Sequence[Use], names: Sequence[str], layout: Layout) -> Tensor:
        idx, dy = self.factors(uses, layout)
        s, b, t, d = dy.shape
        r = s * b
        vocabulary = self.module.num_embeddings
        if r * vocabulary * d + r * r * vocabulary * d < (r * t) ** 2 * d:
            grads = self._scatter(idx, dy)
            return grads @ grads.T
        flat_idx = idx.reshape(-1)
        same = (flat_idx.unsqueeze(0) == flat_idx.unsqueeze(1)).to(dy.dtype).reshape(b, t, b, t)
        flat = dy.reshape(r * t, d)
        kd = (flat @ flat.T).reshape(s, b, t, s, b, t)
        return torch.einsum("sbtucv,btcv->sbuc", kd, same).reshape(r, r)

    def per_objective(self, uses: Sequence[Use], name: str, layout: Layout) -> Tensor:
        return self._scatter(*self.factors(uses, layout))

    def _scatter(self, idx: Tensor, dy: Tensor) -> Tensor:
        s, b, _, d = dy.shape
        vocabulary = self.module.num_embeddings
        rows = torch.arange(s * b, device=idx.device).reshape(s, b, 1)
        target = (rows * vocabulary + idx.unsqueeze(0)).reshape(-1)
        grads = dy.new_zeros(s * b * vocabulary, d)
        grads.index_add_(0, target, dy.reshape(-1, d))
        return grads.reshape(s * b, vocabulary * d)

    def weighted(self, uses: Sequence[Use], weights: Tensor, layout: Layout) -> dict[str, Tensor]:
        idx, dy = self.factors(uses, layout)
        w = weights.reshape(dy.shape[:2]).to(dy.dtype)
        weighted_dy = torch.einsum("sb,sbtd->btd", w, dy)
        grad = dy.new_zeros(self.module.weight.shape)
        grad.index_add_(0, idx.reshape(-1), weighted_dy.reshape(-1, dy.shape[-1]))
        return {"weight": grad}


def make_embedding_rule(module: nn.Embedding, names: Sequence[str]) -> Rule | None:
    """``max_norm`` renormalises rows in the forward pass and ``scale_grad_by_freq`` counts
    indices across the batch: both go to the fallback."""
    if module.max_norm is not None or module.scale_grad_by_freq:
        return None
    return EmbeddingRule(module, names)
