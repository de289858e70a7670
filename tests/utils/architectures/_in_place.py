"""In-place operations on the outputs of hooked layers (Linear, Embedding, attention)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._architecture import VOCABULARY
from ._attention import AttentionSequenceFirst


def mlp_inplace() -> nn.Module:
    """In-place dropout and activations right after Linear layers."""
    return nn.Sequential(
        nn.Linear(5, 6),
        nn.Dropout(0.3, inplace=True),
        nn.ReLU(inplace=True),
        nn.Linear(6, 4),
        nn.SiLU(inplace=True),
        nn.Linear(4, 3),
    )


class Linear3dInPlace(nn.Module):
    """Linear on ``[B, T, i]`` returns a view of a ``[B·T, o]`` tensor; here that view, and a
    slice of it, are modified in place."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 5)
        self.outer = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, T, 4]
        h = self.inner(x)
        h[:, 0].mul_(2.0)
        h = torch.relu_(h)
        out = self.outer(h)
        out += x[..., :2]
        return out  # [B, T, 2]


class EmbeddingPositionsInPlace(nn.Module):
    """Token embeddings with position embeddings added in place."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCABULARY, 4, padding_idx=0)
        self.positions = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, idx: Tensor) -> Tensor:
        h = self.tokens(idx)
        h += self.positions(torch.arange(idx.shape[1], device=idx.device).expand_as(idx))
        return self.head(torch.tanh(h).mean(dim=1))


class AttentionOutputInPlace(AttentionSequenceFirst):
    """A residual added, and an activation applied, in place to the output of attention (whose
    rule differentiates the module's own graph from its output), sequence first."""

    def forward(self, x: Tensor) -> Tensor:  # x: [B, T, 3]
        h = self.embed(x).transpose(0, 1)  # [T, B, 4]
        out, _ = self.attention(h, h, h, need_weights=False)
        out += h
        return self.head(torch.tanh_(out).transpose(0, 1))
