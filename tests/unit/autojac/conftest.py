from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

Given = Callable[[list[Tensor]], list[Tensor]]


@pytest.fixture(params=["own nodes", "one shared node"])
def two_stage(request: pytest.FixtureRequest) -> Given:
    """How a test gives its tasks: as they are, or all through one shared graph node.

    Tasks that reach the features through graph nodes of their own run their heads once and
    only the trunk batched (two stages); tasks that share a node run batched through all of
    it (one pass). Adding the same zero-valued node to every task changes no value and no
    gradient, only which of the two runs: the answers must not differ.
    """
    if request.param == "own nodes":
        return list

    def shared_node(tasks: list[Tensor]) -> list[Tensor]:
        dtype = next(t.dtype for t in tasks)
        anchor = torch.zeros((), dtype=dtype, requires_grad=True).clone()  # a non-leaf node
        return [task + anchor for task in tasks]

    return shared_node
