"""Convolutions: 1-D and 2-D, strided, dilated, grouped, padded every way, a residual block."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 2),
    )


def conv_strided_dilated_grouped() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(
            4, 6, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2
        ),
        nn.Tanh(),
        nn.Conv2d(6, 2, kernel_size=2, stride=2, bias=False),
        nn.Flatten(),
    )


def conv_same_reflect() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, kernel_size=3, padding="same", padding_mode="reflect"),
        nn.Tanh(),
        nn.Conv2d(3, 2, kernel_size=3, padding="same", dilation=2),
        nn.Tanh(),
        nn.Conv2d(2, 2, kernel_size=(1, 3), padding="valid"),
        nn.Flatten(),
    )


def conv_circular() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, kernel_size=3, padding=1, padding_mode="circular", stride=2),
        nn.Tanh(),
        nn.Conv2d(4, 4, kernel_size=3, padding="same", padding_mode="replicate", groups=4),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 2),
    )


class Conv1dSequence(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, 4, kernel_size=3, padding="same")
        self.conv2 = nn.Conv1d(4, 4, kernel_size=3, stride=2, padding=1, padding_mode="circular")
        self.conv3 = nn.Conv1d(4, 2, kernel_size=2, dilation=2, groups=2)
        self.head = nn.Linear(2, 3)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, C, L]
        h = torch.tanh(self.conv1(x))
        h = torch.tanh(self.conv2(h))
        h = self.conv3(h)
        return self.head(h.mean(dim=2))


class ResidualBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, kernel_size=3, padding=1)
        self.conv1 = nn.Conv2d(4, 4, kernel_size=3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(2, 4)
        self.conv2 = nn.Conv2d(4, 4, kernel_size=3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        skip = h
        h = torch.relu(self.norm1(self.conv1(h)))
        h = torch.relu(self.norm2(self.conv2(h)) + skip)
        return self.head(h.mean(dim=(2, 3)))
