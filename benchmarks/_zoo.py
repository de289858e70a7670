"""The benchmark's models and their sizes: ResNet-18 (GroupNorm), a multi-task ResNet-18, a
Transformer encoder classifier, a GPT-style causal decoder, GRU and LSTM classifiers.

Every model takes a size: ``"full"`` in ``models.py``, ``"tiny"`` in the test zoo (same code, a
few thousand parameters at most).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# ------------------------------------------------------------------------------------ sizes
@dataclasses.dataclass(frozen=True)
class ConvSize:
    width: int  # channels of the first stage (64 in ResNet-18)
    groups: int  # GroupNorm groups, at most the channels
    image: int  # input height and width
    classes: int


@dataclasses.dataclass(frozen=True)
class SequenceSize:
    vocabulary: int
    length: int  # T
    width: int  # d_model, or embedding and hidden size of a recurrent model
    heads: int = 1
    feedforward: int = 1
    layers: int = 1
    classes: int = 10
    dropout: float = 0.1  # nn.TransformerEncoderLayer's default


RESNET = {"full": ConvSize(64, 32, 32, 10), "tiny": ConvSize(1, 2, 8, 3)}
TRANSFORMER = {
    "full": SequenceSize(1000, 64, 256, heads=4, feedforward=1024, layers=4),
    "tiny": SequenceSize(7, 5, 4, heads=2, feedforward=6, layers=2, classes=3),
}
RECURRENT = {"full": SequenceSize(1000, 32, 128), "tiny": SequenceSize(7, 4, 3, classes=2)}
TASKS = 3


# ----------------------------------------------------------------------------------- models
class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock with GroupNorm for BatchNorm."""

    def __init__(self, inplanes: int, planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.GroupNorm(min(groups, planes), planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.GroupNorm(min(groups, planes), planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                nn.GroupNorm(min(groups, planes), planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18Trunk(nn.Module):
    """ResNet-18 for 32×32 images (3×3 stem, no max-pool), pooled features ``[B, 8·width]``."""

    def __init__(self, size: ConvSize) -> None:
        super().__init__()
        w, g = size.width, size.groups
        self.conv1 = nn.Conv2d(3, w, 3, padding=1, bias=False)
        self.bn1 = nn.GroupNorm(min(g, w), w)
        self.relu = nn.ReLU(inplace=True)
        stages = [(w, w, 1), (w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 8 * w, 2)]
        self.layers = nn.Sequential(
            *(nn.Sequential(BasicBlock(i, o, s, g), BasicBlock(o, o, 1, g)) for i, o, s in stages)
        )
        self.out_features = 8 * w

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def resnet18(size: str = "full") -> nn.Module:
    trunk = ResNet18Trunk(RESNET[size])
    return nn.Sequential(trunk, nn.Linear(trunk.out_features, RESNET[size].classes))


class MultiTaskResNet18(nn.Module):
    """The ResNet-18 trunk with one linear head per task; returns the heads' outputs."""

    def __init__(self, size: str = "full") -> None:
        super().__init__()
        self.trunk = ResNet18Trunk(RESNET[size])
        classes = RESNET[size].classes
        self.heads = nn.ModuleList(
            nn.Linear(self.trunk.out_features, classes) for _ in range(TASKS)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        features = self.trunk(x)
        return tuple(head(features) for head in self.heads)


class _Blocks(nn.Module):
    """Token and learned position embeddings, then ``layers`` Transformer encoder layers."""

    def __init__(self, size: SequenceSize) -> None:
        super().__init__()
        self.tokens = nn.Embedding(size.vocabulary, size.width)
        self.positions = nn.Embedding(size.length, size.width)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=size.width,
                nhead=size.heads,
                dim_feedforward=size.feedforward,
                dropout=size.dropout,
                batch_first=True,
            )
            for _ in range(size.layers)
        )

    def forward(self, idx: Tensor, causal: bool = False) -> Tensor:  # idx: [B, T]
        # Positions [B, T], not [T]: jdopt's engine needs the batch on every hooked input.
        positions = torch.arange(idx.shape[1], device=idx.device).expand_as(idx)
        h = self.tokens(idx) + self.positions(positions)
        mask = None
        if causal:
            mask = nn.Transformer.generate_square_subsequent_mask(
                idx.shape[1], device=idx.device, dtype=h.dtype
            )
        for layer in self.layers:
            h = layer(h, src_mask=mask, is_causal=causal)
        return h  # [B, T, d]


class TransformerClassifier(nn.Module):
    """A Transformer encoder on tokens, mean-pooled, then a linear classifier."""

    def __init__(self, size: str = "full") -> None:
        super().__init__()
        self.blocks = _Blocks(TRANSFORMER[size])
        self.head = nn.Linear(TRANSFORMER[size].width, TRANSFORMER[size].classes)

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(self.blocks(idx).mean(dim=1))


class CausalDecoder(nn.Module):
    """GPT-style: the same layers under a causal mask, next-token logits ``[B, T, vocabulary]``."""

    def __init__(self, size: str = "full") -> None:
        super().__init__()
        self.blocks = _Blocks(TRANSFORMER[size])
        self.head = nn.Linear(TRANSFORMER[size].width, TRANSFORMER[size].vocabulary)

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(self.blocks(idx, causal=True))


class RecurrentClassifier(nn.Module):
    """Embedding, a GRU or LSTM layer, and a classifier on the last output."""

    def __init__(self, kind: type[nn.RNNBase], size: str = "full") -> None:
        super().__init__()
        s = RECURRENT[size]
        self.embedding = nn.Embedding(s.vocabulary, s.width)
        self.rnn = kind(s.width, s.width, batch_first=True)
        self.head = nn.Linear(s.width, s.classes)

    def forward(self, idx: Tensor) -> Tensor:
        out, _ = self.rnn(self.embedding(idx))
        return self.head(out[:, -1])
