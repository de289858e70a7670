"""Validation of JDOptimizer's constructor arguments, and the choice of engine."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.optim import Optimizer

from .aggregation import Aggregator, GramianWeightedAggregator, Weighting

ENGINES = ("auto", "autogram", "autojac")


def check_arguments(
    optimizer: object,
    aggregator: object,
    model: object,
    batch_dim: object,
    engine: object,
    scaler: object,
) -> None:
    from ._delegate import DelegatingOptimizer

    if isinstance(optimizer, DelegatingOptimizer) or not isinstance(optimizer, Optimizer):
        raise TypeError(
            "`optimizer` should be a torch.optim.Optimizer (e.g. torch.optim.Adam(model."
            f"parameters())), not already wrapped. Found {type(optimizer).__name__}."
        )
    if isinstance(optimizer, torch.optim.LBFGS):
        raise TypeError(
            "`optimizer` should not need a closure to step: LBFGS re-evaluates the loss inside "
            "step(), which Jacobian descent cannot. Use a first-order optimizer (SGD, Adam, …)."
        )
    if aggregator is not None and not isinstance(aggregator, (Aggregator, Weighting)):
        raise TypeError(
            "`aggregator` should be a jdopt.aggregation.Aggregator or Weighting (e.g. UPGrad()). "
            f"Found {type(aggregator).__name__}."
        )
    if engine not in ENGINES:
        raise ValueError(f"`engine` should be one of {ENGINES}. Found engine={engine!r}.")
    if model is not None and not modules_of(model):
        raise TypeError(
            f"`model` should be an nn.Module or a list of them. Found {type(model).__name__}."
        )
    if batch_dim is not None and (not isinstance(batch_dim, int) or isinstance(batch_dim, bool)):
        raise TypeError(f"`batch_dim` should be an int or None. Found {batch_dim!r}.")
    if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(
            f"`scaler` should be a torch.amp.GradScaler or None. Found {type(scaler).__name__}."
        )


def modules_of(model: object) -> list[nn.Module]:
    """``model`` as a list of modules (empty when it is neither a module nor a list of them).

    A DistributedDataParallel model stands for the module it wraps.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return [model.module]
    if isinstance(model, nn.Module):
        return [model]
    if isinstance(model, Sequence) and model and all(isinstance(m, nn.Module) for m in model):
        return list(model)
    return []


def choose_engine(engine: str, aggregator: Aggregator, model: object) -> str:
    gramian_based = isinstance(aggregator, GramianWeightedAggregator)
    if engine == "auto":
        return "autogram" if model is not None and gramian_based else "autojac"
    if engine == "autogram" and not gramian_based:
        raise ValueError(
            f"engine='autogram' needs an aggregator whose weights depend on the Gramian only; "
            f"{type(aggregator).__name__} needs the whole Jacobian. Use engine='autojac' (or "
            "'auto'), or a Gramian-based method such as UPGrad."
        )
    if engine == "autogram" and model is None:
        raise ValueError(
            "engine='autogram' needs `model=`: the module (or modules) whose layers the Gramian "
            "engine hooks, e.g. JDOptimizer(opt, model=model, batch_dim=0)."
        )
    return engine
