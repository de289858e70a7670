"""A shared check for aggregation methods: one JDOptimizer step against the method applied to
the Jacobian computed row by row."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from jdopt import JDOptimizer
from tests.utils.reference import jacobian_by_rows

F64 = torch.float64


def _t(*rows: object) -> Tensor:
    return torch.tensor(rows, dtype=F64)


def _per_sample_problem() -> tuple[nn.Linear, Tensor, Tensor]:
    model = nn.Linear(3, 1, dtype=F64)
    with torch.no_grad():
        model.weight.copy_(_t([0.5, -1.0, 2.0]))
        model.bias.fill_(0.1)
    x = _t([1.0, 0.0, 2.0], [-1.0, 1.0, 0.5], [0.0, 2.0, -1.0], [1.5, -0.5, 1.0])
    y = _t([1.0], [0.0], [-1.0], [2.0])
    return model, x, y


def check_jdoptimizer_step(aggregator: nn.Module, reference: nn.Module, engine: str) -> None:
    """One SGD step of JDOptimizer on per-sample losses moves the parameters by
    ``−lr·reference(J)``, ``J`` the Jacobian computed row by row."""
    model, x, y = _per_sample_problem()
    params = list(model.parameters())
    losses = ((model(x) - y) ** 2).squeeze(1)
    expected = reference(jacobian_by_rows(losses, params))
    before = torch.cat([p.detach().reshape(-1) for p in params])
    jd = JDOptimizer(
        torch.optim.SGD(params, lr=0.1), aggregator=aggregator, model=model, batch_dim=0
    )
    jd.zero_grad()
    jd.step(((model(x) - y) ** 2).squeeze(1))
    assert jd.last_step.engine == engine
    after = torch.cat([p.detach().reshape(-1) for p in params])
    assert torch.allclose(before - after, 0.1 * expected, rtol=1e-6, atol=1e-12)
    assert float(expected.abs().max()) > 0
