from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..._linalg import at_least_float32, product_with_transpose
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
        dtype = at_least_float32(self.module.weight.dtype)
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
        # Three exact ways (measured, see _methods): per-sample gradients scattered over the
        # vocabulary, products of every pair of positions masked by equal indices, or
        # products of the pairs of positions with equal indices only.
        methods = {
            "inner": lambda: self._dense_gramian(idx, dy),
            "pairs": lambda: _pairs(idx, dy, self.module.padding_idx),
        }
        if r * self.module.num_embeddings * d <= (r * t) ** 2:  # no bigger than the kernel
            methods["per_sample"] = lambda: product_with_transpose(self._scatter(idx, dy))
        key = ("embedding", tuple(idx.shape), tuple(dy.shape), self.module.num_embeddings)
        return self.choose(key, dy.device, methods)

    def _dense_gramian(self, idx: Tensor, dy: Tensor) -> Tensor:
        s, b, t, d = dy.shape
        flat_idx = idx.reshape(-1)
        same = (flat_idx.unsqueeze(0) == flat_idx.unsqueeze(1)).to(dy.dtype).reshape(b, t, b, t)
        flat = dy.reshape(s * b * t, d)
        kd = (flat @ flat.T).reshape(s, b, t, s, b, t)
        return torch.einsum("sbtucv,btcv->sbuc", kd, same).reshape(s * b, s * b)

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


def _pairs(idx: Tensor, dy: Tensor, padding_idx: int | None) -> Tensor:
    """The Gramian from the pairs of positions whose indices are equal only (their number is
    about ``(B·T)²/V`` for ``V`` equally used rows, instead of ``(B·T)²``; positions at
    ``padding_idx`` have no gradient and make none), a chunk of at most ``B·T`` pairs at a
    time."""
    s, b, t, d = dy.shape
    flat_idx = idx.reshape(-1)
    positions = torch.arange(b * t, device=idx.device)
    if padding_idx is not None:
        positions = positions[flat_idx != padding_idx]
    kept = flat_idx[positions]
    first, second = (kept.unsqueeze(0) == kept.unsqueeze(1)).nonzero(as_tuple=True)
    first, second = positions[first], positions[second]
    flat = dy.reshape(s, b * t, d)
    gramian = dy.new_zeros(s, s, b * b)
    cells = (first // t) * b + second // t  # the (row, row) cell of each pair
    for start in range(0, len(first), b * t):
        part = slice(start, start + b * t)
        products = torch.einsum("skd,ukd->suk", flat[:, first[part]], flat[:, second[part]])
        gramian.index_add_(2, cells[part], products)
    return gramian.reshape(s, s, b, b).permute(0, 2, 1, 3).reshape(s * b, s * b)
