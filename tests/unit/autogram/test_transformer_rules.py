"""Transformer layers on the attention rule: encoders (batch first or not, with dropout and a
padding mask) and a causal decoder with cross-attention, exact on every loss setting."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from jdopt.autogram import Engine
from tests.utils.device import draw_integers, seeded

from ._attention_cases import F64, SETTINGS, B, E, S, T, assert_closed_form_exact, losses_of, randn


class _Encoder(nn.Module):
    """Embedding and positions, a 2-layer Transformer encoder, mean pooling and a head."""

    def __init__(self, batch_first: bool, dropout: float) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embedding = nn.Embedding(7, E)
        self.positions = nn.Embedding(T, E)
        layer = nn.TransformerEncoderLayer(
            E, 2, 6, dropout=dropout, batch_first=batch_first, norm_first=dropout > 0
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(E, 3)

    def forward(self, tokens: Tensor, padding: Tensor) -> Tensor:
        h = self.embedding(tokens) + self.positions(torch.arange(T).expand_as(tokens))
        h = h if self.batch_first else h.transpose(0, 1)
        h = self.encoder(h, src_key_padding_mask=padding)
        h = h if self.batch_first else h.transpose(0, 1)
        return self.head(h.mean(dim=1))


class _CausalDecoder(nn.Module):
    """A pre-norm causal decoder layer over a memory: self- and cross-attention."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerDecoderLayer(
            E, 2, 6, dropout=0.0, batch_first=True, norm_first=True
        )
        self.head = nn.Linear(E, 2)

    def forward(self, target: Tensor, memory: Tensor) -> Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(T, dtype=target.dtype)
        return self.head(self.layer(target, memory, tgt_mask=mask, tgt_is_causal=True))


def _tokens() -> tuple[Tensor, Tensor]:
    tokens = draw_integers(0, 7, (B, T), generator=seeded(2))
    padding = torch.zeros(B, T, dtype=torch.bool)
    padding[1, -1] = True
    return tokens, padding


# Sequence first, the feed-forward layers see the batch on dim 1: only batch_dim=None.
_ENCODERS = [(True, 0.0, *s) for s in SETTINGS] + [(True, 0.2, *s) for s in SETTINGS]
_ENCODERS.append((False, 0.0, "k", None))


@pytest.mark.parametrize(("batch_first", "dropout", "setting", "batch_dim"), _ENCODERS)
def test_transformer_encoders_are_exact(batch_first: bool, dropout: float, setting: str, batch_dim):
    """Training mode with grad enabled: the layers take the slow path, whose projections the
    rule reads (dropout inside the attention included)."""
    torch.manual_seed(0)
    model = _Encoder(batch_first, dropout).to(F64).train()
    engine = Engine(model, batch_dim=batch_dim)
    losses = losses_of(model(*_tokens()), setting)
    assert_closed_form_exact(engine, losses, list(model.parameters()))


@pytest.mark.parametrize(("setting", "batch_dim"), SETTINGS)
def test_a_causal_decoder_layer_is_exact(setting: str, batch_dim: int | None) -> None:
    """A pre-norm causal decoder layer: masked self-attention and cross-attention to a
    memory."""
    torch.manual_seed(0)
    model = _CausalDecoder().to(F64)
    engine = Engine(model, batch_dim=batch_dim)
    out = model(randn(B, T, E), randn(B, S, E, seed=2))
    assert_closed_form_exact(engine, losses_of(out, setting), list(model.parameters()))
