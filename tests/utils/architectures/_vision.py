"""torchvision-style vision models, in place as people write them: ResNet, AlexNet with a
SqueezeNet Fire module, MobileNetV3 (GroupNorm for BatchNorm throughout)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock, GroupNorm for BatchNorm: in-place ReLU after the
    norms, ``out += identity``, and a downsampling branch when the shape changes."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.GroupNorm(2, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.GroupNorm(2, planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.GroupNorm(2, planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """A two-block torchvision-style ResNet on ``[B, 2, 8, 8]``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn1 = nn.GroupNorm(2, 4)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = BasicBlock(4, 4)
        self.layer2 = BasicBlock(4, 8, stride=2)  # 8 channels in: the grouped-kernel strategy
        self.fc = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Fire(nn.Module):
    """SqueezeNet's Fire module: in-place ReLU after every convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(4, 2, 1)
        self.expand1x1 = nn.Conv2d(2, 3, 1)
        self.expand3x3 = nn.Conv2d(2, 3, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.squeeze(x))
        return torch.cat([self.relu(self.expand1x1(x)), self.relu(self.expand3x3(x))], 1)


def alexnet_squeezenet() -> nn.Module:
    """AlexNet's conv → ReLU(inplace) → MaxPool and classifier, around a Fire module."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        Fire(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 5),
        nn.ReLU(inplace=True),
        nn.Linear(5, 2),
    )


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.scale = nn.Hardsigmoid(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.scale(self.fc2(self.relu(self.fc1(pooled)))) * x


class InvertedResidual(nn.Module):
    """MobileNetV3's block: expand, depthwise, squeeze-excite, project, ``result += input``."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(4, 8, 1, bias=False),
            nn.GroupNorm(2, 8),
            nn.Hardswish(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
            nn.GroupNorm(2, 8),
            nn.SiLU(inplace=True),
            SqueezeExcitation(8, 4),
            nn.Conv2d(8, 4, 1, bias=False),
            nn.GroupNorm(2, 4),
        )

    def forward(self, x: Tensor) -> Tensor:
        result = self.block(x)
        result += x
        return result


def mobilenet_v3() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False),
        nn.GroupNorm(2, 4),
        nn.Hardswish(inplace=True),
        InvertedResidual(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 6),
        nn.Hardswish(inplace=True),
        nn.Linear(6, 2),
    )
