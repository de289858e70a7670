"""The Gramian helpers against ``J @ J.T``."""

from __future__ import annotations

import pytest
import torch

from jdopt._linalg import compute_gramian, sum_of_gramians
from tests.utils.device import draw


@pytest.mark.parametrize(("m", "n"), [(1, 5), (3, 40000), (10, 32768), (16, 33000), (17, 40000)])
def test_compute_gramian_is_the_symmetric_product_with_the_transpose(m: int, n: int) -> None:
    g = torch.Generator().manual_seed(n)
    matrix = draw(m, n, generator=g, dtype=torch.float64)
    gramian = compute_gramian(matrix)
    assert torch.equal(gramian, gramian.T)
    assert torch.allclose(gramian, matrix @ matrix.T, rtol=1e-12, atol=1e-9)


def test_sum_of_gramians_is_the_gramian_of_the_concatenation() -> None:
    g = torch.Generator().manual_seed(0)
    blocks = [draw(4, n, generator=g, dtype=torch.float64) for n in (3, 35000, 1)]
    blocks.append(draw(4, 2, generator=g).float())  # promoted to float64
    matrix = torch.cat([b.double() for b in blocks], dim=1)
    gramian = sum_of_gramians(blocks)
    assert gramian.dtype == torch.float64
    assert torch.equal(gramian, gramian.T)
    assert torch.allclose(gramian, matrix @ matrix.T, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_blocks_give_a_float32_gramian(dtype: torch.dtype) -> None:
    blocks = [torch.full((2, 40000), 4.0, dtype=dtype), torch.ones(2, 3, dtype=dtype)]
    gramian = sum_of_gramians(blocks)  # 40000 · 16 overflows float16
    assert gramian.dtype == torch.float32
    assert torch.allclose(gramian, torch.full((2, 2), 640003.0))
