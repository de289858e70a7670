"""jdopt's scalarizers give TorchJD 0.18's values and gradients on the same inputs (float64),
over several steps for the stateful ones. Runs where torchjd >= 0.18 is installed (the test
extra installs it)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import jdopt.scalarization as ours
from tests.utils.device import DEVICE, draw_uniform, seeded

theirs = pytest.importorskip("torchjd.scalarization")  # TorchJD >= 0.18 has it

F64 = torch.float64
M = 3


def _tensor(*entries: float) -> torch.Tensor:
    return torch.tensor(entries, dtype=F64)


PAIRS: dict[str, Callable[[object], object]] = {
    "Sum": lambda lib: lib.Sum(),
    "Mean": lambda lib: lib.Mean(),
    "Constant": lambda lib: lib.Constant(_tensor(1.0, 0.5, 2.0)),
    "GeometricMean": lambda lib: lib.GeometricMean(),
    "STCH": lambda lib: lib.STCH(0.3, weights=_tensor(0.2, 0.3, 0.5), reference=_tensor(0, 0.1, 0)),
    "PBI": lambda lib: lib.PBI(5.0, _tensor(1.0, 2.0, 0.5), reference=_tensor(0.1, 0, 0)),
    "COSMOS": lambda lib: lib.COSMOS(0.7, _tensor(0.2, 0.5, 0.3)),
    "UW": lambda lib: lib.UW(M),
    "IMTLL": lambda lib: lib.IMTLL(M),
    "DWA": lambda lib: lib.DWA(temperature=1.5),
    "FAMO": lambda lib: lib.FAMO(M, lr=0.1),
}


def _losses(step: int) -> torch.Tensor:
    return (0.5 + draw_uniform(M, generator=seeded(step), dtype=F64)).requires_grad_()


def _trajectory(scalarizer, steps: int = 8) -> list[torch.Tensor]:
    """Values and gradients over steps; DWA's epochs are two steps, FAMO updates on the
    paper's protocol (the losses after the step, here the next step's), the learned
    parameters move by a fixed rule."""
    scalarizer = scalarizer.to(DEVICE, F64)
    found = []
    for step in range(steps):
        values = _losses(step)
        out = scalarizer(values)
        params = [values, *scalarizer.parameters()]
        grads = torch.autograd.grad(out, params, allow_unused=True)
        found += [out.detach(), *(g for g in grads if g is not None)]
        if isinstance(scalarizer, ours.DWA | theirs.DWA) and step % 2 == 1:
            scalarizer.step()
        if isinstance(scalarizer, ours.FAMO | theirs.FAMO):
            scalarizer.update(_losses(step + 100).detach())
        with torch.no_grad():
            for p, g in zip(scalarizer.parameters(), grads[1:], strict=True):
                if g is not None:  # TorchJD's FAMO logits: a parameter without a gradient
                    p.sub_(0.1 * g)
    return found


@pytest.mark.parametrize("name", list(PAIRS))
def test_values_and_gradients_agree_with_torchjd(name: str) -> None:
    expected = _trajectory(PAIRS[name](theirs))
    found = _trajectory(PAIRS[name](ours))
    assert len(found) == len(expected)
    for a, b in zip(found, expected, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14), (a, b)
