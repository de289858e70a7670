from __future__ import annotations

import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting
from ._checks import check_choice
from ._pref import check_pref_vector, pref_weights
from ._repr import vector_suffix

SCALE_MODES = ("min", "median", "rmse")


class AlignedMTLWeighting(Weighting):
    """Aligned-MTL: aligns the principal components of the gradient system.

    With ``G = V Λ Vᵀ`` (rank ``r``, eigenvalues ``λ = σ²``), the balancing transformation
    ``B = s · V_r Λ_r^{-1/2} V_rᵀ`` makes the rows' system orthogonal with equal singular values
    ``s``, so its condition number is 1; the weights are ``B p``. ``s`` is the smallest singular
    value (``"min"``, the paper's choice), the median, or the root mean square.

    From Senushkin et al., *Independent Component Alignment for Multi-Task Learning*, CVPR 2023
    (https://arxiv.org/abs/2305.19000).

    Properties: weighted, deterministic; not non-conflicting, not linear under scaling.

    Args:
        pref_vector: ``[m]`` preference weights ``p``. ``None`` (default) means ``1/m`` each.
        scale_mode: ``"min"`` (default), ``"median"`` or ``"rmse"``.
    """

    stateless = True

    def __init__(self, pref_vector: Tensor | None = None, scale_mode: str = "min") -> None:
        super().__init__()
        check_choice(scale_mode, "scale_mode", SCALE_MODES)
        self.register_buffer("pref_vector", check_pref_vector(pref_vector))
        self.scale_mode = scale_mode

    def forward(self, gramian: Tensor, /) -> Tensor:
        weights = pref_weights(self.pref_vector, gramian)
        return _balance(gramian.to(torch.float64), self.scale_mode).to(gramian.dtype) @ weights


def _balance(gramian: Tensor, scale_mode: str) -> Tensor:
    """The balancing transformation ``B`` (the identity for a zero Gramian)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(gramian)
    tol = eigenvalues.max() * gramian.shape[0] * torch.finfo(gramian.dtype).eps
    kept = eigenvalues > tol
    if not kept.any():
        return torch.eye(gramian.shape[0], dtype=gramian.dtype, device=gramian.device)
    eigenvalues, eigenvectors = eigenvalues[kept], eigenvectors[:, kept]
    if scale_mode == "min":
        scale = eigenvalues.min()
    elif scale_mode == "median":
        scale = eigenvalues.median()
    else:
        scale = eigenvalues.mean()
    return scale.sqrt() * (eigenvectors / eigenvalues.sqrt()) @ eigenvectors.T


class AlignedMTL(GramianWeightedAggregator):
    """Aggregates the Jacobian with :class:`AlignedMTLWeighting` (same arguments)."""

    def __init__(self, pref_vector: Tensor | None = None, scale_mode: str = "min") -> None:
        super().__init__(AlignedMTLWeighting(pref_vector, scale_mode))

    def __str__(self) -> str:
        return f"AlignedMTL{vector_suffix(self.weighting.pref_vector)}"
