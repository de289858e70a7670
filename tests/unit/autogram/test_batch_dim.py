"""Per-sample losses (``batch_dim`` given): ``losses[i]`` must depend on sample ``i`` only. The
closed forms read the batch on each call's first dimension; calls without it take the exact
fallback, and set-ups that mix the samples are refused."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from jdopt.autogram import Engine
from tests.utils.architectures import trainable_parameters
from tests.utils.device import draw, draw_integers, seeded

from ._models import F64, B, all_hooks_removed, mlp, mlp_inputs, mlp_losses, randn
from ._reference import TOLERANCE, assert_exact, reference_gramian, relative_error


def test_calls_of_another_batch_size_take_the_fallback() -> None:
    """Losses of part of the batch: the layers' calls do not match them, so every layer takes
    the exact fallback."""
    model = mlp()
    engine = Engine(model, batch_dim=0)
    losses = mlp_losses(model, mlp_inputs(batch=5))[:3]
    fallback = assert_exact(engine, losses, trainable_parameters(model))
    assert fallback == {id(p) for p in trainable_parameters(model)}


def test_a_sequence_first_layer_takes_the_fallback() -> None:
    """A layer that sees the batch on dimension 1 takes the exact fallback."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(4, 2, 6, dropout=0.0).to(F64)  # sequence first
    engine = Engine(layer, batch_dim=0)
    x = torch.randn(3, 5, 4, dtype=F64)  # [T, B, d]
    losses = (layer(x) ** 2).sum(dim=(0, 2))  # [B]
    fallback = assert_exact(engine, losses, trainable_parameters(layer))
    assert id(layer.linear1.weight) in fallback


class _LearnedPositions(nn.Module):
    """nanoGPT's embeddings: tokens ``[B, T]`` and positions ``arange(T)``, without a batch."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(7, 4)
        self.positions = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.tokens(idx) + self.positions(torch.arange(idx.shape[1]))
        return self.head(torch.tanh(h)).squeeze(-1)  # [B, T]


@pytest.mark.parametrize("batch_dim", [0, None])
def test_a_layer_called_without_the_batch_takes_the_fallback(batch_dim: int | None) -> None:
    """A layer called on positions only (``pos(arange(T))``) is exact through the fallback;
    the other layers keep their closed forms."""
    torch.manual_seed(0)
    model = _LearnedPositions().to(F64)
    engine = Engine(model, batch_dim=batch_dim)
    idx = draw_integers(0, 7, (4, 5), generator=seeded(1))
    out = model(idx)
    losses = (out**2).mean(dim=1) if batch_dim == 0 else (out**2).mean(dim=0)
    fallback = assert_exact(engine, losses, trainable_parameters(model))
    expected = {id(model.positions.weight)} if batch_dim == 0 else set()
    assert fallback == expected


class _Centred(nn.Module):
    """Two layers with ``h - h.mean(0)`` between them: it mixes the samples of the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(3, 4), nn.Linear(4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.first(x))
        return self.second(h - h.mean(dim=0))


@pytest.mark.parametrize("case", ["reordered", "mixing layer", "contrastive"])
def test_losses_that_are_not_per_sample_are_refused(case: str) -> None:
    """Losses that mix the samples, or come in another order than the batch, are refused: the
    first Gramian is checked against one ordinary backward pass, and nothing is accumulated."""
    torch.manual_seed(0)
    model = (_Centred() if case == "mixing layer" else nn.Linear(3, 2)).to(F64)
    engine = Engine(model, batch_dim=0)
    out = model(randn(B, 3))
    if case == "reordered":
        losses = (out**2).sum(dim=1)[torch.tensor([1, 0, 3, 2])]
    elif case == "mixing layer":
        losses = out.squeeze(1) ** 2
    else:  # each sample against the others: an in-batch contrastive loss
        losses = torch.logsumexp(out @ out.T, dim=1)
    with pytest.raises(ValueError, match="disagrees with an ordinary backward pass"):
        engine.compute_gramian(losses)
    assert all(p.grad is None for p in model.parameters())


def test_the_check_waits_for_a_finite_gramian() -> None:
    """A first Gramian that overflows (as the first steps under a GradScaler often do) cannot
    be checked: the next finite one is, and a refused Gramian leaves nothing to accumulate."""
    torch.manual_seed(0)
    model = _Centred().to(F64)
    engine = Engine(model, batch_dim=0)
    out = model(randn(B, 3)).squeeze(1)
    engine.compute_gramian(out * torch.tensor([1.0, torch.inf, 1.0, 1.0], dtype=F64))
    losses = model(randn(B, 3)).squeeze(1) ** 2
    with pytest.raises(ValueError, match="disagrees with an ordinary backward pass"):
        engine.compute_gramian(losses)
    with pytest.raises(RuntimeError, match="before accumulate_grads"):  # nothing to apply
        engine.accumulate_grads(torch.ones(B, dtype=F64))


def test_batchnorm_with_batch_dim_is_refused_with_the_fix() -> None:
    """BatchNorm mixes the samples: with a ``batch_dim``, the engine is refused at construction
    with the module's name and the fixes, and leaves no hook."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Tanh(), nn.BatchNorm1d(4)))
    with pytest.raises(ValueError, match="BatchNorm1d") as info:
        Engine(model, batch_dim=0)
    message = str(info.value)
    assert "1.1" in message  # the module's name in the model
    for fix in ["GroupNorm", "LayerNorm", "batch_dim=None"]:
        assert fix in message
    assert all_hooks_removed(model)


def test_batchnorm_without_batch_dim_is_exact() -> None:
    """Without a batch dimension, BatchNorm is a module like any other."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)
    ).to(F64)
    engine = Engine(model, batch_dim=None)
    x = draw(5, 2, 4, 4, generator=seeded(1), dtype=F64)
    out = model(x)
    losses = torch.stack([(out**2).mean(), out[:, 0].sum(), torch.sin(out).sum()])

    gramian = engine.compute_gramian(losses)

    assert relative_error(gramian, reference_gramian(losses, list(model.parameters()))) <= TOLERANCE
