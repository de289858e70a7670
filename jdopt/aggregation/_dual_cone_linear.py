"""Batched reduced linear solves for the active-set loop of :mod:`._dual_cone_box`.

Each row of a batch is one problem. Given a shared symmetric positive definite matrix
``M [m, m]`` and a boolean ``free [k, m]``, both solvers find, per row, the ``x`` that matches
``(x @ M)_F = target_F`` on the row's free coordinates ``F`` while keeping ``x`` fixed off ``F``:
a system of size ``|F|`` per row, different for every row.

- :func:`solve_direct` gathers the ``[k, s, s]`` reduced matrices (padded with identity to the
  largest ``s = |F|`` in the batch) and runs one batched Cholesky: exact, costs ``k s³``.
- :func:`solve_cg` runs conjugate gradients on all rows at once, one ``[k, m] @ [m, m]`` product
  per iteration; rows leave the batch as they converge.
- :func:`solve_refined` does the same to float64 accuracy by iterative refinement: float32 CG
  on the float64 residual, whose products are about twice as fast, a few times over.
"""

from __future__ import annotations

import torch
from torch import Tensor

NOT_DEFINITE = (
    "A principal submatrix of the Gramian is not numerically positive definite, so the "
    "dual-cone projection cannot be solved exactly. Regularise the Gramian more (a larger "
    "`reg_eps`), or use solver='quadprog'."
)

# Iterative refinement: rounds, and the residual reduction of float32 CG in each.
_REFINEMENTS, _ROUGH_REDUCTION = 6, 1e-3
# A round that does not reduce the float64 residual by this factor ends the refinement.
_STALLED = 0.1


def most_cg_steps(m: int) -> int:
    """The most CG iterations of a tight solve of size ``m``; rows that need more are badly
    conditioned, and solved directly instead."""
    return 50 + 2 * m


def rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Returns the dot products of matching rows of ``a`` and ``b`` ``[k, m]``, as ``[k, 1]``."""
    return torch.linalg.vecdot(a, b).unsqueeze(1)


def pad_with_identity(matrix: Tensor) -> Tensor:
    """Returns ``[[M, 0], [0, I]]`` ``[2m, 2m]``, from which :func:`solve_direct` gathers."""
    return torch.block_diag(
        matrix, torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    )


def solve_direct(padded: Tensor, free: Tensor, target: Tensor, fixed: Tensor) -> Tensor:
    """Solves the reduced systems exactly by a padded batched Cholesky.

    Args:
        padded: ``[2m, 2m]`` the output of :func:`pad_with_identity` for ``M [m, m]``, symmetric
            positive definite.
        free: ``[k, m]`` boolean, the coordinates ``F`` solved for in each row.
        target: ``[k, m]`` right-hand sides (only ``F`` is read).
        fixed: ``[k, m]`` values of ``x`` off ``F`` (only the complement of ``F`` is read).

    Returns:
        ``[k, m]`` ``x``, equal to ``fixed`` off ``F`` and to ``M_FF⁻¹ (target − M x_fixed)_F``
        on ``F``.
    """
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
        raise RuntimeError(NOT_DEFINITE)
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
    """Solves the reduced systems by batched conjugate gradients.

    Args:
        matrix: ``[m, m]`` symmetric positive definite ``M``.
        x: ``[k, m]`` starting point, fixed off ``F``; updated in place on ``F``.
        target: ``[k, m]`` right-hand sides (only ``F`` is read).
        free: ``[k, m]`` boolean, the coordinates ``F`` solved for in each row.
        tolerance: ``[k, 1]`` a row stops once ``‖(target − x @ M)_F‖₂`` is below it, or below
            ``reduction`` times its starting value.
        max_iter: the most iterations any row gets.
        reduction: see ``tolerance``.

    Returns:
        ``(x, converged)``: ``x`` updated, and ``[k]`` whether each row stopped before
        ``max_iter``.
    """
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
    matrix: Tensor, x: Tensor, target: Tensor, free: Tensor, tolerance: Tensor, max_iter: int
) -> tuple[Tensor, Tensor]:
    """:func:`solve_cg` on a float64 ``matrix`` to ``tolerance``, by float32 CG corrections.

    Each round computes the float64 residual, on which float32 CG gains ``_ROUGH_REDUCTION``
    (float32 cannot do much better). Rows that stall, or that float32 cannot solve at all, are
    finished by float64 :func:`solve_cg`. Every CG run gets at most ``max_iter`` iterations.
    Returns ``(x, converged)`` like :func:`solve_cg`.
    """
    mask, rough = free.to(matrix.dtype), matrix.float()
    previous = None
    for _ in range(_REFINEMENTS):
        residual = (target - x @ matrix).mul_(mask)
        norm = residual.norm(dim=1, keepdim=True)
        converged = norm <= tolerance
        if bool(converged.all()):
            break
        if previous is not None and not bool((converged | (norm <= _STALLED * previous)).all()):
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
            _ROUGH_REDUCTION,
        )
        x = x + torch.where(solved.unsqueeze(1), correction.to(x.dtype), 0)
        if not bool(solved.all()):  # badly conditioned for float32
            break
    if bool(converged.all()):
        return x, converged.squeeze(1)
    return solve_cg(matrix, x, target, free, tolerance, max_iter)
