from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting
from ._checks import check_int, check_nonnegative
from ._simplex import solve_simplex_qp


class MGDAWeighting(Weighting):
    """Multiple Gradient Descent Algorithm: the minimum-norm point of the rows' convex hull.

    The weights are ``argmin_{w ∈ simplex} wᵀGw``. At the optimum ``(Gw)ᵢ ≥ wᵀGw`` for every
    ``i``, so the update does not conflict with any row. jdopt solves this problem exactly with
    Wolfe's minimum-norm-point algorithm, singular Gramians included (TorchJD and the paper's
    code use Frank–Wolfe, whose iterates only approach the optimum).

    From Désidéri, *Multiple-gradient descent algorithm (MGDA) for multiobjective optimization*,
    2012, and Sener & Koltun, *Multi-Task Learning as Multi-Objective Optimization*, NeurIPS 2018
    (https://arxiv.org/abs/1810.04650).

    Differentiable: autograd differentiates the weights exactly with respect to ``G`` (through
    the affine minimiser on the optimal support, which is locally constant almost everywhere).

    Properties: non-conflicting, weighted, deterministic, permutation-invariant; not linear
    under scaling.

    Args:
        epsilon: optimality tolerance on the duality gap ``wᵀGw − minᵢ (Gw)ᵢ``, relative to
            the largest diagonal entry of ``G`` (default ``1e-9``).
        max_iters: maximum number of vertices the solver adds to its support (default
            ``1000``; it needs about as many as the optimal weights have nonzero entries); a
            ``RuntimeWarning`` is raised if it is reached.
    """

    stateless = True

    def __init__(self, epsilon: float = 1e-9, max_iters: int = 1000) -> None:
        super().__init__()
        check_nonnegative(epsilon, "epsilon", strict=True)
        check_int(max_iters, "max_iters", minimum=1)
        self.epsilon = epsilon
        self.max_iters = max_iters

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        g = gramian.detach().to("cpu", torch.float64).numpy()
        corral = solve_simplex_qp(g, np.zeros(m), tol=self.epsilon, max_iters=self.max_iters)
        weights = torch.from_numpy(corral.dense(m)).to(dtype=gramian.dtype, device=gramian.device)
        support = corral.support
        if gramian.requires_grad and torch.is_grad_enabled() and g[np.ix_(support, support)].any():
            # The solver's values, with the derivative of the closed form on its support. A
            # support of zero rows (its Gramian is zero: the min-norm point is the zero row) has
            # locally constant weights, and no closed form (its system is singular).
            closed = _differentiable_weights(gramian, support)
            weights = weights + (closed - closed.detach())
        return weights


def _differentiable_weights(gramian: Tensor, support: np.ndarray) -> Tensor:
    """The optimal weights as a function of ``G`` that autograd differentiates exactly.

    On the optimal support ``S`` (affinely independent rows, locally constant in ``G`` almost
    everywhere), the weights are the affine minimiser ``w_S = M⁻¹1 / 1ᵀM⁻¹1`` with
    ``M = G_S + s·11ᵀ`` (positive definite for any ``s > 0``), and zero elsewhere.
    """
    index = torch.as_tensor(support, device=gramian.device)
    g_s = gramian[index][:, index].double()  # float64: the system can be ill-conditioned
    shift = g_s.detach().diagonal().abs().max()
    ones = torch.ones(len(index), 1, dtype=torch.float64, device=gramian.device)
    beta = torch.linalg.solve(g_s + shift, ones).squeeze(1)
    weights = torch.zeros(gramian.shape[0], dtype=torch.float64, device=gramian.device)
    return weights.index_put((index,), beta / beta.sum()).to(gramian.dtype)


class MGDA(GramianWeightedAggregator):
    """Aggregates the Jacobian with :class:`MGDAWeighting` (same arguments)."""

    def __init__(self, epsilon: float = 1e-9, max_iters: int = 1000) -> None:
        super().__init__(MGDAWeighting(epsilon, max_iters))
