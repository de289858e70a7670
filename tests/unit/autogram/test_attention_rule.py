"""The closed form of ``nn.MultiheadAttention``: its projections are linear maps over positions.

Every configuration the rule supports runs through one battery against the row-by-row autograd
reference (Gramian and weighted gradient), with the losses ``[B]``, ``[B, k]`` and ``[k]``, and
must not touch the fallback; the rare options keep the exact batched-backward rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from jdopt.autogram import Engine
from jdopt.autogram._rules import AttentionRule, make_rule

from ._reference import (
    TOLERANCE,
    assert_exact,
    reference_gramian,
    relative_error,
)

_F64 = torch.float64
_B, _T, _S, _E = 3, 4, 5, 4


def _randn(*shape: int, seed: int = 1) -> Tensor:
    return torch.randn(*shape, dtype=_F64, generator=torch.Generator().manual_seed(seed))


def _losses(out: Tensor, setting: str) -> Tensor:
    """Losses of batch-first outputs ``[B, ...]``: ``[B]``, ``[B, 2]`` or ``[2]``."""
    out = out.reshape(out.shape[0], -1)
    per_sample = torch.stack([torch.sin(out).sum(dim=1), (out**2).mean(dim=1)], dim=1)
    if setting == "B":
        return per_sample.sum(dim=1)
    if setting == "B_k":
        return per_sample
    return torch.stack([per_sample[:, 0].sum(), (per_sample[:, 1] * per_sample[:, 0]).mean()])


_SETTINGS = [("B", 0), ("B_k", 0), ("k", None)]


def _assert_exact(engine: Engine, losses: Tensor, params: list[nn.Parameter]) -> None:
    """The Gramian and the weighted gradient match the reference, without the fallback."""
    assert not assert_exact(engine, losses, params)


# ------------------------------------------------------------------------ one module
@dataclass(frozen=True)
class Case:
    """A ``MultiheadAttention`` configuration and how it is called."""

    name: str
    module: dict = field(default_factory=dict)  # MultiheadAttention's options
    cross: bool = False  # keys and values from another sequence (of length _S)
    separate_values: bool = False  # values another tensor than the keys
    call: dict = field(default_factory=dict)  # forward options
    masks: Callable[[], dict] = dict  # masks, made for the call

    def make(self) -> nn.MultiheadAttention:
        torch.manual_seed(0)
        attention = nn.MultiheadAttention(_E, num_heads=2, **self.module).to(_F64)
        with torch.no_grad():  # non-zero biases: their gradients matter
            for name, param in attention.named_parameters():
                if "bias" in name:
                    param.copy_(_randn(*param.shape, seed=3))
        return attention

    def outputs(self, attention: nn.MultiheadAttention) -> Tensor:
        """The output (and the attention weights when asked for), batch first ``[B, ...]``."""
        batch_first = attention.batch_first
        query = _randn(_B, _T, _E)
        length = _S if self.cross or self.separate_values else _T
        key = _randn(_B, length, attention.kdim, seed=2) if self.cross else query
        value = _randn(_B, length, attention.vdim, seed=4) if self.separate_values else key
        order = (lambda t: t) if batch_first else (lambda t: t.transpose(0, 1))
        options = {**self.call, **self.masks()}
        out, weights = attention(order(query), order(key), order(value), **options)
        out = order(out).reshape(_B, -1)
        if weights is None:
            return out
        return torch.cat([out, weights.reshape(_B, -1)], dim=1)


def _padding() -> dict:
    mask = torch.zeros(_B, _S, dtype=torch.bool)
    mask[0, -2:] = True
    return {"key_padding_mask": mask}


def _causal() -> dict:
    return {"attn_mask": nn.Transformer.generate_square_subsequent_mask(_T, dtype=_F64)}


def _float_mask_per_head() -> dict:
    return {"attn_mask": _randn(_B * 2, _T, _T, seed=5)}


_CASES = [
    Case("self"),
    Case("self_batch_first", {"batch_first": True}),
    Case("self_weights", {"batch_first": True}, call={"need_weights": True}),
    Case("self_weights_per_head", call={"need_weights": True, "average_attn_weights": False}),
    Case("no_bias", {"bias": False, "batch_first": True}),
    Case("cross", cross=True),
    Case("cross_batch_first_padding", {"batch_first": True}, cross=True, masks=_padding),
    Case("cross_weights_padding", cross=True, call={"need_weights": True}, masks=_padding),
    Case("separate_values", {"batch_first": True}, cross=True, separate_values=True),
    Case("kdim_vdim", {"kdim": 3, "vdim": 5}, cross=True, separate_values=True),
    Case(
        "kdim_vdim_no_bias_weights",
        {"kdim": 3, "vdim": 5, "bias": False, "batch_first": True},
        cross=True,
        separate_values=True,
        call={"need_weights": True},
    ),
    Case("causal", {"batch_first": True}, masks=_causal),
    Case("causal_hint", {"batch_first": True}, call={"is_causal": True}, masks=_causal),
    Case("causal_weights", call={"need_weights": True, "is_causal": True}, masks=_causal),
    Case("mask_per_head", {"batch_first": True}, masks=_float_mask_per_head),
    Case("dropout", {"dropout": 0.5, "batch_first": True}),
]


@pytest.mark.parametrize("case", _CASES, ids=lambda c: c.name)
@pytest.mark.parametrize(("setting", "batch_dim"), _SETTINGS)
def test_projections_give_the_exact_gramian(case: Case, setting: str, batch_dim: int | None):
    """Every supported configuration: the projections' closed forms, no fallback."""
    attention = case.make()
    engine = Engine(attention, batch_dim=batch_dim)
    losses = _losses(case.outputs(attention), setting)
    _assert_exact(engine, losses, list(attention.parameters()))
    assert not engine.fallback_parameters


@pytest.mark.parametrize("case", _CASES, ids=lambda c: c.name)
def test_the_hooked_forward_is_the_modules_own(case: Case) -> None:
    """The rule runs torch's own attention code: outputs are bitwise those without hooks."""
    attention = case.make()
    torch.manual_seed(1)
    expected = case.outputs(attention)
    with Engine(attention, batch_dim=0):
        torch.manual_seed(1)
        found = case.outputs(attention)
    assert torch.equal(found, expected)


@pytest.mark.parametrize("options", [{"add_bias_kv": True}, {"add_zero_attn": True}])
def test_rare_options_keep_the_batched_backward_rule(options: dict) -> None:
    """Parameters or positions outside the projections: the exact batched-backward rule."""
    case = Case("rare", options, cross=True)
    attention = case.make()
    names = [n for n, _ in attention.named_parameters()]
    assert type(make_rule(attention, names)) is AttentionRule
    engine = Engine(attention, batch_dim=0)
    losses = _losses(case.outputs(attention), "B")
    gramian = engine.compute_gramian(losses)
    params = list(attention.parameters())
    assert relative_error(gramian, reference_gramian(losses, params)) <= TOLERANCE


@pytest.mark.parametrize(("setting", "batch_dim"), _SETTINGS)
def test_frozen_in_projection_weight(setting: str, batch_dim: int | None) -> None:
    """Only the trainable parameters count; a frozen weight's rows still carry its bias."""
    attention = Case("frozen").make()
    attention.in_proj_weight.requires_grad_(False)
    engine = Engine(attention, batch_dim=batch_dim)
    losses = _losses(Case("frozen", cross=True).outputs(attention), setting)
    params = [p for p in attention.parameters() if p.requires_grad]
    _assert_exact(engine, losses, params)


@pytest.mark.parametrize(("setting", "batch_dim"), _SETTINGS)
def test_one_module_called_as_self_and_cross_attention(setting: str, batch_dim: int | None):
    """Row blocks of ``in_proj_weight`` used by several calls (all rows, then the query's and
    the keys' and values' separately) add up per parameter before the inner product."""
    attention = Case("twice").make()
    engine = Engine(attention, batch_dim=batch_dim)
    first, second = Case("self").outputs(attention), Case("cross", cross=True).outputs(attention)
    losses = _losses(first * second.sum(dim=1, keepdim=True), setting)
    _assert_exact(engine, losses, list(attention.parameters()))


def test_a_gramian_without_retaining_the_graph_frees_it() -> None:
    """The rule needs none of the module's graph after the backward pass to the projections."""
    attention = Case("self").make()
    engine = Engine(attention, batch_dim=0)
    losses = _losses(Case("self").outputs(attention), "B")
    engine.compute_gramian(losses)  # the first Gramian is checked against backward()
    losses = _losses(Case("self").outputs(attention), "B")
    engine.compute_gramian(losses, retain_graph=False)
    engine.accumulate_grads(torch.ones_like(losses))
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        losses.backward(torch.ones_like(losses))


# ------------------------------------------------------------------------ Transformers
class _Encoder(nn.Module):
    """Embedding and positions, a 2-layer Transformer encoder, mean pooling and a head."""

    def __init__(self, batch_first: bool, dropout: float) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embedding = nn.Embedding(7, _E)
        self.positions = nn.Embedding(_T, _E)
        layer = nn.TransformerEncoderLayer(
            _E, 2, 6, dropout=dropout, batch_first=batch_first, norm_first=dropout > 0
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(_E, 3)

    def forward(self, tokens: Tensor, padding: Tensor) -> Tensor:
        h = self.embedding(tokens) + self.positions(torch.arange(_T).expand_as(tokens))
        h = h if self.batch_first else h.transpose(0, 1)
        h = self.encoder(h, src_key_padding_mask=padding)
        h = h if self.batch_first else h.transpose(0, 1)
        return self.head(h.mean(dim=1))


class _CausalDecoder(nn.Module):
    """A pre-norm causal decoder layer over a memory: self- and cross-attention."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerDecoderLayer(
            _E, 2, 6, dropout=0.0, batch_first=True, norm_first=True
        )
        self.head = nn.Linear(_E, 2)

    def forward(self, target: Tensor, memory: Tensor) -> Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(_T, dtype=target.dtype)
        return self.head(self.layer(target, memory, tgt_mask=mask, tgt_is_causal=True))


def _tokens() -> tuple[Tensor, Tensor]:
    tokens = torch.randint(0, 7, (_B, _T), generator=torch.Generator().manual_seed(2))
    padding = torch.zeros(_B, _T, dtype=torch.bool)
    padding[1, -1] = True
    return tokens, padding


# Sequence first, the feed-forward layers see the batch on dim 1: only batch_dim=None.
_ENCODERS = [(True, 0.0, *s) for s in _SETTINGS] + [(True, 0.2, *s) for s in _SETTINGS]
_ENCODERS.append((False, 0.0, "k", None))


@pytest.mark.parametrize(("batch_first", "dropout", "setting", "batch_dim"), _ENCODERS)
def test_transformer_encoder(batch_first: bool, dropout: float, setting: str, batch_dim):
    """Training mode with grad enabled: the layers take the slow path, whose projections the
    rule reads (dropout inside the attention included)."""
    torch.manual_seed(0)
    model = _Encoder(batch_first, dropout).to(_F64).train()
    engine = Engine(model, batch_dim=batch_dim)
    losses = _losses(model(*_tokens()), setting)
    _assert_exact(engine, losses, list(model.parameters()))


@pytest.mark.parametrize(("setting", "batch_dim"), _SETTINGS)
def test_causal_decoder(setting: str, batch_dim: int | None) -> None:
    torch.manual_seed(0)
    model = _CausalDecoder().to(_F64)
    engine = Engine(model, batch_dim=batch_dim)
    out = model(_randn(_B, _T, _E), _randn(_B, _S, _E, seed=2))
    _assert_exact(engine, _losses(out, setting), list(model.parameters()))


class _PassThrough(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_a_call_the_rule_cannot_see_goes_to_the_fallback() -> None:
    """Under another ``TorchFunctionMode``, torch hands the attention function to that mode,
    which runs it unrecorded: the call's parameters get their gradients from the losses."""
    attention = Case("self").make()
    engine = Engine(attention, batch_dim=0)
    with _PassThrough():
        losses = _losses(Case("self").outputs(attention), "B")
    gramian = engine.compute_gramian(losses)
    params = list(attention.parameters())
    assert relative_error(gramian, reference_gramian(losses, params)) <= TOLERANCE
    assert {id(p) for p in engine.fallback_parameters} == {id(p) for p in params}


def test_unbatched_inputs() -> None:
    """An unbatched call ``[T, E]`` is one sequence: the projections see ``[T, 1, E]``."""
    attention = Case("unbatched").make()
    engine = Engine(attention, batch_dim=None)
    query, key = _randn(_T, _E), _randn(_S, _E, seed=2)
    out, _ = attention(query, key, key)
    losses = _losses(out, "k")
    _assert_exact(engine, losses, list(attention.parameters()))
