"""The test suite's device switch refuses, on every device, the draws a GPU would refuse.

``GeneratorDeviceCheck`` (pushed for the session wherever the default device is set) refuses a
random factory call that draws from a generator onto the default device; the draws of
``tests/utils/device.py`` pass, and give the numbers of a plain CPU draw.
"""

from __future__ import annotations

import pytest
import torch

from tests.utils.device import (
    CPU,
    DEVICE,
    GeneratorDeviceCheck,
    draw,
    draw_integers,
    draw_permutation,
    draw_uniform,
    seeded,
)

FACTORIES = {
    "randn": lambda **kw: torch.randn(2, 3, **kw),
    "rand": lambda **kw: torch.rand(2, 3, **kw),
    "randint": lambda **kw: torch.randint(0, 5, (2, 3), **kw),
    "randperm": lambda **kw: torch.randperm(6, **kw),
}


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("device", [{}, {"device": DEVICE}], ids=["default", "DEVICE"])
def test_a_generator_draw_onto_the_default_device_is_refused(factory: str, device: dict):
    """Without ``device=``, or with ``device=DEVICE``, the numbers would go to the GPU."""
    with GeneratorDeviceCheck(), pytest.raises(RuntimeError, match="draw, draw_uniform"):
        FACTORIES[factory](generator=seeded(0), **device)


@pytest.mark.parametrize("factory", FACTORIES)
def test_draws_on_the_generators_device_or_without_a_generator_pass(factory: str):
    """``device=CPU`` with a CPU generator, and no generator at all, draw as usual."""
    with GeneratorDeviceCheck():
        on_cpu = FACTORIES[factory](generator=seeded(0), device=CPU)
        FACTORIES[factory]()
    assert torch.equal(on_cpu, FACTORIES[factory](generator=seeded(0), device=CPU))


def test_the_suites_draws_pass_and_give_the_cpu_numbers():
    """``draw`` and its siblings: the numbers of the same draw on the CPU, on ``DEVICE``."""
    with GeneratorDeviceCheck():
        found = [
            draw(2, 3, generator=seeded(1)),
            draw_uniform(2, 3, generator=seeded(2)),
            draw_integers(0, 5, (2, 3), generator=seeded(3)),
            draw_permutation(6, generator=seeded(4)),
        ]
    expected = [
        torch.randn(2, 3, generator=seeded(1), device=CPU),
        torch.rand(2, 3, generator=seeded(2), device=CPU),
        torch.randint(0, 5, (2, 3), generator=seeded(3), device=CPU),
        torch.randperm(6, generator=seeded(4), device=CPU),
    ]
    for f, e in zip(found, expected, strict=True):
        assert f.device.type == DEVICE.type and torch.equal(f.cpu(), e)
