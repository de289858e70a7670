"""Golden values derived by hand (derivations in the comments), not produced by jdopt."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import jdopt.aggregation as agg

# The two-row example of the UPGrad paper: g1 = (-4, 1, 1), g2 = (6, 1, 1), g1·g2 = -22.
PAPER = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
# Orthogonal rows of norms 3 and 4.
ORTHOGONAL = torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
# Orthogonal unit rows.
UNIT = torch.eye(2, dtype=torch.float64)


def _t(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


CASES = [
    # g1/2 = (-2, .5, .5) conflicts with g2: minus (-11/38) g2 gives (-0.26316, 0.78947, 0.78947);
    # g2/2 = (3, .5, .5) conflicts with g1: minus (-11/18) g1 gives (0.55556, 1.11111, 1.11111).
    ("UPGrad", agg.UPGrad(), PAPER, _t(0.29240, 1.90058, 1.90058), 1e-3),
    # The mean (1, 1, 1) conflicts with g1 only: plus (2/18) g1.
    ("DualProj", agg.DualProj(), PAPER, _t(5 / 9, 10 / 9, 10 / 9), 1e-3),
    # Min-norm point of the segment [g1, g2] is (0, 1, 1), at w = (0.6, 0.4).
    ("MGDA", agg.MGDA(), PAPER, _t(0.0, 1.0, 1.0), 1e-9),
    ("Mean", agg.Mean(), PAPER, _t(1.0, 1.0, 1.0), 1e-12),
    ("Sum", agg.Sum(), PAPER, _t(2.0, 2.0, 2.0), 1e-12),
    ("Constant", agg.Constant(_t(1.0, 0.5)), PAPER, _t(-1.0, 1.5, 1.5), 1e-12),
    # g1' = g1 + (22/38) g2, g2' = g2 + (22/18) g1.
    (
        "PCGrad",
        agg.PCGrad(),
        PAPER,
        _t(-4 + 132 / 38 + 6 - 88 / 18, *[2 + 22 / 38 + 22 / 18] * 2),
        1e-9,
    ),
    # G = diag(9, 16): w ∝ G⁻¹(3, 4) = (1/3, 1/4) → (4/7, 3/7).
    ("IMTLG", agg.IMTLG(), ORTHOGONAL, _t(12 / 7, 12 / 7), 1e-9),
    # B = σ_min · V Σ⁻¹ Vᵀ = 3 · diag(1/3, 1/4); weights B (1/2, 1/2) = (1/2, 3/8).
    ("AlignedMTL", agg.AlignedMTL(), ORTHOGONAL, _t(1.5, 1.5), 1e-9),
    # Symmetric problem: w* = (1/2, 1/2), ‖g0‖ = ‖g_w‖ = 1/√2, update (1 + c)/2 · (1, 1).
    ("CAGrad", agg.CAGrad(c=0.5), UNIT, _t(0.75, 0.75), 1e-9),
    # Scores with m - f - 2 = 2 neighbours: rows 0..3 → 10, 11, 19, > 300: row 0, then row 1.
    (
        "Krum",
        agg.Krum(n_byzantine=0, n_selected=2),
        torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [10.0, 10.0]], dtype=torch.float64),
        _t(0.5, 0.0),
        1e-12,
    ),
]


@pytest.mark.parametrize(("name", "aggregator", "jacobian", "expected", "tol"), CASES)
def test_golden(name: str, aggregator, jacobian: Tensor, expected: Tensor, tol: float) -> None:
    assert torch.allclose(aggregator(jacobian), expected, atol=tol, rtol=0), name


def test_upgrad_matches_the_published_example() -> None:
    # The value printed in the UPGrad paper's repository for this example (float32).
    expected = torch.tensor([0.2929, 1.9004, 1.9004])
    assert torch.allclose(agg.UPGrad()(PAPER.float()), expected, atol=1e-4)


def test_cagrad_zero_radius_is_the_mean() -> None:
    assert torch.allclose(agg.CAGrad(c=0.0)(PAPER), PAPER.mean(dim=0))


def test_cagrad_matches_its_definition_by_brute_force() -> None:
    # Three rows: minimise g_wᵀg0 + c‖g0‖‖g_w‖ over a fine grid of the 2-simplex.
    jacobian = torch.tensor(
        [[2.0, 0.0, 1.0], [-1.0, 1.0, 0.0], [0.0, -1.0, 2.0]], dtype=torch.float64
    )
    c, g0 = 0.4, jacobian.mean(dim=0)
    steps = torch.linspace(0, 1, 401, dtype=torch.float64)
    a, b = torch.meshgrid(steps, steps, indexing="ij")
    keep = a + b <= 1
    w = torch.stack([a[keep], b[keep], 1 - a[keep] - b[keep]], dim=1)
    gw = w @ jacobian
    objective = gw @ g0 + c * g0.norm() * gw.norm(dim=1)
    best = gw[objective.argmin()]
    expected = g0 + c * g0.norm() * best / best.norm()
    assert torch.allclose(agg.CAGrad(c=c)(jacobian), expected, atol=5e-3)


def test_mgda_is_the_min_norm_point() -> None:
    # For unit orthogonal rows the min-norm point of the hull is their mean, norm 1/√2.
    update = agg.MGDA()(torch.eye(3, dtype=torch.float64))
    assert torch.allclose(update, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert math.isclose(float(update.norm()), 1 / math.sqrt(3))


def test_projection_methods_give_preferences_back_on_a_zero_gramian() -> None:
    pref = _t(0.2, 0.8)
    zero = torch.zeros(2, 2, dtype=torch.float64)
    assert torch.equal(agg.UPGradWeighting(pref_vector=pref)(zero), pref)
    assert torch.equal(agg.DualProjWeighting(pref_vector=pref)(zero), pref)


def test_projection_methods_treat_a_trace_below_norm_eps_as_zero() -> None:
    tiny = 1e-3 * PAPER  # trace 5.6e-5 < 1e-4: the default counts it as zero
    assert torch.allclose(agg.UPGrad()(tiny), tiny.mean(dim=0))
    assert torch.allclose(agg.UPGrad(norm_eps=0.0)(tiny), 1e-3 * agg.UPGrad()(PAPER))
