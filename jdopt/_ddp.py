"""What JDOptimizer checks and changes on a DistributedDataParallel model."""

from __future__ import annotations

import torch
from torch import nn

from .distributed import all_reduce_, is_distributed


def is_ddp(model: object) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)


def global_step(model: object) -> bool:
    """Whether JDOptimizer takes one step over every process's losses: under
    torch.distributed, with a DDP model or none (the autojac engine on the optimizer's
    parameters); any other model is trained per process."""
    return is_distributed() and (model is None or is_ddp(model))


def check_wrapping(model: object) -> None:
    """Refuses sharded models and models that differ between the processes."""
    name = type(model).__name__
    if "FullyShardedDataParallel" in name or name.startswith("FSDP"):
        raise TypeError(
            f"JDOptimizer does not support {name}: parameters are sharded, so the engines cannot "
            "see whole gradients. Use DistributedDataParallel."
        )
    if not is_ddp(model) or not is_distributed():
        return
    params = [p for p in model.module.parameters() if p.requires_grad]
    fingerprint = torch.tensor(
        [len(params), sum(p.numel() for p in params)], dtype=torch.float64,
        device=params[0].device if params else None,
    )  # fmt: skip
    total = fingerprint.clone()
    all_reduce_([total], mean=True)
    if not torch.equal(total, fingerprint):
        raise ValueError(
            "The model passed to JDOptimizer differs between the processes (number or size of "
            "trainable parameters). Wrap the same model in DistributedDataParallel everywhere."
        )


def take_over_gradient_sync(model: nn.parallel.DistributedDataParallel) -> None:
    """JDOptimizer communicates what the global step needs itself; DDP's own gradient
    all-reduce would average per-process gradients (not Jacobian descent) and double-count."""
    model.require_backward_grad_sync = False


def sync_grads(params: list[torch.Tensor], *, mean: bool) -> None:
    """Sums (or averages) ``.grad`` over the processes; missing gradients count as zeros."""
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    all_reduce_(grads, mean=mean)
