"""A zoo of small float64 architectures for the Gramian engine's tests.

Each :class:`Architecture` builds a seeded model, a batch of inputs (``BATCH`` samples) and the
per-sample outputs ``[BATCH, d]`` of one forward pass. Every model treats the samples of a batch
independently, with the batch on the first dimension of each hooked module's input (the engine's
contract for ``batch_dim=0``), and is in training mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn

from benchmarks import models as benchmark

BATCH = 4
VOCABULARY = 7
_DTYPE = torch.float64


@dataclass(frozen=True)
class Architecture:
    """A model factory with its inputs.

    Args:
        name: the test id.
        build: builds the model (seeded, float64, training mode).
        inputs: the positional inputs of one batch, drawn from a generator.
    """

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], tuple[Tensor, ...]]

    def make(self, seed: int = 0) -> tuple[nn.Module, tuple[Tensor, ...]]:
        torch.manual_seed(seed)
        model = self.build().to(_DTYPE).train()
        return model, self.inputs(torch.Generator().manual_seed(seed + 1))

    @staticmethod
    def outputs(model: nn.Module, inputs: tuple[Tensor, ...]) -> Tensor:
        """One forward pass; the outputs of every head, flattened per sample: ``[BATCH, d]``."""
        out = model(*inputs)
        heads = out if isinstance(out, tuple) else (out,)
        return torch.cat([head.reshape(head.shape[0], -1) for head in heads], dim=1)


# ---------------------------------------------------------------------------------- inputs
def _randn(*shape: int) -> Callable[[torch.Generator], tuple[Tensor, ...]]:
    def make(generator: torch.Generator) -> tuple[Tensor, ...]:
        return (torch.randn(BATCH, *shape, dtype=_DTYPE, generator=generator),)

    return make


def _indices(length: int) -> Callable[[torch.Generator], tuple[Tensor, ...]]:
    """Token indices ``[BATCH, length]``; index 0 (the padding index) appears in every row."""

    def make(generator: torch.Generator) -> tuple[Tensor, ...]:
        idx = torch.randint(1, VOCABULARY, (BATCH, length), generator=generator)
        idx[:, 0] = 0
        idx[0, -1] = idx[1, -1]  # a token shared by two samples
        return (idx,)

    return make


def _pair(*shapes: tuple[int, ...]) -> Callable[[torch.Generator], tuple[Tensor, ...]]:
    def make(generator: torch.Generator) -> tuple[Tensor, ...]:
        return tuple(torch.randn(BATCH, *s, dtype=_DTYPE, generator=generator) for s in shapes)

    return make


def _two_inputs(generator: torch.Generator) -> tuple[Tensor, ...]:
    x1 = torch.randn(BATCH, 3, dtype=_DTYPE, generator=generator)
    x2 = torch.randn(BATCH, 2, 5, dtype=_DTYPE, generator=generator)
    return x1, x2


# ---------------------------------------------------------------------------------- models
def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))


def _deep_mlp_tanh() -> nn.Module:
    widths = [4, 5, 5, 4, 3, 2]
    layers: list[nn.Module] = []
    for i, o in pairwise(widths):
        layers += [nn.Linear(i, o), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 2),
    )


def _conv_strided_dilated_grouped() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(
            4, 6, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2
        ),
        nn.Tanh(),
        nn.Conv2d(6, 2, kernel_size=2, stride=2, bias=False),
        nn.Flatten(),
    )


def _conv_same_reflect() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, kernel_size=3, padding="same", padding_mode="reflect"),
        nn.Tanh(),
        nn.Conv2d(3, 2, kernel_size=3, padding="same", dilation=2),
        nn.Tanh(),
        nn.Conv2d(2, 2, kernel_size=(1, 3), padding="valid"),
        nn.Flatten(),
    )


def _conv_circular() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, kernel_size=3, padding=1, padding_mode="circular", stride=2),
        nn.Tanh(),
        nn.Conv2d(4, 4, kernel_size=3, padding="same", padding_mode="replicate", groups=4),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 2),
    )


class _Conv1dSequence(nn.Module):
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


class _ResidualBlock(nn.Module):
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


def _layernorm_mlp() -> nn.Module:
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


def _rmsnorm_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(5, 6), nn.RMSNorm(6), nn.SiLU(), nn.Linear(6, 3), nn.RMSNorm(3, eps=1e-3)
    )


class _Transformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.layer = nn.TransformerEncoderLayer(
            d_model=8, nhead=2, dim_feedforward=12, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, T, 3]
        return self.head(self.layer(self.embed(x)).mean(dim=1))


class _AttentionBatchFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.attention = nn.MultiheadAttention(4, num_heads=2, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, T, 3]
        h = self.embed(x)
        mask = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool)
        mask[::2, -1] = True  # padding at the end of every other sample
        h, _ = self.attention(h, h, h, key_padding_mask=mask)
        return self.head(h)


class _AttentionSequenceFirst(nn.Module):
    """Attention on ``[T, B, d]``; the Linear layers see the batch first, as the engine needs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.attention = nn.MultiheadAttention(4, num_heads=2)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, T, 3]
        h = self.embed(x).transpose(0, 1)  # [T, B, 4]
        h, _ = self.attention(h, h, h, need_weights=False)
        return self.head(h.transpose(0, 1))


class _CrossAttention(nn.Module):
    """Queries from one input, keys and values of other sizes (``kdim``, ``vdim``) from another."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(3, 4)
        self.attention = nn.MultiheadAttention(4, num_heads=1, kdim=5, vdim=5, batch_first=True)

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:  # [B, 3], [B, 2, 5]
        q = self.query(x1).unsqueeze(1)
        out, weights = self.attention(q, x2, x2)  # the attention weights are an output too
        return out, weights


class _EmbeddingBag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCABULARY, 4, padding_idx=0)
        self.head = nn.Linear(4, 3)

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(self.embedding(idx).mean(dim=1))


class _EmbeddingRNN(nn.Module):
    """Embedding and a recurrent layer (the generic fallback), read from the last output."""

    def __init__(self, kind: type[nn.RNNBase]) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCABULARY, 3)
        self.rnn = kind(3, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, idx: Tensor) -> Tensor:
        out, _ = self.rnn(self.embedding(idx))
        return self.head(out[:, -1])


class _Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3))
        self.right = nn.Sequential(nn.Linear(4, 2), nn.Tanh())
        self.head = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.cat([self.left(x), self.right(x)], dim=1))


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(3, 4)
        self.second = nn.Linear(5, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:  # [B, 3], [B, 2, 5]
        return self.head(torch.tanh(self.first(x1) + self.second(x2).mean(dim=1)))


class _TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 5), nn.Tanh())
        self.head1 = nn.Linear(5, 2)
        self.head2 = nn.Linear(5, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(x)
        return self.head1(h), torch.sigmoid(self.head2(h))


class _ReusedLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.inner(x))
        return self.head(torch.tanh(self.inner(h)) + h)


class _TiedEmbedding(nn.Module):
    """A language-model head whose weight is the embedding's (``[vocabulary, d]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCABULARY, 4)
        self.mix = nn.Linear(4, 4)
        self.output = nn.Linear(4, VOCABULARY)
        self.output.weight = self.embedding.weight

    def forward(self, idx: Tensor) -> Tensor:
        return self.output(torch.tanh(self.mix(self.embedding(idx))))


class _TiedLinears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.second = nn.Linear(4, 4)
        self.second.weight = self.first.weight
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.second(torch.tanh(self.first(x)))))


class _FrozenAndUnused(nn.Module):
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


def _dropout() -> nn.Module:
    return nn.Sequential(
        nn.Linear(5, 6),
        nn.Dropout(0.3),
        nn.Tanh(),
        nn.Linear(6, 4),
        nn.Dropout(0.5),
        nn.Linear(4, 2),
    )


class _ScaleShift(nn.Module):
    """A custom module with direct parameters (no closed-form rule: the generic fallback)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(1.0 + 0.5 * torch.randn(size))
        self.shift = nn.Parameter(0.1 * torch.randn(size))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


class _CustomDirectParameters(nn.Module):
    """Direct parameters on a module that also has a child with its own rule."""

    def __init__(self) -> None:
        super().__init__()
        self.affine = _ScaleShift(4)
        self.linear = nn.Linear(4, 3)
        self.gate = nn.Parameter(torch.randn(3))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(torch.tanh(self.affine(x))) * torch.sigmoid(self.gate)


class _Siamese(nn.Module):
    """One fallback module called on two inputs side by side, and one Linear called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.affine = _ScaleShift(3)
        self.linear = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        h1 = torch.tanh(self.linear(self.affine(x1)))
        h2 = torch.tanh(self.linear(self.affine(x2)))
        return self.head(h1 * h2)


class _Decoder(nn.Module):
    """A pre-norm Transformer decoder layer: self-attention (causal) and cross-attention."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerDecoderLayer(
            d_model=4, nhead=2, dim_feedforward=6, dropout=0.0, batch_first=True, norm_first=True
        )

    def forward(self, target: Tensor, memory: Tensor) -> Tensor:  # [B, 3, 4], [B, 2, 4]
        mask = nn.Transformer.generate_square_subsequent_mask(3, dtype=target.dtype)
        return self.layer(target, memory, tgt_mask=mask, tgt_is_causal=True)


class _Linear3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 5)
        self.outer = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, T, 4]
        return self.outer(torch.tanh(self.inner(x)))  # [B, T, 2]


def _flatten() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Tanh(), nn.Linear(4, 2))


# ------------------------------------------------ in-place operations after hooked layers
def _mlp_inplace() -> nn.Module:
    """In-place dropout and activations right after Linear layers."""
    return nn.Sequential(
        nn.Linear(5, 6),
        nn.Dropout(0.3, inplace=True),
        nn.ReLU(inplace=True),
        nn.Linear(6, 4),
        nn.SiLU(inplace=True),
        nn.Linear(4, 3),
    )


class _BasicBlock(nn.Module):
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


class _ResNet(nn.Module):
    """A two-block torchvision-style ResNet on ``[B, 2, 8, 8]``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn1 = nn.GroupNorm(2, 4)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = _BasicBlock(4, 4)
        self.layer2 = _BasicBlock(4, 8, stride=2)  # 8 channels in: the grouped-kernel strategy
        self.fc = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class _Fire(nn.Module):
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


def _alexnet_squeezenet() -> nn.Module:
    """AlexNet's conv → ReLU(inplace) → MaxPool and classifier, around a Fire module."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        _Fire(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 5),
        nn.ReLU(inplace=True),
        nn.Linear(5, 2),
    )


class _SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.scale = nn.Hardsigmoid(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.scale(self.fc2(self.relu(self.fc1(pooled)))) * x


class _InvertedResidual(nn.Module):
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
            _SqueezeExcitation(8, 4),
            nn.Conv2d(8, 4, 1, bias=False),
            nn.GroupNorm(2, 4),
        )

    def forward(self, x: Tensor) -> Tensor:
        result = self.block(x)
        result += x
        return result


def _mobilenet_v3() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False),
        nn.GroupNorm(2, 4),
        nn.Hardswish(inplace=True),
        _InvertedResidual(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 6),
        nn.Hardswish(inplace=True),
        nn.Linear(6, 2),
    )


class _Linear3dInPlace(nn.Module):
    """Linear on ``[B, T, i]`` returns a view of a ``[B·T, o]`` tensor; here that view, and a
    slice of it, are modified in place."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 5)
        self.outer = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, T, 4]
        h = self.inner(x)
        h[:, 0].mul_(2.0)
        h = torch.relu_(h)
        out = self.outer(h)
        out += x[..., :2]
        return out  # [B, T, 2]


class _EmbeddingPositionsInPlace(nn.Module):
    """Token embeddings with position embeddings added in place."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCABULARY, 4, padding_idx=0)
        self.positions = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, idx: Tensor) -> Tensor:
        h = self.tokens(idx)
        h += self.positions(torch.arange(idx.shape[1]).expand_as(idx))
        return self.head(torch.tanh(h).mean(dim=1))


class _AttentionOutputInPlace(_AttentionSequenceFirst):
    """A residual added, and an activation applied, in place to the output of attention (whose
    rule differentiates the module's own graph from its output), sequence first."""

    def forward(self, x: Tensor) -> Tensor:  # x: [B, T, 3]
        h = self.embed(x).transpose(0, 1)  # [T, B, 4]
        out, _ = self.attention(h, h, h, need_weights=False)
        out += h
        return self.head(torch.tanh_(out).transpose(0, 1))


ARCHITECTURES: list[Architecture] = [
    Architecture("mlp", _mlp, _randn(5)),
    Architecture("deep_mlp_tanh", _deep_mlp_tanh, _randn(4)),
    Architecture("cnn", _cnn, _randn(2, 6, 6)),
    Architecture("conv_strided_dilated_grouped", _conv_strided_dilated_grouped, _randn(4, 7, 5)),
    Architecture("conv_same_reflect", _conv_same_reflect, _randn(2, 5, 6)),
    Architecture("conv_circular_replicate", _conv_circular, _randn(2, 6, 5)),
    Architecture("conv1d_sequence", _Conv1dSequence, _randn(3, 9)),
    Architecture("resnet_block_groupnorm", _ResidualBlock, _randn(2, 4, 4)),
    Architecture("layernorm_mlp", _layernorm_mlp, _randn(5)),
    Architecture("rmsnorm_mlp", _rmsnorm_mlp, _randn(5)),
    Architecture("transformer_encoder", _Transformer, _randn(3, 3)),
    Architecture("transformer_decoder", _Decoder, _pair((3, 4), (2, 4))),
    Architecture("attention_batch_first", _AttentionBatchFirst, _randn(3, 3)),
    Architecture("attention_sequence_first", _AttentionSequenceFirst, _randn(3, 3)),
    Architecture("cross_attention_kdim_vdim", _CrossAttention, _two_inputs),
    Architecture("embedding_mean_pool", _EmbeddingBag, _indices(5)),
    Architecture("embedding_gru", lambda: _EmbeddingRNN(nn.GRU), _indices(4)),
    Architecture("embedding_lstm", lambda: _EmbeddingRNN(nn.LSTM), _indices(4)),
    Architecture("branches", _Branches, _randn(4)),
    Architecture("two_inputs", _TwoInputs, _two_inputs),
    Architecture("two_outputs", _TwoOutputs, _randn(4)),
    Architecture("reused_linear", _ReusedLinear, _randn(4)),
    Architecture("tied_embedding_output", _TiedEmbedding, _indices(3)),
    Architecture("tied_linears", _TiedLinears, _randn(4)),
    Architecture("frozen_and_unused", _FrozenAndUnused, _randn(4)),
    Architecture("dropout", _dropout, _randn(5)),
    Architecture("custom_direct_parameters", _CustomDirectParameters, _randn(4)),
    Architecture("siamese_fallback", _Siamese, _pair((3,), (3,))),
    Architecture("linear_3d", _Linear3d, _randn(3, 4)),
    Architecture("flatten", _flatten, _randn(3, 2, 2)),
    Architecture("mlp_inplace", _mlp_inplace, _randn(5)),
    Architecture("resnet_basic_blocks_inplace", _ResNet, _randn(2, 8, 8)),
    Architecture("alexnet_squeezenet_inplace", _alexnet_squeezenet, _randn(2, 6, 6)),
    Architecture("mobilenet_v3_inplace", _mobilenet_v3, _randn(2, 6, 6)),
    Architecture("linear_3d_inplace", _Linear3dInPlace, _randn(3, 4)),
    Architecture("embedding_positions_inplace", _EmbeddingPositionsInPlace, _indices(5)),
    Architecture("attention_output_inplace", _AttentionOutputInPlace, _randn(3, 3)),
    # benchmarks/models.py's models at their tiny sizes (same code as the benchmark).
    Architecture(
        "benchmark_resnet18_groupnorm_inplace",
        lambda: benchmark.resnet18("tiny"),
        _randn(3, benchmark.RESNET["tiny"].image, benchmark.RESNET["tiny"].image),
    ),
    Architecture(
        "benchmark_multitask_resnet18_inplace",
        lambda: benchmark.MultiTaskResNet18("tiny"),
        _randn(3, benchmark.RESNET["tiny"].image, benchmark.RESNET["tiny"].image),
    ),
    Architecture(
        "benchmark_transformer_encoder",
        lambda: benchmark.TransformerClassifier("tiny"),
        _indices(benchmark.TRANSFORMER["tiny"].length),
    ),
    Architecture(
        "benchmark_gpt_decoder",
        lambda: benchmark.CausalDecoder("tiny"),
        _indices(benchmark.TRANSFORMER["tiny"].length),
    ),
    Architecture(
        "benchmark_gru",
        lambda: benchmark.RecurrentClassifier(nn.GRU, "tiny"),
        _indices(benchmark.RECURRENT["tiny"].length),
    ),
    Architecture(
        "benchmark_lstm",
        lambda: benchmark.RecurrentClassifier(nn.LSTM, "tiny"),
        _indices(benchmark.RECURRENT["tiny"].length),
    ),
]


def trainable_parameters(*modules: nn.Module) -> list[nn.Parameter]:
    """The distinct parameters of ``modules`` that require grad, in a fixed order."""
    params = {id(p): p for module in modules for p in module.parameters() if p.requires_grad}
    return list(params.values())
