"""Models, losses and snapshots shared by the JDOptimizer tests."""

from __future__ import annotations

import copy

import torch
from torch import nn

from jdopt import JDOptimizer
from tests.utils.device import draw


def mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A 4 → 6 → 2 MLP, seeded."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).to(dtype)


def sample_losses(model: nn.Module, step: int) -> torch.Tensor:
    """One float64 loss per sample, ``[8]``, on the batch of ``step``."""
    g = torch.Generator().manual_seed(100 + step)
    x = draw(8, 4, generator=g, dtype=torch.float64)
    y = draw(8, 2, generator=g).double()
    return ((model(x) - y) ** 2).mean(dim=1)


def float_losses(model: nn.Module) -> torch.Tensor:
    """One loss per sample, ``[6]``, in the model's precision (float32), on a fixed batch."""
    g = torch.Generator().manual_seed(3)
    x, y = draw(6, 4, generator=g), draw(6, 2, generator=g)
    return ((model(x) - y) ** 2).mean(dim=1)


def nan_jacobian_losses(model: nn.Module) -> torch.Tensor:
    """Finite losses whose Jacobian is NaN (the derivative of sqrt at 0 times 0)."""
    losses = float_losses(model)
    return losses + torch.sqrt(losses * 0.0)


def conv_model(seed: int = 0) -> nn.Module:
    """A float64 Conv1d → GroupNorm → MLP model, seeded: inputs ``[B, 2, 5]``, outputs
    ``[B, 3]``."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(2, 3, 3, padding=1),
        nn.GroupNorm(1, 3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(15, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    ).double()


def conv_losses(model: nn.Module, step: int, shape: str) -> torch.Tensor:
    """Losses of :func:`conv_model` on the batch of ``step``: ``"[B]"`` one per sample,
    ``"[B, k]"`` one per sample and output, ``"[k]"`` one per output."""
    g = torch.Generator().manual_seed(step)
    x = draw(6, 2, 5, generator=g, dtype=torch.float64)
    y = draw(6, 3, generator=g, dtype=torch.float64)
    errors = (model(x) - y) ** 2  # [6, 3]
    if shape == "[B]":
        return errors.mean(dim=1)
    if shape == "[B, k]":
        return errors
    return errors.mean(dim=0)  # "[k]": one loss per output, not per sample


def train_conv(jd: JDOptimizer, model: nn.Module, shape: str, steps: int = 3) -> None:
    """``steps`` steps of ``jd`` on :func:`conv_losses`."""
    for step in range(steps):
        jd.zero_grad()
        jd.step(conv_losses(model, step, shape))


def flat_params(model: nn.Module) -> torch.Tensor:
    """The model's parameters, detached and concatenated."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def snapshot(model: nn.Module, jd: JDOptimizer) -> dict:
    """A copy of the parameters, their gradients and the optimizer's state."""
    return copy.deepcopy(
        {
            "params": [p.detach() for p in model.parameters()],
            "grads": [None if p.grad is None else p.grad for p in model.parameters()],
            "state": jd.state_dict(),
        }
    )


def assert_same(a: dict, b: dict) -> None:
    """Asserts that two snapshots are identical."""
    for x, y in zip(a["params"] + a["grads"], b["params"] + b["grads"], strict=True):
        assert (x is None and y is None) or torch.equal(x, y)
    assert repr(a["state"]) == repr(b["state"])
