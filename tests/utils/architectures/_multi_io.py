"""Several paths: parallel branches, two inputs, two outputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3))
        self.right = nn.Sequential(nn.Linear(4, 2), nn.Tanh())
        self.head = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.cat([self.left(x), self.right(x)], dim=1))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(3, 4)
        self.second = nn.Linear(5, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:  # [B, 3], [B, 2, 5]
        return self.head(torch.tanh(self.first(x1) + self.second(x2).mean(dim=1)))


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 5), nn.Tanh())
        self.head1 = nn.Linear(5, 2)
        self.head2 = nn.Linear(5, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(x)
        return self.head1(h), torch.sigmoid(self.head2(h))
