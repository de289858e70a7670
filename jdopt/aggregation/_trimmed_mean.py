from __future__ import annotations

from torch import Tensor

from ._bases import Aggregator
from ._checks import check_int


class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean of the rows of the Jacobian.

    For every column (parameter), the ``trim_number`` largest and the ``trim_number`` smallest
    values are dropped and the remaining ``m − 2·trim_number`` values are averaged. With
    ``trim_number=0`` this is the mean of the rows.

    From Yin et al., *Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates*,
    ICML 2018 (https://arxiv.org/abs/1803.01498).

    Properties: deterministic, permutation-invariant, positively homogeneous (scaling the whole
    Jacobian by ``c > 0`` scales the update by ``c``); not weighted (each coordinate keeps
    different rows), not non-conflicting, not linear under scaling of individual rows.

    Args:
        trim_number: how many of the largest and how many of the smallest values to drop in
            each column (an int ``≥ 0``). The Jacobian needs ``m > 2·trim_number`` rows.
    """

    def __init__(self, trim_number: int) -> None:
        super().__init__()
        check_int(trim_number, "trim_number", minimum=0)
        self.trim_number = trim_number

    def forward(self, jacobian: Tensor, /) -> Tensor:
        m = jacobian.shape[0]
        kept = m - 2 * self.trim_number
        if kept <= 0:
            raise ValueError(
                f"TrimmedMean(trim_number={self.trim_number}) drops 2·trim_number = "
                f"{2 * self.trim_number} values per column, so it needs more than that many rows. "
                f"Found m={m}. Use trim_number ≤ {(m - 1) // 2} or give more objectives."
            )
        sorted_columns = jacobian.sort(dim=0).values
        return sorted_columns.narrow(0, self.trim_number, kept).mean(dim=0)

    def __str__(self) -> str:
        return f"TM{self.trim_number}"
