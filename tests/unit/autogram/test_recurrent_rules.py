"""The closed-form rule of ``nn.RNN``, ``nn.GRU`` and ``nn.LSTM`` against the row-by-row
reference, and the configurations it leaves to the exact fallback."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from jdopt.autogram import Engine
from jdopt.autogram._hooks import make_hook
from jdopt.autogram._rules import Use, make_rule
from jdopt.autogram._rules._recurrent import recompute

from ._reference import (
    assert_exact,
)
from ._settings import PER_SAMPLE, SETTINGS, Setting

_F64 = torch.float64
_B, _T, _I, _H = 3, 4, 3, 2


@dataclass(frozen=True)
class Config:
    """A recurrent layer's configuration; ``kind``: tanh, relu, gru or lstm."""

    kind: str
    layers: int = 1
    bidirectional: bool = False
    batch_first: bool = True
    bias: bool = True
    initial_state: bool = False

    def make(self, input_size: int = _I) -> nn.RNNBase:
        options = {
            "num_layers": self.layers,
            "bidirectional": self.bidirectional,
            "batch_first": self.batch_first,
            "bias": self.bias,
        }
        if self.kind in ("tanh", "relu"):
            return nn.RNN(input_size, _H, nonlinearity=self.kind, **options)
        return {"gru": nn.GRU, "lstm": nn.LSTM}[self.kind](input_size, _H, **options)

    @property
    def name(self) -> str:
        flags = [
            f"L{self.layers}",
            "bi" if self.bidirectional else "uni",
            "bf" if self.batch_first else "tf",
            "bias" if self.bias else "nobias",
            "h0" if self.initial_state else "zero",
        ]
        return "-".join([self.kind, *flags])


class _Sequence(nn.Module):
    """A recurrent layer read from every output it returns: the output sequence, ``h_n`` and
    (LSTM) ``c_n``; with ``initial_state``, ``h_0`` (and ``c_0``) come from a hooked Linear."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.rnn = config.make()
        directions = 2 if config.bidirectional else 1
        self.states = config.layers * directions
        self.init = nn.Linear(_I, 2 * self.states * _H)
        self.head = nn.Linear(directions * _H + 2 * _H, 2)

    def forward(self, x: Tensor) -> Tensor:
        args = ()
        if self.config.initial_state:
            h0, c0 = torch.tanh(self.init(x[:, 0])).reshape(-1, 2, self.states, _H).unbind(1)
            h0, c0 = h0.transpose(0, 1), c0.transpose(0, 1)
            args = ((h0, c0),) if self.config.kind == "lstm" else (h0,)
        if not self.config.batch_first:
            x = x.transpose(0, 1)
        out, state = self.rnn(x, *args)
        h, c = state if isinstance(state, tuple) else (state, state.sin())
        out = out if self.config.batch_first else out.transpose(0, 1)
        return self.head(torch.cat([out.mean(dim=1), h[-1], c[0]], dim=1))


class _Classifier(nn.Module):
    """An Embedding, a recurrent layer and a linear head on the last output."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.embedding = nn.Embedding(7, _I)
        self.rnn = config.make()
        directions = 2 if config.bidirectional else 1
        self.head = nn.Linear(directions * _H, 2)

    def forward(self, idx: Tensor) -> Tensor:
        out, _ = self.rnn(self.embedding(idx))
        return self.head(out[:, -1])


_CONFIGS = [
    Config(kind, layers, bidirectional, batch_first, bias, initial)
    for kind in ("tanh", "relu", "gru", "lstm")
    for layers, bidirectional, batch_first, bias, initial in [
        (1, False, True, True, False),
        (1, False, False, True, True),
        (2, True, True, True, True),
        (2, False, False, False, False),
        (1, True, False, True, False),
    ]
]
_LOSSES = [s for s in SETTINGS if s.name in ("B", "B_k", "m")]


def _inputs(seed: int = 1) -> Tensor:
    return torch.randn(_B, _T, _I, dtype=_F64, generator=torch.Generator().manual_seed(seed))


def _model(config: Config) -> _Sequence:
    torch.manual_seed(0)
    return _Sequence(config).to(_F64)


def _recorded(module: nn.Module, *args: object) -> list[Use]:
    """The calls the engine's hook records for ``module(*args)``."""
    uses: list[Use] = []
    handle = module.register_forward_hook(make_hook(uses), with_kwargs=True)
    try:
        module(*args)
    finally:
        handle.remove()
    return uses


def _is_closed_form(module: nn.RNNBase, *args: object) -> bool:
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    rule = make_rule(module, names)
    uses = _recorded(module, *args)
    return rule.closed_form and rule.exact_for(uses)


@pytest.mark.parametrize("config", _CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("setting", _LOSSES, ids=lambda s: s.name)
def test_recurrent_rule_matches_reference(config: Config, setting: Setting) -> None:
    """Gramian and weighted gradient of every parameter (recurrent and others) are exact."""
    model = _model(config)
    engine = Engine(model, batch_dim=setting.batch_dim)
    losses = setting.losses(model(_inputs()))
    assert_exact(engine, losses, list(model.parameters()))


@pytest.mark.parametrize("config", _CONFIGS, ids=lambda c: c.name)
def test_recurrent_rule_is_the_closed_form(config: Config) -> None:
    """Batched inputs without training dropout get the closed form, not the fallback."""
    model = _model(config)
    x = _inputs() if config.batch_first else _inputs().transpose(0, 1)
    assert _is_closed_form(model.rnn, x)


@pytest.mark.parametrize("config", _CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("from_outputs", [False, True], ids=["steps", "outputs"])
def test_recomputation_matches_the_module(config: Config, from_outputs: bool) -> None:
    """The recurrence recomputed step by step, or from the module's output sequence for the
    last layer, gives the fused kernel's ``output``, ``h_n`` and (LSTM) ``c_n``."""
    rnn = _model(config).rnn
    x = _inputs().transpose(0, 1)  # time-major
    states = [torch.randn(rnn.num_layers * (2 if rnn.bidirectional else 1), _B, _H, dtype=_F64)]
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
    rnn = Config(kind, layers=2, batch_first=True).make().to(_F64)
    engine = Engine(rnn, batch_dim=0)
    out, h = rnn(_inputs())
    out = out.relu_()
    losses = (out**2).sum(dim=(1, 2)) + h.sin().sum(dim=(0, 2))
    assert_exact(engine, losses, list(rnn.parameters()))


@pytest.mark.parametrize("kind", ["tanh", "gru", "lstm"])
@pytest.mark.parametrize("batch_dim", [0, None])
def test_embedding_classifier_matches_reference(kind: str, batch_dim: int | None) -> None:
    torch.manual_seed(0)
    model = _Classifier(Config(kind, layers=2, bidirectional=True)).to(_F64)
    idx = torch.randint(0, 7, (_B, _T), generator=torch.Generator().manual_seed(2))
    engine = Engine(model, batch_dim=batch_dim)
    out = model(idx)
    losses = nn.functional.cross_entropy(out, torch.tensor([0, 1, 1]), reduction="none")
    if batch_dim is None:
        losses = torch.stack([losses.sum(), (out**2).sum()])
    assert_exact(engine, losses, list(model.parameters()))


def test_repeated_calls_are_stacked() -> None:
    """A recurrent layer called twice (an encoder over two sequences) sums both calls."""
    torch.manual_seed(0)
    rnn = nn.GRU(_I, _H, batch_first=True).to(_F64)
    engine = Engine(rnn, batch_dim=0)
    out_a, h_a = rnn(_inputs(1))
    out_b, _ = rnn(_inputs(2)[:, :2], h_a)
    losses = (out_a**2).sum(dim=(1, 2)) + out_b.sin().sum(dim=(1, 2))
    assert_exact(engine, losses, list(rnn.parameters()))


def test_frozen_recurrent_parameters_are_skipped() -> None:
    torch.manual_seed(0)
    model = _Sequence(Config("lstm", layers=2)).to(_F64)
    model.rnn.weight_hh_l0.requires_grad_(False)
    model.rnn.bias_ih_l1.requires_grad_(False)
    engine = Engine(model, batch_dim=0)
    losses = PER_SAMPLE.losses(model(_inputs()))
    assert_exact(engine, losses, [p for p in model.parameters() if p.requires_grad])


# ------------------------------------------------------------------------ the fallback's share
def test_dropout_while_training_uses_the_fallback() -> None:
    """Dropout between layers draws a mask the rule cannot replay: the fallback is exact."""
    torch.manual_seed(0)
    rnn = nn.GRU(_I, _H, num_layers=2, dropout=0.5, batch_first=True).to(_F64)
    assert not _is_closed_form(rnn, _inputs())
    rnn.eval()
    assert _is_closed_form(rnn, _inputs())
    rnn.train()
    engine = Engine(rnn, batch_dim=0)
    losses = (rnn(_inputs())[0] ** 2).sum(dim=(1, 2))
    assert_exact(engine, losses, list(rnn.parameters()))


def test_unbatched_and_packed_inputs_use_the_fallback() -> None:
    torch.manual_seed(0)
    rnn = nn.LSTM(_I, _H).to(_F64)
    assert not _is_closed_form(rnn, _inputs()[0])
    packed = nn.utils.rnn.pack_padded_sequence(
        _inputs().transpose(0, 1), torch.tensor([4, 3, 1]), enforce_sorted=True
    )
    assert not _is_closed_form(rnn, packed)


def test_packed_inputs_match_reference() -> None:
    torch.manual_seed(0)
    rnn = nn.GRU(_I, _H, batch_first=True).to(_F64)
    engine = Engine(rnn, batch_dim=None)
    packed = nn.utils.rnn.pack_padded_sequence(_inputs(), torch.tensor([4, 3, 1]), batch_first=True)
    _, h = rnn(packed)
    losses = torch.stack([(h**2).sum(), h.sin().sum()])
    assert_exact(engine, losses, list(rnn.parameters()))


def test_lstm_projection_uses_the_fallback() -> None:
    torch.manual_seed(0)
    rnn = nn.LSTM(_I, _H + 1, proj_size=_H, batch_first=True).to(_F64)
    assert not _is_closed_form(rnn, _inputs())
    engine = Engine(rnn, batch_dim=0)
    losses = (rnn(_inputs())[0] ** 2).sum(dim=(1, 2))
    assert_exact(engine, losses, list(rnn.parameters()))
