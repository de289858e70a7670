"""``Engine(*modules, batch_dim, method)`` checks its arguments at construction: each refusal
names what was expected and what was found."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jdopt.autogram import Engine
from tests.utils.architectures import ARCHITECTURES

from ._models import mlp


@pytest.mark.parametrize("outer_first", [True, False])
def test_modules_that_contain_each_other_are_refused(outer_first: bool) -> None:
    """A module and one of its submodules, in either order: a ``ValueError``."""
    model = mlp()
    modules = (model, model[2]) if outer_first else (model[2], model)
    with pytest.raises(ValueError, match="contain each other"):
        Engine(*modules, batch_dim=0)


def test_a_module_given_twice_is_refused() -> None:
    """The same module twice: a ``ValueError`` that says so."""
    linear = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="given to Engine twice"):
        Engine(linear, linear, batch_dim=0)


@pytest.mark.parametrize(
    "module",
    [torch.randn(3), [nn.Linear(2, 2)], nn.Linear(2, 2).weight],
    ids=lambda m: type(m).__name__,
)
def test_non_modules_are_refused(module: object) -> None:
    """A tensor, a list or a parameter instead of a module: a ``TypeError``."""
    with pytest.raises(TypeError, match=r"nn\.Module"):
        Engine(module, batch_dim=0)  # type: ignore[arg-type]


def test_no_module_is_refused() -> None:
    """At least one module: a ``ValueError`` otherwise."""
    with pytest.raises(ValueError, match="at least one module"):
        Engine(batch_dim=0)


@pytest.mark.parametrize("batch_dim", ["0", 0.0, True])
def test_batch_dim_of_the_wrong_type_is_refused(batch_dim: object) -> None:
    """``batch_dim`` is an ``int`` or ``None`` (not a bool): a ``TypeError`` names it."""
    with pytest.raises(TypeError, match="batch_dim"):
        Engine(mlp(), batch_dim=batch_dim)  # type: ignore[arg-type]


def test_an_unknown_method_is_refused() -> None:
    """``method`` is ``'auto'`` or a known way: the error lists them and shows the value."""
    model, _ = ARCHITECTURES[0].make()
    with pytest.raises(ValueError, match="'auto'") as info:
        Engine(model, batch_dim=0, method="fastest")
    assert "'fastest'" in str(info.value) and "'inner'" in str(info.value)
