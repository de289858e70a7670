from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from .._linalg import compute_gramian
from ._bases import WeightedAggregator
from ._checks import check_int, check_nonnegative
from ._nash_solver import TOLERANCE, solve_nash


class NashMTL(WeightedAggregator):
    """Nash-MTL: the rows bargain over the update; the Nash bargaining solution is the update.

    The weights are the ``α > 0`` with ``G α = 1/α`` (elementwise, ``G = J Jᵀ``), so every row
    gets ``gᵢ·update = 1/αᵢ > 0``; the update ``Jᵀα`` is then scaled down to norm
    ``max_norm`` if it is longer. ``α`` is found by a damped Newton method on the convex
    potential ``½ αᵀGα − Σ log αᵢ`` (no external solver), in float64, on the cosine matrix of
    the rows (which makes the solve independent of the rows' scales) plus a ridge of ``1e-6``,
    so that a singular ``G`` still has a solution; the weights are accurate to about that
    relative level. Zero rows cannot bargain and get weight 0. If Newton does not reach
    ``max |αᵢ(Gα)ᵢ − 1| ≤ 1e-7`` in ``optim_niter`` iterations, a ``RuntimeWarning`` is
    raised and the last iterate is used.

    The bargaining solution ignores the scale of each row (scaling ``gᵢ`` by ``c > 0`` divides
    ``αᵢ`` by ``c``); with independent rows the update before clipping has norm
    ``√(αᵀGα) = √m``, so the default ``max_norm=1`` clips it whenever ``m ≥ 2``.

    From Navon et al., *Multi-Task Learning as a Bargaining Game*, ICML 2022
    (https://arxiv.org/abs/2202.01017).

    Properties: non-conflicting (``J·update = 1/α > 0``, up to the ridge), weighted,
    deterministic given its state; not linear under scaling. Stateful: the last ``α`` (the warm
    start, and the weights reused between recomputations) and a call counter are buffers, saved
    in ``state_dict``; :meth:`reset` restores the initial state. A zero Jacobian gives a zero
    update.

    Args:
        n_tasks: the number of rows ``m`` of the Jacobians to aggregate.
        max_norm: the largest norm of the update (default ``1.0``); ``0`` disables the clipping.
        update_weights_every: recompute ``α`` at one call out of ``update_weights_every``
            (default ``1``: every call); the calls in between reuse the last ``α``.
        optim_niter: the maximum number of Newton iterations (default ``20``, plenty: Newton
            needs 3–10 on full-rank Jacobians, 2–3 from the previous weights, up to ~16 on
            rank-deficient Jacobians with many more rows than their rank).
    """

    weighting: _NashMTLWeighting
    differentiable = False  # Newton's method runs outside autograd

    def __init__(
        self,
        n_tasks: int,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        optim_niter: int = 20,
    ) -> None:
        super().__init__(_NashMTLWeighting(n_tasks, max_norm, update_weights_every, optim_niter))

    def reset(self) -> None:
        """Forgets the last weights and restarts the call counter."""
        self.weighting.reset()


class _NashMTLWeighting(nn.Module):
    """Maps a Jacobian ``[m, n]`` to the (clipped) Nash-MTL weights ``[m]``. See NashMTL."""

    def __init__(
        self, n_tasks: int, max_norm: float, update_weights_every: int, optim_niter: int
    ) -> None:
        super().__init__()
        check_int(n_tasks, "n_tasks", minimum=1)
        check_nonnegative(max_norm, "max_norm")
        check_int(update_weights_every, "update_weights_every", minimum=1)
        check_int(optim_niter, "optim_niter", minimum=1)
        self.n_tasks = n_tasks
        self.max_norm = max_norm
        self.update_weights_every = update_weights_every
        self.optim_niter = optim_niter
        self.register_buffer("alpha", torch.ones(n_tasks, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def forward(self, jacobian: Tensor, /) -> Tensor:
        self._check_rows(jacobian.shape[0])
        if int(self.step) % self.update_weights_every == 0:
            self.alpha.copy_(self._solve(jacobian))
        self.step += 1
        weights = self.alpha.to(dtype=jacobian.dtype, device=jacobian.device)
        return self._clip(weights, jacobian)

    def reset(self) -> None:
        self.alpha.fill_(1.0)
        self.step.zero_()

    def _solve(self, jacobian: Tensor) -> Tensor:
        alpha, residual = solve_nash(compute_gramian(jacobian), self.alpha, self.optim_niter)
        if residual > TOLERANCE:
            warnings.warn(
                f"NashMTL: Newton did not solve G α = 1/α within optim_niter="
                f"{self.optim_niter} iterations (relative residual {residual:.2e} > "
                f"{TOLERANCE:.0e}). The last iterate is used and may be inaccurate. Increase "
                "`optim_niter`.",
                RuntimeWarning,
                stacklevel=2,
            )
        return alpha

    def _clip(self, weights: Tensor, jacobian: Tensor) -> Tensor:
        if self.max_norm == 0:
            return weights
        norm = torch.linalg.vector_norm(weights @ jacobian.detach())
        if norm > self.max_norm:
            weights = weights * (self.max_norm / norm)
        return weights

    def _check_rows(self, m: int) -> None:
        if m != self.n_tasks:
            raise ValueError(
                f"NashMTL was built with n_tasks={self.n_tasks} but the Jacobian has m={m} rows. "
                "Build it with `n_tasks` equal to the number of objectives."
            )

    def extra_repr(self) -> str:
        return (
            f"n_tasks={self.n_tasks}, max_norm={self.max_norm}, "
            f"update_weights_every={self.update_weights_every}, optim_niter={self.optim_niter}"
        )
