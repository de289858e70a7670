"""``mtl_backward`` refuses invalid features and losses before any ``.grad`` changes."""

from __future__ import annotations

import pytest

from jdopt.autojac import mtl_backward
from tests.utils.reference import Recorder

from ._mtl_setup import trunk_and_heads


def test_invalid_features_are_refused_before_any_grad_changes() -> None:
    trunk, _heads, features, losses = trunk_and_heads()
    with pytest.raises(ValueError, match="require grad"):
        mtl_backward(losses, features.detach(), Recorder())
    with pytest.raises(ValueError, match="one entry per task"):
        mtl_backward(losses, features, Recorder(), tasks_params=[[]])
    with pytest.raises(TypeError, match="features"):
        mtl_backward(losses, "features", Recorder())
    assert all(p.grad is None for p in trunk.parameters())


def test_invalid_losses_get_the_losses_error_with_features() -> None:
    _, _, features, _ = trunk_and_heads()
    for bad in (None, 3.0):
        with pytest.raises(TypeError, match="`losses` should be a tensor"):
            mtl_backward(bad, features, Recorder())
