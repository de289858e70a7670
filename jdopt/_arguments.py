"""Validation of JDOptimizer's constructor arguments, and the choice of engine."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.optim import Optimizer

from .aggregation import Aggregator, GramianWeightedAggregator, Weighting

ENGINES = ("auto", "autogram", "autojac")

COMPILED_HINT = (
    "`model` is compiled: JDOptimizer must exist before the code runs compiled. If this model, "
    "or another instance of its class, was called compiled before JDOptimizer was created, "
    "torch.compile reuses that code, which has neither the Gramian engine's hooks (the engine "
    'then records no call) nor a backward that can run more than once ("donated buffers"). '
    "Create JDOptimizer before the model's first call, or call torch._dynamo.reset() after "
    "creating it."
)


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
    from .scalarization import Scalarizer

    if aggregator is not None and not isinstance(aggregator, (Aggregator, Weighting, Scalarizer)):
        raise TypeError(
            "`aggregator` should be a jdopt.aggregation.Aggregator or Weighting (e.g. UPGrad()), "
            f"or a jdopt.scalarization.Scalarizer. Found {type(aggregator).__name__}."
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
    fullgraph = compiled_fullgraph(model)
    if engine == "auto":
        return "autogram" if model is not None and gramian_based and not fullgraph else "autojac"
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
    if engine == "autogram" and fullgraph:
        raise ValueError(
            "engine='autogram' needs the outputs of `model`'s layers, so compiled code must stop "
            "at each layer it hooks (a graph break); `model` was compiled with fullgraph=True, "
            "which forbids graph breaks. Use engine='autojac' (or 'auto'), or compile without "
            "fullgraph=True (the code between the layers is still compiled)."
        )
    return engine


def is_compiled(model: object) -> bool:
    """Whether ``model``, or one of its submodules, runs code compiled by ``torch.compile``:
    ``torch.compile(module)``, ``module.compile()`` or ``module.forward = torch.compile(...)``.
    """
    return bool(_compile_contexts(model))


def compiled_fullgraph(model: object) -> bool:
    """Whether some of ``model``'s compiled code was compiled with ``fullgraph=True``."""
    return any(getattr(context, "fullgraph", False) for context in _compile_contexts(model))


def _compile_contexts(model: object) -> list[object]:
    """The torch.compile contexts (which hold its options) of ``model``'s compiled code."""
    if "torch._dynamo" not in sys.modules:  # torch.compile imports it: nothing was compiled
        return []
    from torch._dynamo.eval_frame import OptimizedModule, _TorchDynamoContext

    contexts = []
    for module in modules_of(model):
        for sub in module.modules():
            if isinstance(sub, OptimizedModule):
                contexts.append(sub.dynamo_ctx)
            for wrapper in (getattr(sub, "_compiled_call_impl", None), vars(sub).get("forward")):
                # torch.compile's wrapper of a function keeps its context in its closure.
                if _compiled_function(wrapper):
                    cells = [cell.cell_contents for cell in wrapper.__closure__ or ()]
                    found = [c for c in cells if isinstance(c, _TorchDynamoContext)]
                    contexts.extend(found or [None])
    return contexts


def _compiled_function(function: object) -> bool:
    # torch.compile's wrapper and torch.compiler.disable's both have the attribute.
    wrapped = getattr(function, "_torchdynamo_orig_callable", None) is not None
    return wrapped and not getattr(function, "_torchdynamo_disable", False)


@contextmanager
def compile_hint(compiled: bool) -> Iterator[None]:
    """Adds what a compiled model needs to the errors of a step (code compiled before
    JDOptimizer existed has neither the Gramian engine's hooks nor a backward that can run
    several times)."""
    try:
        yield
    except RuntimeError as error:
        if compiled and hasattr(error, "add_note"):  # Python >= 3.11
            error.add_note(COMPILED_HINT)
        raise


def allow_repeated_backward() -> None:
    """Lets a compiled backward run more than once per forward pass.

    torch.compile's donated buffers let a compiled backward reuse the memory of the tensors
    that its forward saved, so a second backward pass through the same graph raises ("compiled
    with non-empty donated buffers"). Jacobian descent needs several: one per row of the
    Jacobian where compiled code cannot run batched, the Gramian engine's check of its first
    Gramian and its batched passes. This memory optimisation is turned off for the process
    (``torch._functorch.config.donated_buffer``), which only affects graphs compiled from now
    on.
    """
    import torch._functorch.config as config

    if hasattr(config, "donated_buffer"):  # torch < 2.5 has no donated buffers
        config.donated_buffer = False
