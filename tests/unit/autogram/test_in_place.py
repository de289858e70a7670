"""In-place operations after a hooked call (``ReLU(inplace=True)``, ``out += identity``).

An output modified in place is differentiated as the module made it, so the closed forms stay
exact and no slower; a call the closed forms cannot read any more goes to the exact fallback.
The zoo (``tests/utils/architectures.py``, ``*_inplace``) runs the vision models people start
from through every loss setting; these tests state the rules one at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import jdopt.aggregation as agg
from jdopt import JDOptimizer
from jdopt.autogram import Engine, register_rule
from jdopt.autogram._rules import LinearRule
from tests.utils.architectures import ARCHITECTURES, trainable_parameters
from tests.utils.device import draw, seeded

from ._reference import TOLERANCE, assert_exact, flat, reference_gramian, relative_error
from ._settings import PER_SAMPLE, per_sample

_F64 = torch.float64
_B = 4
_IN_PLACE_ZOO = [arch for arch in ARCHITECTURES if arch.name.endswith("_inplace")]


def _randn(*shape: int, seed: int = 1) -> Tensor:
    return draw(*shape, generator=seeded(seed), dtype=_F64)


_OPS: dict[str, Callable[[Tensor], object]] = {
    "relu_": lambda y: y.relu_(),
    "mul_": lambda y: y.mul_(3.0),
    "iadd_itself": lambda y: y.add_(y.detach() ** 2),
    "on_a_slice": lambda y: y[:, :1].mul_(3.0),
    "on_a_flat_view": lambda y: y.view(-1).tanh_(),
    "twice": lambda y: y.mul_(2.0).sigmoid_(),
}


@pytest.mark.parametrize("op", _OPS.values(), ids=_OPS.keys())
@pytest.mark.parametrize("positions", [(), (3,)], ids=["2d", "3d"])
@pytest.mark.parametrize("batch_dim", [0, None])
def test_an_output_modified_in_place_is_read_as_the_module_made_it(
    op: Callable[[Tensor], object], positions: tuple[int, ...], batch_dim: int | None
) -> None:
    """The gradient of a Linear output modified in place (directly, through a slice or a view;
    on inputs ``[B, *, i]`` the output is itself a view) is the one at the output the module
    returned: the closed form stays exact and nothing goes to the fallback."""
    torch.manual_seed(0)
    first, second = nn.Linear(3, 4).to(_F64), nn.Linear(4, 2).to(_F64)
    model = nn.Sequential(first, second)
    engine = Engine(model, batch_dim=batch_dim)
    h = first(_randn(_B, *positions, 3))
    op(h)
    out = second(h).reshape(_B, -1)
    losses = per_sample(out) if batch_dim == 0 else per_sample(out).sum(dim=0)

    fallback = assert_exact(engine, losses, list(model.parameters()))

    assert not fallback


def test_an_in_place_activation_module_after_a_hooked_layer_is_exact() -> None:
    """``ReLU(inplace=True)`` right after a Linear changes the Linear's output after the call:
    the engine differentiates the output as the Linear made it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2)).to(_F64)
    engine = Engine(model, batch_dim=0)
    x = draw(5, 3, generator=seeded(1), dtype=_F64)
    losses = PER_SAMPLE.losses(model(x))

    gramian = engine.compute_gramian(losses)

    expected = reference_gramian(losses, trainable_parameters(model))
    assert relative_error(gramian, expected) <= TOLERANCE


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("batch_dim", [0, None])
def test_attention_whose_output_is_modified_in_place_keeps_the_closed_form(
    batch_first: bool, batch_dim: int | None
) -> None:
    """The attention rule reads the gradients of the module's projections: its output (a view
    of the out-projection's) modified in place is read at the out-projection's edge."""
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(4, num_heads=2, batch_first=batch_first).to(_F64)
    engine = Engine(attention, batch_dim=batch_dim)
    x = _randn(_B, 3, 4)
    h = x if batch_first else x.transpose(0, 1)
    out, _ = attention(h, h, h, need_weights=False)
    out += h
    torch.tanh_(out)
    out = out if batch_first else out.transpose(0, 1)
    losses = PER_SAMPLE.losses(out.reshape(_B, -1))
    losses = losses if batch_dim == 0 else losses[:3]

    fallback = assert_exact(engine, losses, list(attention.parameters()))

    assert not fallback


class _TransposedLinear(nn.Linear):
    """A Linear whose output is a transposed view, not a reshape of its base."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias).T.contiguous().T


@pytest.mark.parametrize("modified", [False, True])
def test_a_view_output_that_is_not_a_reshape_goes_to_the_fallback_once_modified(
    modified: bool,
) -> None:
    """An in-place operation on a view bypasses the view's own node: such an output is only
    readable at its base when it is a reshape of the base, otherwise the call goes to the
    fallback."""
    with register_rule(_TransposedLinear, LinearRule):
        torch.manual_seed(0)
        layer = _TransposedLinear(3, 4).to(_F64)
        engine = Engine(layer, batch_dim=0)
        out = layer(_randn(_B, 3))
        if modified:
            out.relu_()
        fallback = assert_exact(engine, PER_SAMPLE.losses(out), list(layer.parameters()))
    assert bool(fallback) is modified


@pytest.mark.parametrize("checked_first", [False, True], ids=["first_gramian", "later_gramian"])
def test_an_input_modified_in_place_that_the_module_saved_raises_autograds_error(
    checked_first: bool,
) -> None:
    """A Linear saves its input for its weight's gradient: modifying the input in place after
    the call breaks the losses' own backward pass, and the engine says so with autograd's
    error rather than read the modified values, on the first Gramian as on later ones."""
    torch.manual_seed(0)
    linear = nn.Linear(3, 2).to(_F64)
    engine = Engine(linear, batch_dim=0)
    if checked_first:  # the first Gramian is checked against backward
        engine.compute_gramian(PER_SAMPLE.losses(linear(_randn(_B, 3))))
    x = _randn(_B, 3, seed=2)
    losses = PER_SAMPLE.losses(linear(x))
    x.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        engine.compute_gramian(losses)


def test_an_input_modified_in_place_that_the_module_did_not_save_is_exact() -> None:
    """With its weight frozen, a Linear keeps no input for the backward pass: modifying the
    input afterwards is legal, and the call goes to the fallback (exact)."""
    torch.manual_seed(0)
    linear = nn.Linear(3, 2).to(_F64)
    linear.weight.requires_grad_(False)
    engine = Engine(linear, batch_dim=0)
    x = _randn(_B, 3)
    out = linear(x)
    x.mul_(2)
    losses = PER_SAMPLE.losses(out * out.detach())

    fallback = assert_exact(engine, losses, [linear.bias])

    assert fallback == {id(linear.bias)}


@pytest.mark.parametrize("arch", _IN_PLACE_ZOO, ids=lambda a: a.name)
def test_the_in_place_zoo_uses_the_closed_forms(arch) -> None:
    """In-place operations on the outputs of Linear, Conv, norm, Embedding and attention
    layers cost no fallback."""
    model, inputs = arch.make()
    engine = Engine(model, batch_dim=0)
    engine.compute_gramian(PER_SAMPLE.losses(arch.outputs(model, inputs)))
    assert not engine.fallback_parameters


@pytest.mark.parametrize("arch", _IN_PLACE_ZOO, ids=lambda a: a.name)
@pytest.mark.parametrize(("shape", "batch_dim"), [("[B]", 0), ("[B, k]", 0), ("[k]", None)])
def test_jdoptimizer_steps_equal_autojac_steps(arch, shape: str, batch_dim: int | None) -> None:
    """JDOptimizer with UPGrad on the Gramian engine takes the steps of the full-Jacobian
    engine on models with in-place operations."""
    models = [arch.make()[0] for _ in range(2)]
    inputs = arch.make()[1]
    gram = JDOptimizer(
        torch.optim.SGD(models[0].parameters(), lr=0.1),
        aggregator=agg.UPGrad(),
        model=models[0],
        batch_dim=batch_dim,
    )
    jac = JDOptimizer(
        torch.optim.SGD(models[1].parameters(), lr=0.1), aggregator=agg.UPGrad(), engine="autojac"
    )
    for jd, model in ((gram, models[0]), (jac, models[1])):
        for step in range(2):
            jd.zero_grad()
            torch.manual_seed(step)  # the same dropout masks for both engines
            losses = per_sample(arch.outputs(model, inputs))
            losses = {"[B]": losses.sum(dim=1), "[B, k]": losses, "[k]": losses.mean(dim=0)}
            jd.step(losses[shape])
    assert gram.last_step.engine == "autogram" and jac.last_step.engine == "autojac"
    after = [flat(trainable_parameters(model)) for model in models]
    assert torch.allclose(after[0], after[1], atol=1e-9)


@pytest.mark.parametrize("arch", _IN_PLACE_ZOO, ids=lambda a: a.name)
@pytest.mark.parametrize("batch_dim", [0, None])
def test_gramian_of_rows_with_in_place_operations(arch, batch_dim: int | None) -> None:
    """``compute_gramian_of_rows`` reads modified outputs the same way."""
    model, inputs = arch.make()
    params = trainable_parameters(model)
    engine = Engine(model, batch_dim=batch_dim)
    features = arch.outputs(model, inputs)
    cotangents = draw(3, *features.shape, generator=seeded(0), dtype=_F64)
    rows = torch.stack(
        [
            flat(torch.autograd.grad((c * features).sum(), params, retain_graph=True))
            for c in cotangents
        ]
    )
    gramian = engine.compute_gramian_of_rows([features], [cotangents])
    assert relative_error(gramian, rows @ rows.T) <= TOLERANCE
