"""Batched reduced linear solves for the active-set loop of :mod:`._dual_cone_box`.

Each row of a batch is one problem. Given a shared symmetric positive definite matrix
``M [m, m]`` and a boolean ``free [k, m]``, both solvers find, per row, the ``x`` that matches
``(x @ M)_F = target_F`` on the row's free coordinates ``F`` while keeping ``x`` fixed off ``F``:
a system of size ``|F|`` per row, different for every row.

- :func:`solve_direct` gathers the ``[k, s, s]`` reduced matrices (padded with identity to the
  largest ``s = |F|`` in the batch) and runs one batched Cholesky: exact, costs ``k s³``.
- :func:`solve_cg` runs conjugate gradients on all rows at once, one ``[k, m] @ [m, m]`` product
  per iteration; rows leave the batch as they converge.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Returns the dot products of matching rows of ``a`` and ``b`` ``[k, m]``, as ``[k, 1]``."""
    return torch.linalg.vecdot(a, b).unsqueeze(1)


def solve_direct(matrix: Tensor, free: Tensor, target: Tensor, fixed: Tensor) -> Tensor:
    """Solves the reduced systems exactly by a padded batched Cholesky.

    Args:
        matrix: ``[m, m]`` symmetric positive definite ``M``.
        free: ``[k, m]`` boolean, the coordinates ``F`` solved for in each row.
        target: ``[k, m]`` right-hand sides (only ``F`` is read).
        fixed: ``[k, m]`` values of ``x`` off ``F`` (only the complement of ``F`` is read).

    Returns:
        ``[k, m]`` ``x`` equal to ``fixed`` off ``F`` and to ``M_FF⁻¹ (target − M x_fixed)_F`` on it.
    """
    fixed = fixed * ~free
    rhs = target - fixed @ matrix
    sizes = free.sum(dim=1)
    size = int(sizes.max())
    if size == 0:
        return fixed
    m = matrix.shape[0]
    # Free coordinates first (stable), then the others: the first `size` are the row's system.
    order = torch.argsort((~free).to(torch.uint8), dim=1, stable=True)[:, :size]
    valid = (torch.arange(size, device=free.device) < sizes.unsqueeze(1)).to(matrix.dtype)
    flat = order.unsqueeze(2) * m + order.unsqueeze(1)
    reduced = matrix.reshape(-1)[flat] * (valid.unsqueeze(2) * valid.unsqueeze(1))
    reduced.diagonal(dim1=1, dim2=2).add_(1 - valid)  # identity on the padding
    factor, info = torch.linalg.cholesky_ex(reduced)
    if bool(info.any()):
        raise RuntimeError(
            "A principal submatrix of the Gramian is not numerically positive definite, so the "
            "dual-cone projection cannot be solved exactly. Regularise the Gramian more (a "
            "larger `reg_eps`), or use solver='quadprog'."
        )
    solution = torch.cholesky_solve((rhs.gather(1, order) * valid).unsqueeze(2), factor)
    return fixed.scatter(1, order, solution.squeeze(2) * valid)


def solve_cg(
    matrix: Tensor,
    x: Tensor,
    product: Tensor,
    target: Tensor,
    free: Tensor,
    tolerance: Tensor,
    max_iter: int,
    reduction: float = 0.0,
) -> tuple[Tensor, Tensor, bool]:
    """Solves the reduced systems by batched conjugate gradients, in place.

    Args:
        matrix: ``[m, m]`` symmetric positive definite ``M``.
        x: ``[k, m]`` starting point; updated in place on ``F`` only.
        product: ``[k, m]`` equal to ``x @ M`` on entry; kept equal to it (updated in place).
        target: ``[k, m]`` right-hand sides (only ``F`` is read).
        free: ``[k, m]`` boolean, the coordinates ``F`` solved for in each row.
        tolerance: ``[k, 1]`` a row stops once ``‖(target − x @ M)_F‖₂`` is below it...
        max_iter: the most iterations any row gets.
        reduction: ... or below ``reduction`` times its value at the start.

    Returns:
        ``(x, product, converged)``: the same tensors, updated, and whether every row stopped
        before ``max_iter``.
    """
    mask = free.to(matrix.dtype)
    rows = torch.arange(x.shape[0], device=x.device)
    work_x, work_p = x, product
    residual = (target - product) * mask
    squared = rowdot(residual, residual)
    threshold = torch.maximum(tolerance.square(), squared * reduction**2)
    direction = residual.clone()
    tiny = torch.finfo(matrix.dtype).tiny
    converged = False
    for iteration in range(max_iter + 1):
        going = (squared > threshold).squeeze(1)
        count = int(going.sum())
        if count == 0:
            converged = True
            break
        if iteration == max_iter:
            break
        if count <= going.numel() // 2:  # drop the converged rows from the batch
            if work_x is not x:
                x[rows], product[rows] = work_x, work_p
            keep = going.nonzero().squeeze(1)
            rows, work_x, work_p = rows[keep], work_x[keep], work_p[keep]
            residual, squared, direction = residual[keep], squared[keep], direction[keep]
            mask, threshold = mask[keep], threshold[keep]
        image = direction @ matrix
        masked = image * mask
        step = squared / rowdot(direction, masked).clamp_min(tiny)
        work_x.addcmul_(step, direction)
        work_p.addcmul_(step, image)
        residual.addcmul_(step, masked, value=-1)
        new_squared = rowdot(residual, residual)
        direction.mul_(new_squared / squared.clamp_min(tiny)).add_(residual)
        squared = new_squared
    if work_x is not x:
        x[rows], product[rows] = work_x, work_p
    return x, product, converged
