"""MoDo and SDMGrad (weights from two independent batches), by hand and against TorchJD 0.18,
and CrossBatchWeighting, which gives JDOptimizer their steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jdopt import JDOptimizer
from jdopt.aggregation import CrossBatchWeighting, MoDoWeighting, SDMGradWeighting
from tests.utils.device import DEVICE, draw, seeded

F64 = torch.float64


def _tensor(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64, device=DEVICE)


def test_a_modo_step_worked_by_hand() -> None:
    """A = [[1, 2], [0, 1]] (not symmetric), γ = ρ = 0.1, λ = (½, ½): Aλ = (1.5, 0.5),
    λ − γ(Aλ + ρλ) = (0.345, 0.445), projected (τ = −0.105): (0.45, 0.55)."""
    weights = MoDoWeighting(gamma=0.1, rho=0.1)(_tensor([[1.0, 2.0], [0.0, 1.0]]))
    assert weights.tolist() == pytest.approx([0.45, 0.55], rel=1e-14)


def test_an_sdmgrad_call_worked_by_hand() -> None:
    """A = I (scale 1), w̃ = (1, 0), λ = ½, lr = 1, one step: w − A(w + ½w̃)/(1 + 1e-8) ≈
    (−½, 0), projected (τ = −¾): (¼, ¾); the weights (w + ½w̃) / 1.5 = (½, ½)."""
    weighting = SDMGradWeighting(lr=1.0, n_iter=1, lambda_=0.5, pref_vector=_tensor([1.0, 0.0]))
    weights = weighting(_tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert weights.tolist() == pytest.approx([0.5, 0.5], rel=1e-7)


@pytest.mark.parametrize("name", ["MoDoWeighting", "SDMGradWeighting"])
def test_they_agree_with_torchjd_over_several_calls(name: str) -> None:
    theirs = pytest.importorskip("torchjd.aggregation")
    if not hasattr(theirs, name):
        pytest.skip("TorchJD < 0.18")
    import jdopt.aggregation as ours

    found, reference = getattr(ours, name)(), getattr(theirs, name)()
    for step in range(4):
        left, right = (draw(3, 5, generator=seeded(10 * step + i), dtype=F64) for i in (0, 1))
        matrix = left @ right.T
        expected = reference(matrix.cpu()).to(matrix)
        assert torch.allclose(found(matrix), expected, rtol=1e-12, atol=1e-14)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(DEVICE, F64)


def _batch_losses(model: nn.Module, seed: int) -> torch.Tensor:
    return model(draw(8, 4, generator=seeded(seed), dtype=F64)).pow(2).mean(dim=0)  # [3] tasks


def _jacobian(losses: torch.Tensor, model: nn.Module) -> torch.Tensor:
    rows = [
        torch.autograd.grad(loss, list(model.parameters()), retain_graph=True) for loss in losses
    ]
    return torch.stack([torch.cat([g.flatten() for g in row]) for row in rows])


@pytest.mark.parametrize("use_model", [False, True], ids=["autojac", "autogram"])
def test_jdoptimizer_takes_modos_step_from_two_stacked_batches(use_model: bool) -> None:
    """The Gramian of the stacked batches holds A = J₁J₂ᵀ; the update is the gradient of
    Σ λᵢ (L₁ᵢ + L₂ᵢ) / 2, as in MoDo's Equation 2.9b."""
    model, reference = _model(), _model()
    engine = {"model": model} if use_model else {}
    weighting = CrossBatchWeighting(MoDoWeighting(), batches=2)
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=weighting, **engine)
    jd.backward(torch.stack([_batch_losses(model, 1), _batch_losses(model, 2)]))
    first, second = _batch_losses(reference, 1), _batch_losses(reference, 2)
    cross = _jacobian(first, reference) @ _jacobian(second, reference).T
    weights = MoDoWeighting()(cross)
    ((first + second) / 2 @ weights).backward()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-10, atol=1e-14)


def test_three_batches_weight_the_third_alone() -> None:
    gramian = (lambda j: j @ j.T)(draw(6, 5, generator=seeded(0), dtype=F64))
    weights = CrossBatchWeighting(SDMGradWeighting(), batches=3)(gramian)
    assert torch.equal(weights[:4], torch.zeros(4, dtype=F64, device=DEVICE))
    expected = SDMGradWeighting()(gramian[:2, 2:4])
    assert torch.allclose(weights[4:], expected, rtol=1e-14, atol=0)


def test_errors() -> None:
    with pytest.raises(ValueError, match="batches"):
        CrossBatchWeighting(MoDoWeighting(), batches=4)
    with pytest.raises(ValueError, match="stacked batches"):
        CrossBatchWeighting(MoDoWeighting())(torch.eye(3, dtype=F64))
    with pytest.raises(ValueError, match="momentum"):
        SDMGradWeighting(momentum=1.0)
    with pytest.raises(ValueError, match="one preference per objective"):
        SDMGradWeighting(pref_vector=torch.ones(3))(torch.eye(2))
