"""``MultiheadAttention`` configurations for the tests of its rule, and the losses read from
their batch-first outputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from jdopt.autogram import Engine
from tests.utils.device import draw, seeded

from ._reference import assert_exact

F64 = torch.float64
B, T, S, E = 3, 4, 5, 4


def randn(*shape: int, seed: int = 1) -> Tensor:
    return draw(*shape, generator=seeded(seed), dtype=F64)


def losses_of(out: Tensor, setting: str) -> Tensor:
    """Losses of batch-first outputs ``[B, ...]``: ``[B]``, ``[B, 2]`` or ``[2]``."""
    out = out.reshape(out.shape[0], -1)
    per_sample = torch.stack([torch.sin(out).sum(dim=1), (out**2).mean(dim=1)], dim=1)
    if setting == "B":
        return per_sample.sum(dim=1)
    if setting == "B_k":
        return per_sample
    return torch.stack([per_sample[:, 0].sum(), (per_sample[:, 1] * per_sample[:, 0]).mean()])


SETTINGS = [("B", 0), ("B_k", 0), ("k", None)]


def assert_closed_form_exact(engine: Engine, losses: Tensor, params: list[nn.Parameter]) -> None:
    """The Gramian and the weighted gradient match the reference, without the fallback."""
    assert not assert_exact(engine, losses, params)


@dataclass(frozen=True)
class Case:
    """A ``MultiheadAttention`` configuration and how it is called."""

    name: str
    module: dict = field(default_factory=dict)  # MultiheadAttention's options
    cross: bool = False  # keys and values from another sequence (of length S)
    separate_values: bool = False  # values another tensor than the keys
    call: dict = field(default_factory=dict)  # forward options
    masks: Callable[[], dict] = dict  # masks, made for the call

    def make(self) -> nn.MultiheadAttention:
        torch.manual_seed(0)
        attention = nn.MultiheadAttention(E, num_heads=2, **self.module).to(F64)
        with torch.no_grad():  # non-zero biases: their gradients matter
            for name, param in attention.named_parameters():
                if "bias" in name:
                    param.copy_(randn(*param.shape, seed=3))
        return attention

    def outputs(self, attention: nn.MultiheadAttention) -> Tensor:
        """The output (and the attention weights when asked for), batch first ``[B, ...]``."""
        batch_first = attention.batch_first
        query = randn(B, T, E)
        length = S if self.cross or self.separate_values else T
        key = randn(B, length, attention.kdim, seed=2) if self.cross else query
        value = randn(B, length, attention.vdim, seed=4) if self.separate_values else key
        order = (lambda t: t) if batch_first else (lambda t: t.transpose(0, 1))
        options = {**self.call, **self.masks()}
        out, weights = attention(order(query), order(key), order(value), **options)
        out = order(out).reshape(B, -1)
        if weights is None:
            return out
        return torch.cat([out, weights.reshape(B, -1)], dim=1)


def _padding() -> dict:
    mask = torch.zeros(B, S, dtype=torch.bool)
    mask[0, -2:] = True
    return {"key_padding_mask": mask}


def _causal() -> dict:
    return {"attn_mask": nn.Transformer.generate_square_subsequent_mask(T, dtype=F64)}


def _float_mask_per_head() -> dict:
    return {"attn_mask": randn(B * 2, T, T, seed=5)}


CASES = [
    Case("self"),
    Case("self_batch_first", {"batch_first": True}),
    Case("self_weights", {"batch_first": True}, call={"need_weights": True}),
    Case("self_weights_per_head", call={"need_weights": True, "average_attn_weights": False}),
    Case("no_bias", {"bias": False, "batch_first": True}),
    Case("cross", cross=True),
    Case("cross_batch_first_padding", {"batch_first": True}, cross=True, masks=_padding),
    Case("cross_weights_padding", cross=True, call={"need_weights": True}, masks=_padding),
    Case("separate_values", {"batch_first": True}, cross=True, separate_values=True),
    Case("kdim_vdim", {"kdim": 3, "vdim": 5}, cross=True, separate_values=True),
    Case(
        "kdim_vdim_no_bias_weights",
        {"kdim": 3, "vdim": 5, "bias": False, "batch_first": True},
        cross=True,
        separate_values=True,
        call={"need_weights": True},
    ),
    Case("causal", {"batch_first": True}, masks=_causal),
    Case("causal_hint", {"batch_first": True}, call={"is_causal": True}, masks=_causal),
    Case("causal_weights", call={"need_weights": True, "is_causal": True}, masks=_causal),
    Case("mask_per_head", {"batch_first": True}, masks=_float_mask_per_head),
    Case("dropout", {"dropout": 0.5, "batch_first": True}),
]
