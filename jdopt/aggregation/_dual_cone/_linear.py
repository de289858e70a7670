"""Batched reduced linear solves for pivoting, the active-set method and the exact finish.

Each row of a batch is one problem. Given a shared symmetric positive definite matrix
``M [m, m]`` and a boolean ``free [k, m]``, both solvers find, per row, the ``x`` that matches
``(x @ M)_F = target_F`` on the row's free coordinates ``F`` while keeping ``x`` fixed off ``F``:
a system of size ``|F|`` per row, different for every row.

- :func:`solve_direct` gathers the ``[k, s, s]`` reduced matrices (padded with identity to the
  largest ``s = |F|`` in the batch) and runs one batched Cholesky: exact, costs ``k s³``.
- :func:`solve_masked` embeds each reduced system in an ``[m, m]`` one (identity off ``F``):
  one batched Cholesky without gathering, for small m where fixed costs dominate.
- :func:`solve_cg` runs conjugate gradients on all rows at once, one ``[k, m] @ [m, m]`` product
  per iteration; rows leave the batch as they converge.
- :func:`solve_refined` does the same to float64 accuracy by iterative refinement: float32 CG
  on the float64 residual, whose products are about twice as fast, a few times over.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._options import SolverOptions as Options
from ._problem import NotDefinite


def rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Returns the dot products of matching rows of ``a`` and ``b`` ``[k, m]``, as ``[k, 1]``."""
    return torch.linalg.vecdot(a, b).unsqueeze(1)


def solve_direct(padded: Tensor, free: Tensor, target: Tensor, fixed: Tensor) -> Tensor:
    """The reduced systems' exact solutions ``[k, m]``, by a padded batched Cholesky, from
    ``padded = [[M, 0], [0, I]]`` (:attr:`._problem.BoxQP.padded`): ``fixed`` off ``F``,
    ``M_FF⁻¹ (target − M x_fixed)_F`` on ``F``."""
    m = free.shape[1]
    fixed = fixed * ~free
    rhs = target - fixed @ padded[:m, :m]
    sizes = free.sum(dim=1, keepdim=True)
    size = int(sizes.max())
    if size == 0:
        return fixed
    # Each row's free coordinates first; the padding points into the identity block, at
    # distinct places, so that the gathered [k, size, size] matrices are block diagonal.
    order = free_first(free, size)
    padding = torch.arange(size, device=free.device) >= sizes
    index = order + m * padding
    flat = (index.unsqueeze(2) * (2 * m) + index.unsqueeze(1)).reshape(-1)
    reduced = padded.reshape(-1).index_select(0, flat).reshape(-1, size, size)
    factor, info = torch.linalg.cholesky_ex(reduced)
    if bool(info.any()):
        raise NotDefinite
    half = torch.linalg.solve_triangular(
        factor, (rhs.gather(1, order) * ~padding).unsqueeze(2), upper=False
    )
    solution = torch.linalg.solve_triangular(factor.mT, half, upper=True).squeeze(2)
    spread = torch.zeros(free.shape[0], 2 * m, dtype=fixed.dtype, device=fixed.device)
    return spread.scatter_(1, index, solution)[:, :m].add_(fixed)


def free_first(free: Tensor, size: int) -> Tensor:
    """Returns ``[k, size]``: each row's free coordinates in increasing order, then its others.

    What a stable argsort of ``~free`` gives, from a cumulative sum and one scatter.
    """
    positions = torch.arange(free.shape[1], device=free.device).expand_as(free)
    rank = free.cumsum(dim=1)  # among the free coordinates, from 1
    slots = torch.where(free, rank - 1, rank[:, -1:] + positions - rank)
    return torch.empty_like(slots).scatter_(1, slots, positions)[:, :size]


def solve_cg(
    matrix: Tensor,
    x: Tensor,
    target: Tensor,
    free: Tensor,
    tolerance: Tensor,
    max_iter: int,
    reduction: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Solves the reduced systems by batched conjugate gradients from ``x`` (fixed off ``F``,
    updated in place on it), in at most ``max_iter`` iterations; a row stops once
    ``‖(target − x @ M)_F‖₂`` is below its ``tolerance [k, 1]`` or ``reduction`` times its
    starting value. Returns ``(x, [k] whether each row stopped in time)``."""
    mask = free.to(matrix.dtype)
    rows = torch.arange(x.shape[0], device=x.device)
    converged = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    work = x
    residual = (target - x @ matrix).mul_(mask)
    squared = rowdot(residual, residual)
    threshold = torch.maximum(tolerance.square(), squared * reduction**2)
    direction = residual.clone()
    tiny = torch.finfo(matrix.dtype).tiny
    for iteration in range(max_iter + 1):
        going = (squared > threshold).squeeze(1)
        count = int(going.sum())
        if count == 0:
            break
        if iteration == max_iter:
            converged[rows[going]] = False
            break
        if count <= going.numel() // 2:  # drop the converged rows from the batch
            if work is not x:
                x[rows] = work
            keep = going.nonzero().squeeze(1)
            rows, work, mask, threshold = rows[keep], work[keep], mask[keep], threshold[keep]
            residual, squared, direction = residual[keep], squared[keep], direction[keep]
        image = direction @ matrix
        step = squared / rowdot(direction, image).clamp_min(tiny)  # direction is 0 off F
        work.addcmul_(step, direction)
        residual.addcmul_(step, image.mul_(mask), value=-1)
        new_squared = rowdot(residual, residual)
        torch.addcmul(residual, new_squared / squared.clamp_min(tiny), direction, out=direction)
        squared = new_squared
    if work is not x:
        x[rows] = work
    # A matrix that is not positive definite in this precision gives a non-positive
    # curvature, clamped to `tiny`: the step overflows and the row ends non-finite.
    return x, converged & torch.isfinite(x).all(dim=1)


def solve_refined(
    matrix: Tensor,
    x: Tensor,
    target: Tensor,
    free: Tensor,
    tolerance: Tensor,
    max_iter: int,
    options: Options,
) -> tuple[Tensor, Tensor]:
    """:func:`solve_cg` on a float64 ``matrix``, by float32 CG corrections of the float64
    residual, each gaining ``refinement_reduction`` (float32 cannot do much better). Rows that
    stall, or that float32 cannot solve, are finished by float64 :func:`solve_cg`."""
    mask, rough = free.to(matrix.dtype), matrix.float()
    previous, converged = None, torch.zeros(x.shape[0], 1, dtype=torch.bool, device=x.device)
    for _ in range(options.refinement_rounds):
        residual = (target - x @ matrix).mul_(mask)
        norm = residual.norm(dim=1, keepdim=True)
        converged = norm <= tolerance
        if bool(converged.all()):
            break
        if previous is not None and not bool(
            (converged | (norm <= options.stalled * previous)).all()
        ):
            break  # float32 no longer helps: the matrix is badly conditioned
        previous = norm
        correction = torch.zeros_like(residual, dtype=rough.dtype)
        correction, solved = solve_cg(
            rough,
            correction,
            residual.to(rough.dtype),
            free,
            tolerance.to(rough.dtype),
            max_iter,
            options.refinement_reduction,
        )
        x = x + torch.where(solved.unsqueeze(1), correction.to(x.dtype), 0)
        if not bool(solved.all()):  # badly conditioned for float32
            break
    if bool(converged.all()):
        return x, converged.squeeze(1)
    return solve_cg(matrix, x, target, free, tolerance, max_iter)


def solve_masked(
    matrix: Tensor, free: Tensor, target: Tensor, fixed: Tensor, strict: bool = True
) -> Tensor:
    """Solves the reduced systems exactly, each embedded in an ``[m, m]`` one.

    Row ``r`` keeps ``x = fixed`` off its free set ``F`` and solves ``(x @ M)_F = target_F`` on
    it: its matrix is ``M`` where both coordinates are free and the identity elsewhere, which
    is positive definite when ``M`` is. Costs ``k m³``, in few operations. Raises NotDefinite
    where a reduced matrix is not numerically positive definite; without ``strict``, those
    rows are NaN instead (nothing is read on the host).
    """
    identity = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    outside = fixed * ~free
    rhs = torch.where(free, target - outside @ matrix, outside)
    reduced = torch.where(free.unsqueeze(2) & free.unsqueeze(1), matrix, identity)
    factor, info = torch.linalg.cholesky_ex(reduced)
    if strict and bool(info.any()):
        raise NotDefinite
    solution = torch.cholesky_solve(rhs.unsqueeze(2), factor).squeeze(2)
    return solution if strict else torch.where(info.unsqueeze(1) == 0, solution, torch.nan)
