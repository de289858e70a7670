"""The closed form of ``nn.MultiheadAttention``: its projections are linear maps over positions.

Every configuration the rule supports runs through one battery against the row-by-row autograd
reference (Gramian and weighted gradient), with the losses ``[B]``, ``[B, k]`` and ``[k]``, and
must not touch the fallback; the rare options keep the exact batched-backward rule. Transformer
layers built on it are in ``test_transformer_rules.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from jdopt.autogram import Engine
from jdopt.autogram._rules import AttentionRule, make_rule
from tests.utils.device import DEFAULT, DEVICE

from ._attention_cases import (
    CASES,
    F64,
    SETTINGS,
    Case,
    E,
    S,
    T,
    assert_closed_form_exact,
    losses_of,
    randn,
)
from ._reference import TOLERANCE, assert_exact, reference_gramian, relative_error


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize(("setting", "batch_dim"), SETTINGS)
def test_projections_give_the_exact_gramian(case: Case, setting: str, batch_dim: int | None):
    """Every supported configuration: the projections' closed forms, no fallback."""
    attention = case.make()
    engine = Engine(attention, batch_dim=batch_dim)
    losses = losses_of(case.outputs(attention), setting)
    assert_closed_form_exact(engine, losses, list(attention.parameters()))
    assert not engine.fallback_parameters


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
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
    losses = losses_of(case.outputs(attention), "B")
    gramian = engine.compute_gramian(losses)
    params = list(attention.parameters())
    assert relative_error(gramian, reference_gramian(losses, params)) <= TOLERANCE


@pytest.mark.parametrize(("setting", "batch_dim"), SETTINGS)
def test_a_frozen_in_projection_weight_is_left_out(setting: str, batch_dim: int | None) -> None:
    """Only the trainable parameters count; a frozen weight's rows still carry its bias."""
    attention = Case("frozen").make()
    attention.in_proj_weight.requires_grad_(False)
    engine = Engine(attention, batch_dim=batch_dim)
    losses = losses_of(Case("frozen", cross=True).outputs(attention), setting)
    params = [p for p in attention.parameters() if p.requires_grad]
    assert_closed_form_exact(engine, losses, params)


@pytest.mark.parametrize(("setting", "batch_dim"), SETTINGS)
def test_calls_as_self_and_cross_attention_add_up(setting: str, batch_dim: int | None):
    """Row blocks of ``in_proj_weight`` used by several calls (all rows, then the query's and
    the keys' and values' separately) add up per parameter before the inner product."""
    attention = Case("twice").make()
    engine = Engine(attention, batch_dim=batch_dim)
    first, second = Case("self").outputs(attention), Case("cross", cross=True).outputs(attention)
    losses = losses_of(first * second.sum(dim=1, keepdim=True), setting)
    assert_closed_form_exact(engine, losses, list(attention.parameters()))


def test_a_gramian_without_retaining_the_graph_frees_it() -> None:
    """The rule needs none of the module's graph after the backward pass to the projections."""
    attention = Case("self").make()
    engine = Engine(attention, batch_dim=0)
    losses = losses_of(Case("self").outputs(attention), "B")
    engine.compute_gramian(losses)  # the first Gramian is checked against backward()
    losses = losses_of(Case("self").outputs(attention), "B")
    engine.compute_gramian(losses, retain_graph=False)
    engine.accumulate_grads(torch.ones_like(losses))
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        losses.backward(torch.ones_like(losses))


class _PassThrough(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _OwnAttention(TorchFunctionMode):
    """Runs the attention function its own way: with every mode switched off."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.multi_head_attention_forward:
            with torch._C.DisableTorchFunction():
                return func(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "mode", [_PassThrough, lambda: torch.device(DEVICE)], ids=["pass_through", "torch.device"]
)
def test_a_call_another_mode_lets_through_keeps_the_closed_forms(mode: Callable) -> None:
    """Under another ``TorchFunctionMode`` that lets the attention function run (a default
    device's among them), the call is recorded: the closed forms, no fallback."""
    attention = Case("self").make()
    engine = Engine(attention, batch_dim=0)
    with mode():
        losses = losses_of(Case("self").outputs(attention), "B")
    assert_closed_form_exact(engine, losses, list(attention.parameters()))


def test_the_closed_forms_hold_under_a_default_device() -> None:
    """``torch.set_default_device`` puts its mode under every other: the projections keep
    their closed forms, with the exact Gramian."""
    torch.set_default_device(DEVICE)
    try:
        attention = Case("self").make()
        engine = Engine(attention, batch_dim=0)
        losses = losses_of(Case("self").outputs(attention), "B")
        params = list(attention.parameters())
        gramian = engine.compute_gramian(losses)
        assert relative_error(gramian, reference_gramian(losses, params)) <= TOLERANCE
        assert not engine.fallback_parameters
    finally:
        torch.set_default_device(DEFAULT)


def test_a_call_another_mode_runs_its_own_way_goes_to_the_fallback() -> None:
    """A mode that runs the attention function its own way hides the projections from the
    rule: the call's parameters get their gradients from the losses, exactly."""
    attention = Case("self").make()
    engine = Engine(attention, batch_dim=0)
    with _OwnAttention():
        losses = losses_of(Case("self").outputs(attention), "B")
    gramian = engine.compute_gramian(losses)
    params = list(attention.parameters())
    assert relative_error(gramian, reference_gramian(losses, params)) <= TOLERANCE
    assert {id(p) for p in engine.fallback_parameters} == {id(p) for p in params}


def test_unbatched_inputs_are_one_sequence() -> None:
    """An unbatched call ``[T, E]`` is one sequence: the projections see ``[T, 1, E]``."""
    attention = Case("unbatched").make()
    engine = Engine(attention, batch_dim=None)
    query, key = randn(T, E), randn(S, E, seed=2)
    out, _ = attention(query, key, key)
    losses = losses_of(out, "k")
    assert_closed_form_exact(engine, losses, list(attention.parameters()))


def test_sequence_first_attention_weights_in_the_losses_are_exact() -> None:
    """Sequence first, the outputs are ``[T, B, d]`` but the attention weights ``[B, T, S]``:
    losses of both are exact."""
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(4, num_heads=2).to(F64)
    x = randn(3, 4, 4)  # [T, B, d]
    engine = Engine(attention, batch_dim=0)
    out, weights = attention(x, x, x)
    losses = (out**2).sum(dim=(0, 2)) + (weights**2).sum(dim=(1, 2))
    assert_exact(engine, losses, list(attention.parameters()))
