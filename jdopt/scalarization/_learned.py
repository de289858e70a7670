"""Scalarizers with learnable per-task parameters, trained with the model: UW and IMTL-L."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._base import Scalarizer, as_shape, check_same_shape


class _Learned(Scalarizer):
    """One learnable parameter per value (named ``parameter_name``, as in TorchJD), 0 at the
    start and after :meth:`reset`."""

    stateful = True
    parameter_name = ""

    def __init__(self, shape: int | tuple[int, ...]) -> None:
        super().__init__()
        self.shape = as_shape(shape)
        self.register_parameter(self.parameter_name, nn.Parameter(torch.zeros(self.shape)))

    def reset(self) -> None:
        with torch.no_grad():
            getattr(self, self.parameter_name).zero_()

    def arguments(self) -> dict[str, Any]:
        return {"shape": self.shape}

    def _scales(self, values: Tensor) -> Tensor:
        parameter = getattr(self, self.parameter_name)
        check_same_shape(parameter, values, self.parameter_name)
        return parameter.to(values.dtype)


class UW(_Learned):
    """Uncertainty weighting: ``Σᵢ (½ e^(−sᵢ) Lᵢ + ½ sᵢ)``, with a learnable log-variance
    ``sᵢ`` per value (``log_var``), trained with the model.

    From Kendall, Gal & Cipolla, *Multi-Task Learning Using Uncertainty to Weigh Losses for
    Scene Geometry and Semantics*, CVPR 2018 (https://arxiv.org/abs/1705.07115).

    With ``JDOptimizer(optimizer, aggregator=UW(k))``, the log-variances join the optimizer as
    a parameter group of their own (the optimizer's defaults); used alone, pass
    ``uw.parameters()`` to the optimizer.

    Args:
        shape: the shape of the values (an int ``n``: ``(n,)``).
    """

    parameter_name = "log_var"

    def forward(self, values: Tensor, /) -> Tensor:
        s = self._scales(values)
        return (0.5 * torch.exp(-s) * values + 0.5 * s).sum()


class IMTLL(_Learned):
    """IMTL-L, the loss-balancing half of impartial multi-task learning: ``Σᵢ (e^(sᵢ) Lᵢ −
    sᵢ)``, with a learnable log-scale ``sᵢ`` per value (``log_scale``), trained with the
    model (as for :class:`UW`, which it equals up to a factor 2 and the sign of ``s``).

    From Liu et al., *Towards Impartial Multi-task Learning*, ICLR 2021.

    Args:
        shape: the shape of the values (an int ``n``: ``(n,)``).
    """

    parameter_name = "log_scale"

    def forward(self, values: Tensor, /) -> Tensor:
        s = self._scales(values)
        return (torch.exp(s) * values - s).sum()
