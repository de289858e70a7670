"""Exact Jacobian descent under DDP: 2 and 4 gloo processes vs one process on the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ._scenarios import SCENARIOS, make_iwrm_model, run
from ._spawn import spawn
from ._worker import mismatch_worker, worker


def _spawn(world: int, out: Path, target=worker) -> None:
    spawn(world, out, target)


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"{w}ranks")
def results(request, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp(f"ddp{request.param}")
    _spawn(request.param, out)
    return out


def _reference(name: str) -> torch.Tensor:
    model = make_iwrm_model()
    run(name, model, model, rank=0, world=1)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("name", SCENARIOS)
def test_distributed_step_equals_the_whole_batch_step(results: Path, name: str) -> None:
    per_rank = torch.load(results / f"{name}.pt")
    assert torch.equal(per_rank, per_rank[:1].expand_as(per_rank)), "ranks diverged"
    expected = _reference(name)
    assert not torch.allclose(
        expected, torch.cat([p.reshape(-1) for p in make_iwrm_model().parameters()])
    )
    assert torch.allclose(per_rank[0], expected, atol=1e-9, rtol=0), (
        (per_rank[0] - expected).abs().max()
    )


def test_models_that_differ_between_processes_are_refused(tmp_path: Path) -> None:
    _spawn(2, tmp_path, mismatch_worker)
    for rank in range(2):
        assert "differs between the processes" in (tmp_path / f"refused{rank}.txt").read_text()


def test_sharded_models_are_refused() -> None:
    from torch import nn

    from jdopt import JDOptimizer

    class FullyShardedDataParallel(nn.Module):  # stands for torch's FSDP wrapper
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(2, 1)

    model = FullyShardedDataParallel()
    with pytest.raises(TypeError, match="DistributedDataParallel"):
        JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model=model)
