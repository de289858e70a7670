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

from ..distributed import all_gather_cat, all_reduce_, gather_sizes
from ._layout import Layout
from ._rules import Rule, Use


def gathered_uses(
    rules: Sequence[Rule], uses: dict[int, list[Use]], device: torch.device
) -> dict[int, list[Use]]:
    """Every process's calls of the rules whose formulas only need inputs and output
    gradients, concatenated along the batch (one gathered call per local call).

    The calls' batch sizes are gathered once, in one collective, before their tensors."""
    # On the computation's device: NCCL only communicates CUDA tensors.
    counts = [len(uses[id(rule)]) for rule in rules]
    calls = [(rule, use) for rule in rules if rule.gatherable for use in uses[id(rule)]]
    local = [n for _, use in calls for n in (use.args[0].shape[0], use.grads[0].shape[1])]
    everyone = gather_sizes(counts, device)
    if any(n != count for count, sizes in zip(counts, everyone, strict=True) for n in sizes):
        raise RuntimeError(
            "The processes called the hooked modules a different number of times in this step. "
            "Every process must run the same model code on its share of the batch."
        )
    sizes = gather_sizes(local, device)
    gathered: dict[int, list[Use]] = {id(rule): [] for rule in rules if rule.gatherable}
    for k, (rule, use) in enumerate(calls):
        inputs = all_gather_cat(use.args[0], 0, sizes[2 * k])
        grads = all_gather_cat(use.grads[0], 1, sizes[2 * k + 1])
        gathered[id(rule)].append(Use((inputs,), [], [], [grads]))
    return gathered


def combine_rows(grads: Tensor, layout: Layout, sizes: list[int] | None = None) -> Tensor:
    """Local per-objective gradients ``[S·B_local, n]`` → global ``[S·B_global, n]``;
    ``sizes``: every process's batch size, when known."""
    if not layout.per_sample:
        grads = grads.clone()
        all_reduce_([grads], mean=True)
        return grads
    s, n = layout.slices, grads.shape[-1]
    return all_gather_cat(grads.reshape(s, -1, n), 1, sizes).reshape(-1, n)


def batch_sizes(local: int, device: torch.device) -> list[int]:
    """Every process's batch size, in rank order."""
    return gather_sizes([local], device)[0]


def reduce_grads(grads: list[Tensor], layout: Layout) -> None:
    """Sums the processes' weighted gradients (averages them without a batch dimension)."""
    all_reduce_(grads, mean=not layout.per_sample)
