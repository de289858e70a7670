"""jdopt's versions of the methods TorchJD 0.18 added give TorchJD 0.18's numbers (float64,
seeded random Jacobians; stateful methods over a sequence of steps)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import version

import pytest
import torch
from torch import Tensor

import jdopt.aggregation as agg
from tests.utils.device import draw, seeded

F64 = torch.float64
SHAPES = [(2, 5), (3, 7), (5, 9)]


@pytest.fixture(scope="module")
def tjd():
    """``torchjd.aggregation``, or a skip when TorchJD 0.18 is not installed.

    ``pytest.importorskip("torchjd", minversion="0.18")`` would always skip: TorchJD has no
    ``__version__``, so the installed distribution's version is read instead."""
    pytest.importorskip("torchjd")
    found = version("torchjd")
    if tuple(int(part) for part in found.split(".")[:2]) < (0, 18):
        pytest.skip(f"needs torchjd>=0.18, found {found}")
    return importlib.import_module("torchjd.aggregation")


def _jacobians(seed: int) -> list[Tensor]:
    g = seeded(seed)
    return [draw(m, n, generator=g, dtype=F64).cpu() for m, n in SHAPES for _ in range(2)]


def _assert_close(ours: Tensor, theirs: Tensor, rtol: float, label: str) -> None:
    scale = float(theirs.abs().max())
    error = float((ours - theirs.to(ours)).abs().max())
    assert error <= rtol * scale, f"{label}: {error:.2e} > {rtol:.0e} × {scale:.2e}"


def _compare(
    make_ours: Callable,
    make_theirs: Callable,
    rtol: float,
    steps: int = 1,
    gramian: bool = False,
    rows: int | None = None,
) -> None:
    """The two methods on each Jacobian (with ``rows`` rows, if given) or its Gramian (for
    weightings), ``steps`` calls in a row on one object per Jacobian, as training keeps it."""
    for i, jacobian in enumerate(_jacobians(0)):
        if rows is not None and jacobian.shape[0] != rows:
            continue
        ours, theirs = make_ours(), make_theirs()
        for step in range(steps):
            current = jacobian * (1 + 0.3 * step)  # the rows change from one step to the next
            current = current @ current.T if gramian else current
            _assert_close(ours(current), theirs(current), rtol, f"case {i}, step {step}")


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_fairgrad(tjd, alpha: float) -> None:
    """TorchJD solves ``Gx = x^(−1/α)`` by scipy's least squares (tolerances ~1e-8)."""
    _compare(lambda: agg.FairGrad(alpha=alpha), lambda: tjd.FairGrad(alpha=alpha), 1e-6)
    ours, theirs = agg.FairGradWeighting, tjd.FairGradWeighting
    _compare(lambda: ours(alpha=alpha), lambda: theirs(alpha=alpha), 1e-6, gramian=True)


@pytest.mark.parametrize("tau", [0.02, 0.5])
def test_pcd(tjd, tau: float) -> None:
    """Both solve the quadratic program exactly; the moving average (``β = 0.9``) runs over
    four steps."""
    _compare(lambda: agg.PCD(tau=tau, beta=0.9), lambda: tjd.PCD(tau=tau, beta=0.9), 1e-10, 4)
    ours, theirs = agg.PCDWeighting, tjd.PCDWeighting
    _compare(lambda: ours(tau=tau), lambda: theirs(tau=tau), 1e-10, 4, gramian=True)


def test_cr_mogm(tjd) -> None:
    """Around IMTL-G (a closed form in both), over four steps, from TorchJD's start and (on
    the two-row cases) from given initial weights."""
    _compare(
        lambda: agg.CRMOGMWeighting(agg.IMTLGWeighting(), 0.8),
        lambda: tjd.CRMOGMWeighting(tjd.IMTLGWeighting(), 0.8),
        1e-10,
        4,
        gramian=True,
    )
    initial = torch.tensor([0.9, 0.1], dtype=F64)
    _compare(
        lambda: agg.CRMOGMWeighting(agg.IMTLGWeighting(), 0.8, initial_weights=initial),
        lambda: tjd.CRMOGMWeighting(tjd.IMTLGWeighting(), 0.8, initial_weights=initial),
        1e-10,
        4,
        gramian=True,
        rows=2,
    )
