"""MLPs and simple layers: Linear, norms, activations, dropout, flatten."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor, nn


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))


def deep_mlp_tanh() -> nn.Module:
    widths = [4, 5, 5, 4, 3, 2]
    layers: list[nn.Module] = []
    for i, o in pairwise(widths):
        layers += [nn.Linear(i, o), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def layernorm_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(5, 6),
        nn.LayerNorm(6),
        nn.GELU(),
        nn.Unflatten(1, (2, 3)),
        nn.LayerNorm((2, 3)),
        nn.Flatten(),
        nn.Linear(6, 2),
        nn.LayerNorm(2, bias=False),
    )


def rmsnorm_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(5, 6), nn.RMSNorm(6), nn.SiLU(), nn.Linear(6, 3), nn.RMSNorm(3, eps=1e-3)
    )


def dropout() -> nn.Module:
    return nn.Sequential(
        nn.Linear(5, 6),
        nn.Dropout(0.3),
        nn.Tanh(),
        nn.Linear(6, 4),
        nn.Dropout(0.5),
        nn.Linear(4, 2),
    )


class Linear3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 5)
        self.outer = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, T, 4]
        return self.outer(torch.tanh(self.inner(x)))  # [B, T, 2]


def flatten() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Tanh(), nn.Linear(4, 2))
