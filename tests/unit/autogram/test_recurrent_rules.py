"""The closed-form rule of ``nn.RNN``, ``nn.GRU`` and ``nn.LSTM``: exact against the row-by-row
reference on every configuration, whichever outputs the losses read."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from jdopt.autogram import Engine
from jdopt.autogram._rules import make_rule
from jdopt.autogram._rules._recurrent import recompute
from tests.utils.device import draw_integers, seeded

from ._models import indices
from ._recurrent_models import (
    CONFIGS,
    F64,
    IN,
    LOSSES,
    B,
    Classifier,
    Config,
    H,
    SequenceModel,
    T,
    inputs,
    is_closed_form,
    model_of,
)
from ._reference import assert_exact
from ._settings import PER_SAMPLE, Setting


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("setting", LOSSES, ids=lambda s: s.name)
def test_recurrent_rule_matches_reference(config: Config, setting: Setting) -> None:
    """Gramian and weighted gradient of every parameter (recurrent and others) are exact."""
    model = model_of(config)
    engine = Engine(model, batch_dim=setting.batch_dim)
    losses = setting.losses(model(inputs()))
    assert_exact(engine, losses, list(model.parameters()))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_recurrent_rule_is_the_closed_form(config: Config) -> None:
    """Batched inputs without training dropout get the closed form, not the fallback."""
    model = model_of(config)
    x = inputs() if config.batch_first else inputs().transpose(0, 1)
    assert is_closed_form(model.rnn, x)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("from_outputs", [False, True], ids=["steps", "outputs"])
def test_recomputation_matches_the_module(config: Config, from_outputs: bool) -> None:
    """The recurrence recomputed step by step, or from the module's output sequence for the
    last layer, gives the fused kernel's ``output``, ``h_n`` and (LSTM) ``c_n``."""
    rnn = model_of(config).rnn
    x = inputs().transpose(0, 1)  # time-major
    states = [torch.randn(rnn.num_layers * (2 if rnn.bidirectional else 1), B, H, dtype=F64)]
    if config.kind == "lstm":
        states.append(torch.randn_like(states[0]))
    rule = make_rule(rnn, [n for n, _ in rnn.named_parameters()])
    args = (tuple(states),) if config.kind == "lstm" else (states[0],)
    out, state = rnn(x.transpose(0, 1) if config.batch_first else x, *args)
    out = out.transpose(0, 1) if config.batch_first else out
    expected = [out, *(state if isinstance(state, tuple) else (state,))]
    known = out.detach() if from_outputs else None
    recomputed, _ = recompute(rnn, x, states, rule.cells, known)
    for found, wanted in zip(recomputed, expected, strict=True):
        torch.testing.assert_close(found, wanted, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["relu", "gru"])
def test_output_modified_in_place_is_exact(kind: str) -> None:
    """An output modified in place after the call (``relu_``) is read as the module made it:
    the rule then recomputes every layer step by step."""
    torch.manual_seed(0)
    rnn = Config(kind, layers=2, batch_first=True).make().to(F64)
    engine = Engine(rnn, batch_dim=0)
    out, h = rnn(inputs())
    out = out.relu_()
    losses = (out**2).sum(dim=(1, 2)) + h.sin().sum(dim=(0, 2))
    assert_exact(engine, losses, list(rnn.parameters()))


@pytest.mark.parametrize("kind", ["tanh", "gru", "lstm"])
@pytest.mark.parametrize("batch_dim", [0, None])
def test_embedding_classifier_matches_reference(kind: str, batch_dim: int | None) -> None:
    """An Embedding, a two-layer bidirectional recurrent layer and a head, trained with
    cross-entropy: exact."""
    torch.manual_seed(0)
    model = Classifier(Config(kind, layers=2, bidirectional=True)).to(F64)
    idx = draw_integers(0, 7, (B, T), generator=seeded(2))
    engine = Engine(model, batch_dim=batch_dim)
    out = model(idx)
    losses = nn.functional.cross_entropy(out, torch.tensor([0, 1, 1]), reduction="none")
    if batch_dim is None:
        losses = torch.stack([losses.sum(), (out**2).sum()])
    assert_exact(engine, losses, list(model.parameters()))


class _ReadFromState(nn.Module):
    """A classifier read from the final hidden state ``h_n`` (``[layers, B, H]``) only."""

    def __init__(self, kind: type[nn.RNNBase]) -> None:
        super().__init__()
        self.embedding = nn.Embedding(7, 3)
        self.rnn = kind(3, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, idx: Tensor) -> Tensor:
        _, state = self.rnn(self.embedding(idx))
        h = state[0] if isinstance(state, tuple) else state
        return self.head(h[-1])


@pytest.mark.parametrize(
    ("kind", "batch_dim"),
    [(nn.GRU, 0), (nn.LSTM, 0), (nn.LSTM, None)],
    ids=["GRU-B", "LSTM-B", "LSTM-m"],
)
def test_a_layer_read_from_its_final_state_only_is_exact(kind: type, batch_dim: int | None):
    """Losses of ``h_n`` alone (the batch on its dimension 1; for LSTM, nested in a tuple)."""
    torch.manual_seed(0)
    model = _ReadFromState(kind).to(F64)
    engine = Engine(model, batch_dim=batch_dim)
    out = model(indices())
    losses = (out**2).sum(dim=1) if batch_dim == 0 else torch.stack([(out**2).sum(), out.sum()])
    assert_exact(engine, losses, list(model.parameters()))


def test_repeated_calls_are_stacked() -> None:
    """A recurrent layer called twice (an encoder over two sequences) sums both calls."""
    torch.manual_seed(0)
    rnn = nn.GRU(IN, H, batch_first=True).to(F64)
    engine = Engine(rnn, batch_dim=0)
    out_a, h_a = rnn(inputs(1))
    out_b, _ = rnn(inputs(2)[:, :2], h_a)
    losses = (out_a**2).sum(dim=(1, 2)) + out_b.sin().sum(dim=(1, 2))
    assert_exact(engine, losses, list(rnn.parameters()))


def test_frozen_recurrent_parameters_are_skipped() -> None:
    """Only the trainable parameters count."""
    torch.manual_seed(0)
    model = SequenceModel(Config("lstm", layers=2)).to(F64)
    model.rnn.weight_hh_l0.requires_grad_(False)
    model.rnn.bias_ih_l1.requires_grad_(False)
    engine = Engine(model, batch_dim=0)
    losses = PER_SAMPLE.losses(model(inputs()))
    assert_exact(engine, losses, [p for p in model.parameters() if p.requires_grad])
