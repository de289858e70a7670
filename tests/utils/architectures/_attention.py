"""Attention: Transformer encoder and decoder layers, multi-head attention laid out every way."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Transformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.layer = nn.TransformerEncoderLayer(
            d_model=8, nhead=2, dim_feedforward=12, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, T, 3]
        return self.head(self.layer(self.embed(x)).mean(dim=1))


class Decoder(nn.Module):
    """A pre-norm Transformer decoder layer: self-attention (causal) and cross-attention."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerDecoderLayer(
            d_model=4, nhead=2, dim_feedforward=6, dropout=0.0, batch_first=True, norm_first=True
        )

    def forward(self, target: Tensor, memory: Tensor) -> Tensor:  # [B, 3, 4], [B, 2, 4]
        mask = nn.Transformer.generate_square_subsequent_mask(3, dtype=target.dtype)
        return self.layer(target, memory, tgt_mask=mask, tgt_is_causal=True)


class AttentionBatchFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.attention = nn.MultiheadAttention(4, num_heads=2, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, T, 3]
        h = self.embed(x)
        mask = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool, device=x.device)
        mask[::2, -1] = True  # padding at the end of every other sample
        h, _ = self.attention(h, h, h, key_padding_mask=mask)
        return self.head(h)


class AttentionSequenceFirst(nn.Module):
    """Attention on ``[T, B, d]``; the Linear layers see the batch first, as the engine needs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.attention = nn.MultiheadAttention(4, num_heads=2)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, T, 3]
        h = self.embed(x).transpose(0, 1)  # [T, B, 4]
        h, _ = self.attention(h, h, h, need_weights=False)
        return self.head(h.transpose(0, 1))


class CrossAttention(nn.Module):
    """Queries from one input, keys and values of other sizes (``kdim``, ``vdim``) from another."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(3, 4)
        self.attention = nn.MultiheadAttention(4, num_heads=1, kdim=5, vdim=5, batch_first=True)

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:  # [B, 3], [B, 2, 5]
        q = self.query(x1).unsqueeze(1)
        out, weights = self.attention(q, x2, x2)  # the attention weights are an output too
        return out, weights
