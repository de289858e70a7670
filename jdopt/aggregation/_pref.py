"""Preference vectors: the per-objective weights that some methods start from."""

from __future__ import annotations

from torch import Tensor

from ._checks import check_length, check_vector


def check_pref_vector(pref_vector: Tensor | None) -> Tensor | None:
    """Validates a user-given preference vector (``None`` means uniform weights ``1/m``)."""
    if pref_vector is None:
        return None
    return check_vector(pref_vector, "pref_vector").detach().clone()


def pref_weights(pref_vector: Tensor | None, gramian: Tensor) -> Tensor:
    """Returns the preference weights ``[m]`` on the Gramian's device and dtype.

    ``None`` gives the mean weights ``1/m``.
    """
    m = gramian.shape[0]
    if pref_vector is None:
        return gramian.new_full((m,), 1.0 / m)
    check_length(pref_vector, "pref_vector", m)
    return pref_vector.to(dtype=gramian.dtype, device=gramian.device)
