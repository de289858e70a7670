"""ExcessMTL: task weights that grow with each task's estimated excess risk."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._bases import WeightedAggregator
from ._checks import check_int, check_nonnegative
from ._state import copied

_FLOOR = 1e-7  # keeps the square roots and the divisions finite, as in the reference code


class ExcessMTL(WeightedAggregator):
    """Robust multi-task learning with excess risks: weights on the simplex, moved at each call
    by an exponentiated-gradient step towards the tasks whose excess risk is largest.

    The excess risk of task ``i`` is estimated to second order as ``Êᵢ = gᵢᵀ Hᵢ⁻¹ gᵢ`` with
    the diagonal AdaGrad estimate ``Hᵢ = √(Σₜ gᵢ,ₜ² + 1e-7)`` of its Hessian (Equations 6–7;
    ``Σₜ`` over the calls so far). Then ``w ← softmax(log w + η Ê / Ê₀)`` (Equation 9, in log
    space, which saturates instead of overflowing), from ``w = 1/m``. The baseline ``Ê₀`` is
    the mean ``Ê`` of the ``n_warmup_steps`` first calls, which return ``1/m`` (the paper's
    Appendix C.1 suggests three epochs); with no warm-up, the first call's ``Ê`` is the
    baseline and is used as it is (as in the authors' code and LibMTL).

    From He et al., *Robust Multi-Task Learning with Excess Risks*, ICML 2024
    (https://proceedings.mlr.press/v235/he24n.html).

    Properties: stateful (``Σ g²`` ``[m, n]`` — one number per task and parameter —, the
    weights, the baseline and the call count are in ``state_dict``; :meth:`reset` forgets
    them), deterministic, weighted; needs the Jacobian; not non-conflicting, not linear under
    scaling, not differentiable. Unlike TorchJD, which has an ``ExcessMTLWeighting`` taking the
    Jacobian, jdopt's weightings take Gramians, so only the aggregator is public.

    Args:
        robust_step_size: the step ``η > 0``.
        n_warmup_steps: the calls that only collect statistics (``0``: none).
    """

    differentiable = False

    def __init__(self, robust_step_size: float = 1.0, n_warmup_steps: int = 0) -> None:
        super().__init__(_ExcessMTLWeighting(robust_step_size, n_warmup_steps))

    def reset(self) -> None:
        """Forgets the statistics, the weights, the baseline and the call count."""
        self.weighting.reset()

    def constructor_arguments(self) -> dict[str, Any]:
        return {
            "robust_step_size": self.weighting.robust_step_size,
            "n_warmup_steps": self.weighting.n_warmup_steps,
        }


class _ExcessMTLWeighting(nn.Module):
    """Maps a Jacobian ``[m, n]`` to ExcessMTL's weights ``[m]``. See ExcessMTL."""

    def __init__(self, robust_step_size: float, n_warmup_steps: int) -> None:
        super().__init__()
        check_nonnegative(robust_step_size, "robust_step_size", strict=True)
        check_int(n_warmup_steps, "n_warmup_steps", minimum=0)
        self.robust_step_size, self.n_warmup_steps = robust_step_size, n_warmup_steps
        self.reset()

    def forward(self, jacobian: Tensor, /) -> Tensor:
        squares = jacobian.detach().square()
        self._start(squares)
        self._squares.add_(squares)
        excess = (squares / (self._squares + _FLOOR).sqrt()).sum(dim=1)
        self._calls += 1
        if self._calls <= self.n_warmup_steps:
            self._warmup.add_(excess)
            return self._weights
        if self._baseline is None:  # the first call after the warm-up
            warm = self.n_warmup_steps > 0
            self._baseline = self._warmup / self.n_warmup_steps if warm else excess
            excess = excess / (self._baseline + _FLOOR) if warm else excess
        else:
            excess = excess / (self._baseline + _FLOOR)
        logits = self._weights.log() + self.robust_step_size * excess
        self._weights = torch.softmax(logits, dim=0)
        return self._weights

    def _start(self, squares: Tensor) -> None:
        if self._squares is None:
            m = squares.shape[0]
            self._squares = torch.zeros_like(squares)
            self._warmup = torch.zeros_like(squares[:, 0])
            self._weights = torch.full_like(squares[:, 0], 1 / m)
        elif self._squares.shape != squares.shape:
            raise ValueError(
                f"ExcessMTL holds statistics of a Jacobian of shape "
                f"{tuple(self._squares.shape)}; found one of shape {tuple(squares.shape)}. Call "
                "`reset()` before changing the objectives or the parameters."
            )

    def reset(self) -> None:
        self._squares: Tensor | None = None
        self._warmup: Tensor | None = None
        self._weights: Tensor | None = None
        self._baseline: Tensor | None = None
        self._calls = 0

    def get_extra_state(self) -> Any:
        names = ("_squares", "_warmup", "_weights", "_baseline", "_calls")
        return {name: copied(getattr(self, name)) for name in names}

    def set_extra_state(self, state: Any) -> None:
        for name, value in state.items():
            setattr(self, name, copied(value))
