from __future__ import annotations

import torch
from torch import Tensor

from ._bases import Aggregator
from ._checks import check_length
from ._pref import check_pref_vector
from ._repr import vector_suffix


class ConFIG(Aggregator):
    """Conflict-Free Inverse Gradients (ConFIG).

    The rows are normalised to unit length (zero rows stay zero) into ``U``; the direction of
    the update is the unit vector of ``pinv(U) @ p``, which has the same positive inner
    product with every unit row when the rows are linearly independent and ``p`` is uniform.
    Its length is the sum of the projections of the rows on that direction:
    ``update = (Σᵢ gᵢ·d) d`` with ``d = unit(pinv(U) p)``.

    From Liu et al., *ConFIG: Towards Conflict-free Training of Physics Informed Neural
    Networks*, ICLR 2025 (https://arxiv.org/abs/2408.11104).

    Properties: non-conflicting when the rows are linearly independent and ``p > 0``;
    weighted (the update lies in the span of the rows); deterministic; invariant to the
    scaling of individual rows in its direction but not linear under scaling. A Jacobian with
    no usable direction (all zero, or ``pinv(U) @ p = 0``) gives a zero update.

    Args:
        pref_vector: ``[m]`` preference vector ``p``, the target inner products of the
            direction with the unit rows. ``None`` (default) means ones.
    """

    def __init__(self, pref_vector: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("pref_vector", check_pref_vector(pref_vector))

    def forward(self, jacobian: Tensor, /) -> Tensor:
        pref = self._pref(jacobian)
        if jacobian.shape[1] == 0:
            return jacobian.new_zeros(0)
        inverse = torch.linalg.pinv(_unit_rows(jacobian))
        raw = inverse @ pref
        norm = torch.linalg.vector_norm(raw)
        # `raw` is rounding noise when p is (nearly) orthogonal to the range of U.
        noise = 8 * torch.finfo(raw.dtype).eps * torch.linalg.vector_norm(inverse) * pref.norm()
        if norm <= noise:
            return torch.zeros_like(jacobian[0])
        direction = raw / norm
        return (jacobian @ direction).sum() * direction

    def _pref(self, jacobian: Tensor) -> Tensor:
        m = jacobian.shape[0]
        if self.pref_vector is None:
            return jacobian.new_ones(m)
        check_length(self.pref_vector, "pref_vector", m)
        return self.pref_vector.to(dtype=jacobian.dtype, device=jacobian.device)

    def __str__(self) -> str:
        return f"ConFIG{vector_suffix(self.pref_vector)}"


def _unit_rows(jacobian: Tensor) -> Tensor:
    """Divides each row by its norm; zero rows stay zero.

    Dividing by the largest entry first keeps the norm free of overflow and underflow.
    """
    scale = jacobian.abs().amax(dim=1, keepdim=True)
    scaled = jacobian / torch.where(scale > 0, scale, 1.0)
    norms = torch.linalg.vector_norm(scaled, dim=1, keepdim=True)
    return scaled / torch.where(norms > 0, norms, 1.0)
