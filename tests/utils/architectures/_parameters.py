"""Parameters used unusually: reused, tied, frozen or unused, held directly by a custom module."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._architecture import VOCABULARY


class ReusedLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.inner(x))
        return self.head(torch.tanh(self.inner(h)) + h)


class TiedEmbedding(nn.Module):
    """A language-model head whose weight is the embedding's (``[vocabulary, d]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCABULARY, 4)
        self.mix = nn.Linear(4, 4)
        self.output = nn.Linear(4, VOCABULARY)
        self.output.weight = self.embedding.weight

    def forward(self, idx: Tensor) -> Tensor:
        return self.output(torch.tanh(self.mix(self.embedding(idx))))


class TiedLinears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.second = nn.Linear(4, 4)
        self.second.weight = self.first.weight
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.second(torch.tanh(self.first(x)))))


class FrozenAndUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(4, 5)
        self.frozen.requires_grad_(False)
        self.half_frozen = nn.Linear(5, 4)
        self.half_frozen.weight.requires_grad_(False)
        self.conv_frozen_weight = nn.Conv1d(1, 2, kernel_size=3)
        self.conv_frozen_weight.weight.requires_grad_(False)
        self.unused = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.half_frozen(torch.tanh(self.frozen(x))))
        h = self.conv_frozen_weight(h.unsqueeze(1)).flatten(1)  # [B, 2 * 2]
        return self.head(torch.tanh(h))


class ScaleShift(nn.Module):
    """A custom module with direct parameters (no closed-form rule: the generic fallback)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(1.0 + 0.5 * torch.randn(size))
        self.shift = nn.Parameter(0.1 * torch.randn(size))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


class CustomDirectParameters(nn.Module):
    """Direct parameters on a module that also has a child with its own rule."""

    def __init__(self) -> None:
        super().__init__()
        self.affine = ScaleShift(4)
        self.linear = nn.Linear(4, 3)
        self.gate = nn.Parameter(torch.randn(3))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(torch.tanh(self.affine(x))) * torch.sigmoid(self.gate)


class Siamese(nn.Module):
    """One fallback module called on two inputs side by side, and one Linear called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.affine = ScaleShift(3)
        self.linear = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        h1 = torch.tanh(self.linear(self.affine(x1)))
        h2 = torch.tanh(self.linear(self.affine(x2)))
        return self.head(h1 * h2)
