"""Differentiating through a method whose answer autograd cannot follow raises, not lies.

Most methods compute their weights with torch operations, and autograd differentiates them:
the gradient of ``Aggregator(J)`` (or of ``Weighting(G)``) with respect to ``J`` (or ``G``) is
exact. Methods whose weights come from a solver that runs outside autograd (UPGrad's and
DualProj's projections, CAGrad's inner problem, Nash-MTL's Newton iterations) would give a
gradient that treats the weights as constants: wrong. Their output is guarded: the forward
pass is unchanged, and a backward pass through it raises.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NotDifferentiableError(RuntimeError):
    """Raised by a backward pass through a method that is not differentiable."""


def guard(output: Tensor, given: Tensor, method: nn.Module, name: str) -> Tensor:
    """``output`` as is, or, when ``given`` is part of a graph, behind a node whose backward
    pass raises :class:`NotDifferentiableError` naming ``method``."""
    if not (given.requires_grad and torch.is_grad_enabled()):
        return output
    # `given` is an input of the node: the weights of a solver are not even connected to it.
    return _Refuse.apply(output, given, method, name)


class _Refuse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, output: Tensor, given: Tensor, method: nn.Module, name: str) -> Tensor:  # type: ignore[override]
        ctx.method, ctx.name = method, name
        return output.clone()  # not a view: the caller may modify it in place

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[None, None, None, None]:  # type: ignore[override]
        raise NotDifferentiableError(
            f"Cannot differentiate through {_name(ctx.method)}: its weights come from a solver "
            "that autograd does not follow, so the gradient would treat them as constants and be "
            f"wrong. Detach the input (`{ctx.name}.detach()`) to use the result as a constant, "
            "or use a method that autograd differentiates exactly (e.g. MGDA, IMTLG, "
            "AlignedMTL, ConFIG, PCGrad, Mean)."
        )


def _name(method: nn.Module) -> str:
    try:
        return str(method)
    except Exception:  # a user's method whose str fails must not hide this error
        return type(method).__name__
