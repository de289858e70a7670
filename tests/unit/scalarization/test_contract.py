"""What every scalarizer promises: a scalar on the values' device and dtype, clear errors on
bad input, exact resume from ``state_dict``, and ``reset``."""

from __future__ import annotations

import copy

import pytest
import torch

from jdopt.scalarization import (
    COSMOS,
    DWA,
    FAMO,
    IMTLL,
    PBI,
    STCH,
    UW,
    Constant,
    GeometricMean,
    Mean,
    Random,
    Scalarizer,
    Sum,
)
from tests.utils.device import DEVICE, draw_uniform, seeded

M = 3


def _all() -> dict[str, Scalarizer]:
    ones = torch.ones(M)
    return {
        "Sum": Sum(),
        "Mean": Mean(),
        "Constant": Constant(torch.tensor([1.0, 0.5, 2.0])),
        "Random": Random(generator=seeded(0)),
        "GeometricMean": GeometricMean(),
        "STCH": STCH(0.3, weights=torch.tensor([0.2, 0.3, 0.5])),
        "PBI": PBI(5.0, ones),
        "COSMOS": COSMOS(0.5, ones),
        "UW": UW(M),
        "IMTLL": IMTLL(M),
        "DWA": DWA(),
        "FAMO": FAMO(M),
    }


NAMES = list(_all())


def _losses(step: int) -> torch.Tensor:
    return 0.5 + draw_uniform(M, generator=seeded(100 + step))


def _run(scalarizer: Scalarizer, steps: range) -> list[torch.Tensor]:
    outs = []
    for step in steps:
        outs.append(scalarizer(_losses(step)).detach())
        if isinstance(scalarizer, DWA) and step % 2 == 1:
            scalarizer.step()
    return outs


@pytest.mark.parametrize("name", NAMES)
def test_the_result_is_a_scalar_with_the_values_dtype_and_device(name: str) -> None:
    scalarizer = _all()[name].to(DEVICE)
    for dtype in (torch.float32, torch.float64):
        out = scalarizer.to(dtype)(_losses(0).to(dtype))
        assert out.shape == () and out.dtype == dtype and out.device == _losses(0).device


@pytest.mark.parametrize("name", NAMES)
def test_resuming_from_state_dict_continues_exactly(name: str) -> None:
    scalarizer = _all()[name].to(DEVICE)
    _run(scalarizer, range(5))
    saved = copy.deepcopy(scalarizer.state_dict())
    expected = _run(scalarizer, range(5, 9))
    resumed = _all()[name].to(DEVICE)
    resumed.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(_run(resumed, range(5, 9)), expected, strict=True))


@pytest.mark.parametrize("name", ["DWA", "FAMO", "UW", "IMTLL"])
def test_reset_gives_a_fresh_scalarizers_results(name: str) -> None:
    scalarizer = _all()[name].to(DEVICE)
    first = _run(scalarizer, range(6))
    if isinstance(scalarizer, UW | IMTLL):  # learned: move the parameters as training would
        with torch.no_grad():
            next(scalarizer.parameters()).add_(0.5)
    assert not all(
        torch.equal(a, b) for a, b in zip(_run(scalarizer, range(6)), first, strict=True)
    )
    scalarizer.reset()
    assert all(torch.equal(a, b) for a, b in zip(_run(scalarizer, range(6)), first, strict=True))
    assert scalarizer.stateful


@pytest.mark.parametrize("name", NAMES)
def test_bad_values_are_refused_clearly(name: str) -> None:
    scalarizer = _all()[name]
    with pytest.raises(TypeError, match="tensor of values"):
        scalarizer([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="non-empty floating-point"):
        scalarizer(torch.ones(0))
    with pytest.raises(ValueError, match="non-empty floating-point"):
        scalarizer(torch.ones(M, dtype=torch.long))


@pytest.mark.parametrize("name", ["Constant", "STCH", "PBI", "COSMOS", "UW", "IMTLL", "FAMO"])
def test_values_of_another_shape_than_the_parameters_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="should have the shape of the values"):
        _all()[name](torch.ones(M + 1))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: STCH(0.0), "mu"),
        (lambda: PBI(-1.0, torch.ones(2)), "theta"),
        (lambda: PBI(1.0, torch.zeros(2)), "nonzero"),
        (lambda: COSMOS(-0.1, torch.ones(2)), "lambda_"),
        (lambda: DWA(temperature=0.0), "temperature"),
        (lambda: UW(0), "shape"),
        (lambda: IMTLL((2, -1)), "shape"),
        (lambda: FAMO(2, lr=-1.0), "lr"),
        (lambda: FAMO(2, min_losses=torch.zeros(3)), "min_losses"),
        (lambda: Constant([1.0, 2.0]), "weights"),
    ],
)
def test_invalid_arguments_are_refused(make, match: str) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_repr_is_the_constructor_call_and_str_the_name() -> None:
    assert repr(STCH(0.5)) == "STCH(mu=0.5, weights=None, reference=None)"
    assert repr(UW(3)) == "UW(shape=(3,))"
    assert repr(FAMO(2)) == "FAMO(shape=(2,), lr=0.025, weight_decay=0.001)"
    assert str(DWA()) == "DWA"
