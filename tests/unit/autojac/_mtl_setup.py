"""A small multi-task problem for ``mtl_backward``'s tests: a trunk, one head per task."""

from __future__ import annotations

import torch
from torch import nn


def trunk_and_heads(n_tasks: int = 3):
    """A seeded float64 trunk and ``n_tasks`` heads on a batch of 6; returns the trunk, the
    heads, the features and the stacked task losses."""
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5)).double()
    heads = [nn.Linear(5, 1).double() for _ in range(n_tasks)]
    x = torch.randn(6, 4, dtype=torch.float64)
    features = trunk(x)
    losses = torch.stack([(head(features) ** 2).mean() for head in heads])
    return trunk, heads, features, losses
