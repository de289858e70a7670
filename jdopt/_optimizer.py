"""JDOptimizer: a torch.optim.Optimizer that does Jacobian descent around any optimizer."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ._arguments import (
    allow_repeated_backward,
    check_arguments,
    choose_engine,
    compile_hint,
    is_compiled,
)
from ._backends import Backends
from ._ddp import check_wrapping, global_step, is_ddp, take_over_gradient_sync
from ._delegate import DelegatingOptimizer
from ._diagnostics import StepInfo, step_info
from ._linalg import no_autocast
from ._losses import check_chunk_size
from ._scalarized import check_scalarizer, join_optimizer, scalarized_step
from ._step import (
    Decision,
    EngineSlot,
    Step,
    decide_checked,
    prepare,
    scale_of,
    scaling,
    skip,
    unscale,
)
from .aggregation import Aggregator, GramianWeightedAggregator, UPGrad, Weighting
from .autojac import kept_grads
from .scalarization import Scalarizer


class JDOptimizer(DelegatingOptimizer):
    """Jacobian descent around any ``torch.optim.Optimizer``.

    Replace ``loss.backward(); optimizer.step()`` with ``jd.step(losses)``, where ``losses``
    holds one loss per objective (tasks, samples, or both, in any shape). ``jd`` aggregates the
    Jacobian of the losses with ``aggregator`` into one update — by default UPGrad, which
    conflicts with none of them — writes it into ``.grad``, and lets the wrapped optimizer step.
    It *is* a torch optimizer: ``param_groups``, ``state``, ``zero_grad``, ``state_dict`` and LR
    schedulers all work, delegated to ``optimizer``.

    Two engines compute what the aggregator needs:

    - ``"autogram"`` (used by ``"auto"`` when ``model`` is given and the aggregator depends on
      the Gramian only): the Gramian ``J Jᵀ`` from the activations of ``model``'s layers and
      one backward pass, without per-sample Jacobians; the weighted gradient then comes from
      the same saved factors when ``model`` holds every trainable parameter of the optimizer,
      otherwise from ``losses.backward(weights)`` (partial Jacobian descent: the Gramian of
      some layers, the weights applied to the whole model).
    - ``"autojac"``: the full Jacobian over the optimizer's parameters (needed by ConFIG,
      GradDrop, NashMTL, TrimmedMean).

    Multi-task steps (``features=``) can use the Gramian engine for the trunk when ``model``
    holds every parameter upstream of the features (``last_step.engine == "autogram-mtl"``),
    and the full Jacobian of the tasks over the trunk in any case (``"autojac-mtl"``). Both
    are exact; which is faster depends on the trunk and the number of tasks, so with
    ``engine="auto"`` the first four such steps time each twice and later steps take the
    faster (the choice changes rounding only; ``engine="autogram"`` always takes the Gramian
    engine where it applies, ``"autojac"`` never).

    Compiled models (``torch.compile(model)``, ``model.compile()``, a compiled ``forward`` or
    compiled submodules) work with both engines; create JDOptimizer before their first call.
    The Gramian engine's hooks end the compiled regions at the layers they record, which
    ``fullgraph=True`` forbids: ``"auto"`` then takes the autojac engine, and ``"autogram"`` is
    refused. Compiled code cannot run batched over the Jacobian's rows: they take one backward
    pass each. Since the engines run several backward passes through one graph, JDOptimizer
    turns off torch.compile's donated buffers (``torch._functorch.config.donated_buffer``)
    when torch.compile is in use.

    Mixed precision: whatever the caller's autocast, the parameters' dtype or the TF32
    settings, the Gramian and the weights are at least float32 (float64 for a float64 model)
    and the dual-cone solver works in float64, with exact float32 products for its float32
    guesses; ``.grad`` keeps each parameter's dtype. Everything ``step`` and ``backward``
    compute after the losses runs without autocast (the backward passes follow the dtypes of
    the forward pass), so calling them inside ``torch.autocast`` changes nothing.

    Args:
        optimizer: the optimizer to wrap (SGD, Adam, AdamW, …), built as usual.
        aggregator: an :class:`~jdopt.aggregation.Aggregator` or a
            :class:`~jdopt.aggregation.Weighting`. Default: ``UPGrad()``.
        model: the module, or list of modules, the Gramian engine hooks.
        batch_dim: the dimension of ``losses`` that indexes samples (``0`` for per-sample
            losses ``[B]`` or ``[B, k]``), or ``None``. Used by the Gramian engine.
        engine: ``"auto"`` (default), ``"autogram"`` or ``"autojac"``.
        scaler: the ``torch.amp.GradScaler`` used with ``jd.backward(scaler.scale(losses))``
            and ``scaler.step(jd)``; jdopt then computes the weights in the unscaled space and
            lets the scaler skip steps whose Jacobian overflowed.
        parallel_chunk_size: Jacobian rows per batched backward pass of the autojac engine
            (``None``: all at once).

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model=model, batch_dim=0)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> losses = ((model(x) - y) ** 2).squeeze(1)  # one loss per sample
        >>> jd.zero_grad()
        >>> jd.step(losses)
        >>> jd.last_step.engine
        'autogram'
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        aggregator: Aggregator | Weighting | None = None,
        model: nn.Module | Sequence[nn.Module] | None = None,
        batch_dim: int | None = None,
        engine: str = "auto",
        scaler: torch.amp.GradScaler | None = None,
        parallel_chunk_size: int | None = None,
    ) -> None:
        check_arguments(optimizer, aggregator, model, batch_dim, engine, scaler)
        check_chunk_size(parallel_chunk_size)
        aggregator = UPGrad() if aggregator is None else aggregator
        if isinstance(aggregator, Weighting):
            aggregator = GramianWeightedAggregator(aggregator)
        self.aggregator = aggregator
        scalarized = isinstance(aggregator, Scalarizer)
        if scalarized:
            check_scalarizer(aggregator, engine, global_step(model))
            join_optimizer(aggregator, optimizer)
        self.engine = "losses" if scalarized else choose_engine(engine, aggregator, model)
        self.model = model
        self.batch_dim = batch_dim
        self.scaler = scaler
        self.parallel_chunk_size = parallel_chunk_size
        self.last_step: StepInfo | None = None
        check_wrapping(model)
        distributed = global_step(model)
        self._init_delegation(optimizer, aggregator)
        self._slot = EngineSlot(optimizer, model, batch_dim=batch_dim, distributed=distributed)
        if self.engine == "autogram":
            self._slot.open()
        self._backends = Backends(
            self._slot,
            chunk_size=parallel_chunk_size,
            batch_dim=batch_dim,
            distributed=distributed,
            race=engine == "auto",
        )
        self._compiled = is_compiled(model)
        if "torch._dynamo" in sys.modules:  # torch.compile is in use (see allow_repeated_backward)
            allow_repeated_backward()
        if distributed and is_ddp(model):  # last: nothing can raise after it
            take_over_gradient_sync(model)

    def close(self) -> None:
        """Removes the Gramian engine's hooks from the model and gives a DDP model its own
        gradient synchronisation back (the optimizer still works, on the autojac engine)."""
        if self._slot.engine is not None:
            self._slot.close()
            self.engine = "autojac"
        if is_ddp(self.model):
            self.model.require_backward_grad_sync = True

    def __repr__(self) -> str:
        inner = "\n".join("    " + line for line in repr(self.optimizer).splitlines())
        return (
            f"JDOptimizer(engine={self.engine!r}, aggregator={self.aggregator!r},\n"
            f"  optimizer=\n{inner}\n)"
        )

    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        losses: Tensor | Sequence[Tensor] | None = None,
        *,
        features: Any = None,
        closure: Any = None,
    ) -> None:
        """``backward(losses, features=features)`` then the wrapped optimizer's ``step()``.

        Without losses (as ``GradScaler.step`` calls it) it only steps, using ``.grad``.
        ``closure`` exists only to be refused with a clear message (frameworks pass one).
        """
        if closure is not None:
            losses = closure
        if losses is not None or features is not None:
            with torch.enable_grad():
                self.backward(losses, features=features)
        self.optimizer.step()

    def backward(self, losses: Tensor | Sequence[Tensor], *, features: Any = None) -> None:
        """Writes the aggregation of the Jacobian of ``losses`` into the parameters' ``.grad``.

        Args:
            losses: one loss per objective, any shape (each element is an objective).
            features: the shared representation of a multi-task model: the parameters
                upstream of it get Jacobian descent, the heads their own task's gradient.

        Raises:
            TypeError, ValueError: on invalid losses or features, before anything changes.
        """
        if callable(losses) and not isinstance(losses, Tensor):
            raise TypeError(
                "JDOptimizer.step does not take a closure. Compute the losses and call "
                "`jd.step(losses)` (or `jd.backward(losses)` then `jd.step()`)."
            )
        params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        step = prepare(losses, features, params)
        if self.engine == "losses":
            scaler = self.scaler
            info = scalarized_step(self.aggregator, step, scale_of(scaler), scaling(scaler))
            self.last_step = info
            return
        # The batched passes would leave an unusable .grad on losses or features that called
        # retain_grad(): they keep theirs.
        kept = [*(step.tasks or [step.losses]), *(step.features or [])]
        # Everything after the losses runs without the caller's autocast: the backward passes
        # follow the forward's dtypes, and jdopt's own products stay in at least float32.
        with kept_grads(kept), compile_hint(self._compiled), no_autocast(step.losses.device.type):
            self._run(step)

    def _run(self, step: Step) -> None:
        """One step: refresh the engine, choose the backend, which computes the Gramian or the
        Jacobian; unscale it, compute the weights or the update, then check the losses, the
        Gramian and the weights in one read of the device; the backend applies them. A
        non-finite Gramian under a GradScaler skips the step (NaN gradients)."""
        usable = self._slot.refresh()
        backend = self._backends.choose(step, engine_usable=usable)
        found = backend.compute(step)
        scale = scale_of(self.scaler)
        gramian, unscaled = unscale(found, scale)

        def solve(gramian: Tensor) -> Decision | None:
            scales = scaling(self.scaler)
            args = (found, gramian, unscaled, scale, step.losses, scales)
            return decide_checked(self.aggregator, *args)

        # Under torch.distributed, rank 0's decision on every process (skip, error or change).
        decision = backend.settle(found, gramian, solve)
        weights = None
        if decision is None:
            skip(step.params)
        else:
            weights, change = decision
            backend.apply(found, change)
        self.last_step = step_info(found.engine, gramian, weights, skipped=decision is None)
