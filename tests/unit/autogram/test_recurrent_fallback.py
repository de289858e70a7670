"""The recurrent configurations the closed form leaves to the exact fallback: training dropout
between layers, unbatched and packed inputs, LSTM projections."""

from __future__ import annotations

import torch
from torch import nn

from jdopt.autogram import Engine

from ._recurrent_models import F64, IN, H, inputs, is_closed_form
from ._reference import assert_exact


def test_dropout_while_training_uses_the_fallback() -> None:
    """Dropout between layers draws a mask the rule cannot replay: the fallback is exact."""
    torch.manual_seed(0)
    rnn = nn.GRU(IN, H, num_layers=2, dropout=0.5, batch_first=True).to(F64)
    assert not is_closed_form(rnn, inputs())
    rnn.eval()
    assert is_closed_form(rnn, inputs())
    rnn.train()
    engine = Engine(rnn, batch_dim=0)
    losses = (rnn(inputs())[0] ** 2).sum(dim=(1, 2))
    assert_exact(engine, losses, list(rnn.parameters()))


def test_unbatched_and_packed_inputs_use_the_fallback() -> None:
    """An unbatched sequence or a ``PackedSequence`` has no batch dimension to read."""
    torch.manual_seed(0)
    rnn = nn.LSTM(IN, H).to(F64)
    assert not is_closed_form(rnn, inputs()[0])
    packed = nn.utils.rnn.pack_padded_sequence(
        inputs().transpose(0, 1), torch.tensor([4, 3, 1]), enforce_sorted=True
    )
    assert not is_closed_form(rnn, packed)


def test_packed_inputs_match_reference() -> None:
    """Packed inputs, through the fallback: exact."""
    torch.manual_seed(0)
    rnn = nn.GRU(IN, H, batch_first=True).to(F64)
    engine = Engine(rnn, batch_dim=None)
    packed = nn.utils.rnn.pack_padded_sequence(inputs(), torch.tensor([4, 3, 1]), batch_first=True)
    _, h = rnn(packed)
    losses = torch.stack([(h**2).sum(), h.sin().sum()])
    assert_exact(engine, losses, list(rnn.parameters()))


def test_lstm_projection_uses_the_fallback() -> None:
    """``LSTM(proj_size=...)`` is left to the fallback: exact."""
    torch.manual_seed(0)
    rnn = nn.LSTM(IN, H + 1, proj_size=H, batch_first=True).to(F64)
    assert not is_closed_form(rnn, inputs())
    engine = Engine(rnn, batch_dim=0)
    losses = (rnn(inputs())[0] ** 2).sum(dim=(1, 2))
    assert_exact(engine, losses, list(rnn.parameters()))
