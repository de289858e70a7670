"""Recurrent layers for the tests of their rule: configurations, models reading every output
of the layer, and whether a call gets the closed form."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from jdopt.autogram._hooks import make_hook
from jdopt.autogram._rules import Use, make_rule
from tests.utils.device import draw, seeded

from ._settings import SETTINGS

F64 = torch.float64
B, T, IN, H = 3, 4, 3, 2


@dataclass(frozen=True)
class Config:
    """A recurrent layer's configuration; ``kind``: tanh, relu, gru or lstm."""

    kind: str
    layers: int = 1
    bidirectional: bool = False
    batch_first: bool = True
    bias: bool = True
    initial_state: bool = False

    def make(self, input_size: int = IN) -> nn.RNNBase:
        options = {
            "num_layers": self.layers,
            "bidirectional": self.bidirectional,
            "batch_first": self.batch_first,
            "bias": self.bias,
        }
        if self.kind in ("tanh", "relu"):
            return nn.RNN(input_size, H, nonlinearity=self.kind, **options)
        return {"gru": nn.GRU, "lstm": nn.LSTM}[self.kind](input_size, H, **options)

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


class SequenceModel(nn.Module):
    """A recurrent layer read from every output it returns: the output sequence, ``h_n`` and
    (LSTM) ``c_n``; with ``initial_state``, ``h_0`` (and ``c_0``) come from a hooked Linear."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.rnn = config.make()
        directions = 2 if config.bidirectional else 1
        self.states = config.layers * directions
        self.init = nn.Linear(IN, 2 * self.states * H)
        self.head = nn.Linear(directions * H + 2 * H, 2)

    def forward(self, x: Tensor) -> Tensor:
        args = ()
        if self.config.initial_state:
            h0, c0 = torch.tanh(self.init(x[:, 0])).reshape(-1, 2, self.states, H).unbind(1)
            h0, c0 = h0.transpose(0, 1), c0.transpose(0, 1)
            args = ((h0, c0),) if self.config.kind == "lstm" else (h0,)
        if not self.config.batch_first:
            x = x.transpose(0, 1)
        out, state = self.rnn(x, *args)
        h, c = state if isinstance(state, tuple) else (state, state.sin())
        out = out if self.config.batch_first else out.transpose(0, 1)
        return self.head(torch.cat([out.mean(dim=1), h[-1], c[0]], dim=1))


class Classifier(nn.Module):
    """An Embedding, a recurrent layer and a linear head on the last output."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.embedding = nn.Embedding(7, IN)
        self.rnn = config.make()
        directions = 2 if config.bidirectional else 1
        self.head = nn.Linear(directions * H, 2)

    def forward(self, idx: Tensor) -> Tensor:
        out, _ = self.rnn(self.embedding(idx))
        return self.head(out[:, -1])


CONFIGS = [
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
LOSSES = [s for s in SETTINGS if s.name in ("B", "B_k", "m")]


def inputs(seed: int = 1) -> Tensor:
    """Batch-first inputs ``[B, T, IN]``."""
    return draw(B, T, IN, generator=seeded(seed), dtype=F64)


def model_of(config: Config) -> SequenceModel:
    """The :class:`SequenceModel` of ``config``, in float64."""
    torch.manual_seed(0)
    return SequenceModel(config).to(F64)


def _recorded(module: nn.Module, *args: object) -> list[Use]:
    """The calls the engine's hook records for ``module(*args)``."""
    uses: list[Use] = []
    handle = module.register_forward_hook(make_hook(uses), with_kwargs=True)
    try:
        module(*args)
    finally:
        handle.remove()
    return uses


def is_closed_form(module: nn.RNNBase, *args: object) -> bool:
    """Whether the engine would give the call ``module(*args)`` the closed form."""
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    rule = make_rule(module, names)
    uses = _recorded(module, *args)
    return rule.closed_form and rule.exact_for(uses)
