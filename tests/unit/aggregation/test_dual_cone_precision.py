"""The dual-cone solver and the weightings in full precision: a half-precision Gramian is
solved in float64 (weights in its dtype), and neither the caller's autocast nor its float32
product settings (TF32, oneDNN's bfloat16) change the answer; the settings are left as found."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

from jdopt._linalg import normalize, regularize
from jdopt.aggregation import DualProjWeighting, MGDAWeighting, UPGradWeighting
from jdopt.aggregation._dual_cone import project_weights
from tests.utils.device import DEVICE, draw, seeded

F64 = torch.float64


def _gramian(m: int, n: int, seed: int = 0) -> Tensor:
    """A conflicting Gramian ``[m, m]``, trace-normalised plus ``1e-4 I`` as UPGrad makes it:
    ``m = 100`` runs the solver's float32 stages (ADMM's first phase, FISTA)."""
    g = seeded(seed)
    jacobian = draw(m, n, generator=g, dtype=F64)
    jacobian[::2] *= -0.3
    jacobian += 0.5 * draw(1, n, generator=g, dtype=F64)
    return regularize(normalize(jacobian @ jacobian.T, 1e-4), 1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gramians_are_solved_in_float64(dtype: torch.dtype) -> None:
    """``project_weights`` of a float16 / bfloat16 Gramian returns weights in that dtype: the
    float64 answer for the same values, rounded."""
    gramian = _gramian(40, 200).to(dtype)
    preferences = torch.eye(40, dtype=dtype)
    weights = project_weights(preferences, gramian)
    expected = project_weights(preferences.to(F64), gramian.to(F64))
    assert weights.dtype == dtype
    assert torch.equal(weights, expected.to(dtype))


@pytest.mark.parametrize("weighting", [UPGradWeighting(), DualProjWeighting(), MGDAWeighting()])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_weightings_of_half_precision_gramians_compute_in_float32(weighting, dtype) -> None:
    """A weighting given a float16 / bfloat16 Gramian computes on it in float32 (its ridges
    and normalisations would round away in half precision) and returns weights in its dtype."""
    gramian = _gramian(12, 30).to(dtype)
    weights = weighting(gramian)
    assert weights.dtype == dtype
    assert torch.equal(weights, weighting(gramian.float()).to(dtype))


def test_the_solver_under_autocast_answers_as_without() -> None:
    """The caller's autocast does not reach the solver's float32 stages."""
    gramian = _gramian(100, 2000)
    preferences = torch.eye(100, dtype=F64)
    expected = project_weights(preferences, gramian)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        weights = project_weights(preferences, gramian)
    assert torch.equal(weights, expected)


def _settings() -> tuple:
    """The float32 product settings: the legacy one, then the per-backend ones (torch 2.9+)."""
    backends = torch.backends
    try:
        found: tuple = (torch.get_float32_matmul_precision(),)
    except RuntimeError:  # per-backend settings that the legacy one does not express
        found = ("raises",)
    if hasattr(backends, "fp32_precision"):
        found += (
            backends.fp32_precision,
            backends.cuda.matmul.fp32_precision,
            backends.mkldnn.matmul.fp32_precision,
        )
    return found


def _restore(settings: tuple) -> None:
    torch.set_float32_matmul_precision("highest" if settings[0] == "raises" else settings[0])
    if len(settings) > 1:
        backends = torch.backends
        backends.fp32_precision = settings[1]
        backends.cuda.matmul.fp32_precision = settings[2]
        backends.mkldnn.matmul.fp32_precision = settings[3]


@pytest.fixture(params=["high", "medium"])
def reduced_products(request: pytest.FixtureRequest) -> Iterator[None]:
    """Float32 products allowed in TF32 (CUDA), or in bfloat16 (oneDNN) too; the session's
    settings are put back afterwards."""
    session = _settings()
    torch.set_float32_matmul_precision(request.param)
    try:
        yield
    finally:
        _restore(session)
        assert _settings() == session


@pytest.mark.usefixtures("reduced_products")
def test_the_solver_ignores_reduced_float32_products_and_leaves_the_settings() -> None:
    """With TF32 (or oneDNN's bfloat16) allowed, the solver answers as without, and leaves the
    settings as it found them."""
    gramian = _gramian(100, 2000)
    preferences = torch.eye(100, dtype=F64)
    before = _settings()
    weights = project_weights(preferences, gramian)
    assert _settings() == before
    torch.set_float32_matmul_precision("highest")
    backends = torch.backends
    if hasattr(backends, "fp32_precision"):
        backends.cuda.matmul.fp32_precision = backends.mkldnn.matmul.fp32_precision = "ieee"
    assert torch.equal(weights, project_weights(preferences, gramian))
