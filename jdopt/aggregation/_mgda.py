from __future__ import annotations

from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting
from ._checks import check_int, check_nonnegative
from ._simplex import solve_simplex_qp


class MGDAWeighting(Weighting):
    """Multiple Gradient Descent Algorithm: the minimum-norm point of the rows' convex hull.

    The weights are ``argmin_{w ∈ simplex} wᵀGw``. At the optimum ``(Gw)ᵢ ≥ wᵀGw`` for every
    ``i``, so the update does not conflict with any row. jdopt solves this problem exactly with
    an active-set method (TorchJD and the paper's code use Frank–Wolfe, whose iterates only
    approach the optimum).

    From Désidéri, *Multiple-gradient descent algorithm (MGDA) for multiobjective optimization*,
    2012, and Sener & Koltun, *Multi-Task Learning as Multi-Objective Optimization*, NeurIPS 2018
    (https://arxiv.org/abs/1810.04650).

    Properties: non-conflicting, weighted, deterministic, permutation-invariant; not linear
    under scaling.

    Args:
        epsilon: optimality tolerance, relative to the largest diagonal entry of ``G``
            (default ``1e-9``).
        max_iters: maximum number of active-set changes (default ``1000``); a
            ``RuntimeWarning`` is raised if it is reached.
    """

    def __init__(self, epsilon: float = 1e-9, max_iters: int = 1000) -> None:
        super().__init__()
        check_nonnegative(epsilon, "epsilon", strict=True)
        check_int(max_iters, "max_iters", minimum=1)
        self.epsilon = epsilon
        self.max_iters = max_iters

    def forward(self, gramian: Tensor, /) -> Tensor:
        linear = gramian.new_zeros(gramian.shape[0])
        weights = solve_simplex_qp(gramian, linear, tol=self.epsilon, max_iters=self.max_iters)
        return weights.to(dtype=gramian.dtype, device=gramian.device)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}, max_iters={self.max_iters}"


class MGDA(GramianWeightedAggregator):
    """Aggregates the Jacobian with :class:`MGDAWeighting` (same arguments)."""

    def __init__(self, epsilon: float = 1e-9, max_iters: int = 1000) -> None:
        super().__init__(MGDAWeighting(epsilon, max_iters))
