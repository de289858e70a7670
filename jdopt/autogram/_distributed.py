"""The Gramian of the losses of every process, from each process's factors.

Per-sample losses (``batch_dim`` given): the global objectives are every process's objectives,
in rank order. Each layer's inputs and output gradients are gathered along the batch (the
factors are activation-sized, far smaller than per-sample gradients), and the closed-form rules
run on the gathered calls; per-objective gradients that only exist locally (attention, the
fallback) are gathered by rows. Without a batch dimension, the global losses are the mean of
the processes' losses (as DDP averages gradients): the gathered positions give the sum, hence
the factor ``1/W²``, and local per-objective gradients are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..distributed._collectives import all_gather_cat, all_reduce_, local_sizes
from ._layout import Layout
from ._rules import Rule, Use


def gathered_uses(
    rules: Sequence[Rule], uses: dict[int, list[Use]], device: torch.device
) -> dict[int, list[Use]]:
    """Every process's calls of the rules whose formulas only need inputs and output
    gradients, concatenated along the batch (one gathered call per local call)."""
    # On the computation's device: NCCL only communicates CUDA tensors.
    counts = torch.tensor([len(uses[id(rule)]) for rule in rules], device=device)
    if not bool((all_gather_cat(counts.unsqueeze(0), 0) == counts).all()):
        raise RuntimeError(
            "The processes called the hooked modules a different number of times in this step. "
            "Every process must run the same model code on its share of the batch."
        )
    gathered: dict[int, list[Use]] = {}
    for rule in rules:
        if rule.gatherable:
            gathered[id(rule)] = [
                Use((all_gather_cat(use.args[0], 0),), [], [], [all_gather_cat(use.grads[0], 1)])
                for use in uses[id(rule)]
            ]
    return gathered


def combine_rows(grads: Tensor, layout: Layout) -> Tensor:
    """Local per-objective gradients ``[S·B_local, n]`` → global ``[S·B_global, n]``."""
    if not layout.per_sample:
        grads = grads.clone()
        all_reduce_([grads], mean=True)
        return grads
    s = layout.slices
    return all_gather_cat(grads.reshape(s, -1, grads.shape[-1]), 1).reshape(-1, grads.shape[-1])


def batch_sizes(local: int, device: torch.device) -> list[int]:
    return local_sizes(local, device)


def reduce_grads(grads: list[Tensor], layout: Layout) -> None:
    """Sums the processes' weighted gradients (averages them without a batch dimension)."""
    all_reduce_(grads, mean=not layout.per_sample)
