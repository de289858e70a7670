"""FISTA: a cheap guess of the solution and of its active set, for pivoting to make exact.

Projected gradient steps with Nesterov's momentum, three tensor operations each. With a restart
period, the momentum restarts every period (which makes FISTA converge linearly on these
strongly convex problems) and the run stops once the active set has settled.

Beck & Teboulle, *A fast iterative shrinkage-thresholding algorithm*, SIAM J. Imaging Sci. 2009;
O'Donoghue & Candès, *Adaptive restart for accelerated gradient schemes*, 2015.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._options import SolverOptions as Options
from ._problem import BoxQP


def fista(
    qp: BoxQP, x: Tensor | None, options: Options, *, steps: int, period: int = 0
) -> tuple[Tensor, None]:
    """Runs ``steps`` FISTA steps from ``x [k, m]`` (or ``max(ℓ, 0)``), restarted every
    ``period`` steps if positive, until at most one coordinate per ``options.settled`` rows
    changes sides of ``ℓ + tolerance · scale`` in a period. A guess: no row is reported solved.
    Without restarts, nothing is read on the host.
    """
    x = qp.lower.clamp_min(0) if x is None else x
    tolerance = options.rough_tolerance if x.dtype == torch.float32 else options.tolerance
    step = 1 / largest_eigenvalue(qp.matrix, options.squaring_size)
    # One projected gradient step from p is max(p @ (I − step M) + step b, ℓ).
    transition = torch.eye(qp.matrix.shape[0], dtype=x.dtype, device=x.device) - step * qp.matrix
    shift = None if qp.homogeneous else qp.linear * step
    ceiling = qp.lower + tolerance * qp.scale() if period else None
    x = torch.maximum(x, qp.lower)
    point, new = x.clone(), torch.empty_like(x)
    momentum, active = 1.0, None
    for iteration in range(1, steps + 1):
        if shift is None:
            torch.mm(point, transition, out=new)
        else:
            torch.addmm(shift, point, transition, out=new)
        torch.maximum(new, qp.lower, out=new)
        if period and iteration % period == 0:
            previous, active = active, new <= ceiling
            if previous is not None and _settled(previous, active, options.settled):
                x = new
                break
            point.copy_(new)
            x, new, momentum = new, x, 1.0
            continue
        next_momentum = (1 + (1 + 4 * momentum**2) ** 0.5) / 2
        torch.lerp(x, new, 1 + (momentum - 1) / next_momentum, out=point)
        x, new, momentum = new, x, next_momentum
    return x, None


def _settled(previous: Tensor, active: Tensor, rows_per_change: int) -> bool:
    """Whether at most one coordinate per ``rows_per_change`` rows changed sides."""
    return int((previous ^ active).sum()) <= active.shape[0] // rows_per_change


def largest_eigenvalue(matrix: Tensor, squaring_size: int, iterations: int = 10) -> Tensor:
    """Returns an upper bound on ``λ_max(matrix)`` (symmetric positive semi-definite), 0-d.

    Up to ``squaring_size``: ``‖M⁸‖_F^(1/8)``, from three squarings — a true bound, at most
    ``m^(1/16)`` times too large (when the spectrum is flat, where a loose bound costs FISTA
    little). Beyond: power iteration, plus 10% for safety, as ``m³`` products get expensive.
    """
    m = matrix.shape[0]
    if m <= squaring_size:
        power = matrix / matrix.diagonal().amax()  # keeps the eighth power in range (≤ m⁸)
        for _ in range(3):
            power = power @ power
        return torch.linalg.matrix_norm(power) ** 0.125 * matrix.diagonal().amax()
    vector = 1 + torch.arange(m, dtype=matrix.dtype, device=matrix.device) / m
    for _ in range(iterations):
        vector = matrix @ vector
        vector = vector / vector.norm()
    return 1.1 * (vector @ matrix @ vector)
