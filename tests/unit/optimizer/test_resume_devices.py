"""Resuming a random method from a checkpoint loaded onto another device.

``torch.load(..., map_location="cuda")`` moves every tensor of a checkpoint to the GPU, the
state of a ``torch.Generator`` (a CPU ``uint8`` tensor) included: loading it moves it back.
Without a GPU, the move is emulated by a state that is not the one ``get_state()`` gave (a
copy, a non-contiguous view) and by the ``meta`` device; a state of the wrong dtype or size
is refused with a message that says what is wrong.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import jdopt.aggregation as agg
from jdopt import JDOptimizer

from ._helpers import flat_params, mlp, sample_losses

KEY = "weighting._extra_state"


def _seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


METHODS = {
    "Random": lambda: agg.Random(generator=_seeded()),
    "PCGrad": lambda: agg.PCGrad(generator=_seeded()),
}


def _train(model: nn.Module, jd: JDOptimizer, steps: range) -> None:
    for step in steps:
        jd.zero_grad()
        jd.step(sample_losses(model, step))


def _through_file(state: dict, map_location) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location=map_location, weights_only=True)


def _resume(method: str, checkpoint: dict, change=None) -> nn.Module:
    """A new model and JDOptimizer (their generator desynchronised) that load ``checkpoint``
    (after ``change`` edits the generator's state) and train on."""
    model = mlp(seed=1)
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=METHODS[method]())
    _train(model, jd, range(1))
    model.load_state_dict(checkpoint["model"])
    if change is not None:
        aggregator = checkpoint["jd"]["jdopt"]["aggregator"]
        aggregator[KEY] = change(aggregator[KEY])
    jd.load_state_dict(checkpoint["jd"])
    _train(model, jd, range(2, 4))
    return model


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize(
    ("map_location", "change"),
    [
        ("cpu", None),
        (lambda storage, location: storage, None),
        ("cpu", lambda state: torch.stack([state, state], dim=1)[:, 0]),  # not contiguous
        ("cpu", lambda state: state.clone()),  # a copy, as a move gives
    ],
    ids=["cpu", "as_saved", "non_contiguous", "copy"],
)
def test_resume_through_torch_load_continues_the_same_draws(method, map_location, change) -> None:
    """A checkpoint saved with ``torch.save`` and loaded with ``map_location`` resumes the
    random method where it stopped: the same steps as an uninterrupted run."""
    model = mlp()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=METHODS[method]())
    _train(model, jd, range(2))
    saved = {"model": model.state_dict(), "jd": jd.state_dict()}
    checkpoint = _through_file(saved, map_location)
    _train(model, jd, range(2, 4))
    assert torch.equal(flat_params(_resume(method, checkpoint, change)), flat_params(model))


def _random() -> agg.Random:
    return agg.Random(generator=_seeded())


def test_a_state_of_another_dtype_is_refused_clearly() -> None:
    state = _random().state_dict()
    state[KEY] = state[KEY].to(torch.float64)
    with pytest.raises(TypeError, match=r"torch\.uint8 tensor.*Found dtype torch\.float64"):
        _random().load_state_dict(state)


def test_a_state_that_is_not_a_tensor_is_refused_clearly() -> None:
    state = _random().state_dict()
    state[KEY] = state[KEY].tolist()
    with pytest.raises(TypeError, match=r"torch\.uint8 tensor.*Found list"):
        _random().load_state_dict(state)


@pytest.mark.parametrize(
    "shape_of",
    [lambda s: s[:16].clone(), lambda s: s.reshape(1, -1)],
    ids=["a_cuda_generators_size", "two_dimensional"],
)
def test_a_state_of_another_shape_is_refused_clearly(shape_of) -> None:
    """16 bytes is the state of a CUDA generator: it cannot resume a CPU one."""
    state = _random().state_dict()
    state[KEY] = shape_of(state[KEY])
    with pytest.raises(ValueError, match="another kind of device"):
        _random().load_state_dict(state)


def test_a_state_on_the_meta_device_is_refused_clearly() -> None:
    """A device other than the CPU: the state is moved back, unless it has no data."""
    state = _random().state_dict()
    state[KEY] = state[KEY].to("meta")
    with pytest.raises(ValueError, match="meta device"):
        _random().load_state_dict(state)


def test_a_refused_state_leaves_the_generator_as_it_was() -> None:
    method = _random()
    before = method.weighting.generator.get_state()
    state = method.state_dict()
    state[KEY] = state[KEY].to(torch.float32)
    with pytest.raises(TypeError):
        method.load_state_dict(state)
    assert torch.equal(method.weighting.generator.get_state(), before)
