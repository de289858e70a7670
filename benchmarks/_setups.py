"""Each benchmarked model with its data and its losses: per-sample losses ``[B]``, or (for the
multi-task model) one loss per task."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if __package__:  # imported as benchmarks._setups
    from . import _zoo as zoo
else:  # models.py run as a script: its folder is on the path
    import _zoo as zoo

Batch = tuple[Tensor, Tensor]  # inputs, targets


@dataclasses.dataclass(frozen=True)
class Setup:
    """A model with its data and its per-sample losses ``[B]`` (``None``: task losses)."""

    build: Callable[[], nn.Module]
    batch: Callable[[int, torch.Generator], Batch]
    losses: Callable[[nn.Module, Tensor, Tensor], Tensor] | None


def _images(batch: int, g: torch.Generator) -> Batch:
    s = zoo.RESNET["full"]
    x = torch.randn(batch, 3, s.image, s.image, generator=g)
    return x, torch.randint(0, s.classes, (batch, zoo.TASKS), generator=g)


def _tokens(size: zoo.SequenceSize) -> Callable[[int, torch.Generator], Batch]:
    def make(batch: int, g: torch.Generator) -> Batch:
        idx = torch.randint(0, size.vocabulary, (batch, size.length), generator=g)
        return idx, torch.randint(0, size.classes, (batch,), generator=g)

    return make


def _text(batch: int, g: torch.Generator) -> Batch:
    s = zoo.TRANSFORMER["full"]
    idx = torch.randint(0, s.vocabulary, (batch, s.length + 1), generator=g)
    return idx[:, :-1], idx[:, 1:]


def _classification(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x), y.reshape(len(y), -1)[:, 0], reduction="none")


def _next_token(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """One loss per sequence: the mean cross-entropy of its tokens."""
    logits = model(x)  # [B, T, V]
    return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(dim=1)


def task_losses(model: zoo.MultiTaskResNet18, x: Tensor, y: Tensor) -> tuple[list[Tensor], Tensor]:
    features = model.trunk(x)
    losses = [F.cross_entropy(h(features), y[:, i]) for i, h in enumerate(model.heads)]
    return losses, features


def _recurrent(kind: type[nn.RNNBase]) -> Setup:
    return Setup(
        lambda: zoo.RecurrentClassifier(kind), _tokens(zoo.RECURRENT["full"]), _classification
    )


SETUPS: dict[str, Setup] = {
    "resnet18": Setup(zoo.resnet18, _images, _classification),
    "transformer": Setup(
        zoo.TransformerClassifier, _tokens(zoo.TRANSFORMER["full"]), _classification
    ),
    "gpt": Setup(zoo.CausalDecoder, _text, _next_token),
    "gru": _recurrent(nn.GRU),
    "lstm": _recurrent(nn.LSTM),
    "multitask": Setup(zoo.MultiTaskResNet18, _images, None),
}
