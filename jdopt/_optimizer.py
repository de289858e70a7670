"""JDOptimizer: a torch.optim.Optimizer that does Jacobian descent around any optimizer."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ._arguments import (
    allow_repeated_backward,
    check_arguments,
    choose_engine,
    is_compiled,
    modules_of,
)
from ._ddp import check_wrapping, is_ddp, sync_grads, take_over_gradient_sync
from ._delegate import DelegatingOptimizer
from ._diagnostics import StepInfo, step_info
from ._linalg import compute_gramian, flatten_generalized, sum_of_gramians
from ._losses import as_losses, check_chunk_size, check_finite_losses
from ._race import Race
from .aggregation import Aggregator, GramianWeightedAggregator, UPGrad, Weighting
from .autogram import Engine
from .autojac._accumulate import accumulate, add_grad, flatten_rows, kept_grads
from .autojac._backward import compute_jacobian
from .autojac._graph import reached_leaves
from .autojac._mtl_backward import check_features, compute_mtl_jacobian
from .autojac._stages import feature_cotangents
from .distributed._collectives import all_gather_cat, all_reduce_, broadcast_, is_distributed

COMPILED_HINT = (
    "`model` is compiled: JDOptimizer must exist before the code runs compiled. If this model, "
    "or another instance of its class, was called compiled before JDOptimizer was created, "
    "torch.compile reuses that code, which has neither the Gramian engine's hooks (the engine "
    'then records no call) nor a backward that can run more than once ("donated buffers"). '
    "Create JDOptimizer before the model's first call, or call torch._dynamo.reset() after "
    "creating it."
)


class _TaskStep(NamedTuple):
    """A multi-task step: the task losses, the features, the trunk's (shared) and the heads'
    parameters, and the tasks' losses as given."""

    losses: Tensor
    features: list[Tensor]
    shared: list[Tensor]
    heads: list[Tensor]
    tasks: list[Tensor] | None


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
        self.engine = choose_engine(engine, aggregator, model)
        # Multi-task steps with the trunk on the Gramian engine can also take the full
        # Jacobian: with engine="auto", the first steps time both and the faster is kept.
        self._race_mtl = engine == "auto"
        self._mtl_race = Race("autogram-mtl", "autojac-mtl")
        self.model = model
        self.batch_dim = batch_dim
        self.scaler = scaler
        self.parallel_chunk_size = parallel_chunk_size
        self.last_step: StepInfo | None = None
        check_wrapping(model)
        # Under torch.distributed, a DDP model (or none: the autojac engine on the optimizer's
        # parameters) means one global step; any other model is trained per process.
        self._distributed = is_distributed() and (model is None or is_ddp(model))
        self._gramian_engine: Engine | None = None
        self._covered: set[int] = set()  # ids of the engine's parameters
        self._init_delegation(optimizer, aggregator)
        if self.engine == "autogram":
            self._use_engine(self._new_engine())
        self._compiled = is_compiled(model)
        if "torch._dynamo" in sys.modules:  # torch.compile is in use (see allow_repeated_backward)
            allow_repeated_backward()
        if self._distributed and is_ddp(model):  # last: nothing can raise after it
            take_over_gradient_sync(model)

    def _new_engine(self) -> Engine:
        engine = Engine(
            *modules_of(self.model), batch_dim=self.batch_dim, distributed=self._distributed
        )
        held = {id(p) for group in self.param_groups for p in group["params"]}
        outside = [p for p in engine.params if id(p) not in held]
        if outside:
            engine.close()
            names = {id(p): n for m in modules_of(self.model) for n, p in m.named_parameters()}
            example = names.get(id(outside[0]), f"one of shape {tuple(outside[0].shape)}")
            raise ValueError(
                f"`model` has {len(outside)} trainable parameter(s) that the optimizer does not "
                f"hold (e.g. {example!r}): the Gramian would include their gradients. Freeze "
                "them (requires_grad_(False)), add them to the optimizer, or give `model` only "
                "the modules whose parameters the optimizer trains."
            )
        return engine

    def _use_engine(self, engine: Engine) -> None:
        self._gramian_engine = engine
        self._covered = {id(p) for p in engine.params}

    def _engine_is_current(self) -> bool:
        """Whether the Gramian engine still matches the model's trainable parameters; if not
        (a parameter was frozen or unfrozen), it is rebuilt for the next steps and ``False``
        tells this step to use the autojac engine, as the forward pass ran with the old hooks.
        A rebuild that raises keeps the old engine, so that the next step tries again."""
        engine = self._gramian_engine
        if engine is None or not engine.trainable_changed():
            return True
        engine.clear()
        fresh = self._new_engine()
        engine.close()
        self._use_engine(fresh)
        return False

    def close(self) -> None:
        """Removes the Gramian engine's hooks from the model and gives a DDP model its own
        gradient synchronisation back (the optimizer still works, on the autojac engine)."""
        if self._gramian_engine is not None:
            self._gramian_engine.close()
            self._gramian_engine = None
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
        tasks = list(losses) if isinstance(losses, Sequence) else None
        losses = as_losses(losses)
        if not _scaling(self.scaler):
            check_finite_losses(losses)
        params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        features = None if features is None else check_features(features)
        # The batched passes would leave an unusable .grad on losses or features that called
        # retain_grad(): they keep theirs.
        with kept_grads([*(tasks or [losses]), *(features or [])]), self._compile_hint():
            self._dispatch(losses, features, params, tasks)

    @contextmanager
    def _compile_hint(self) -> Iterator[None]:
        """Adds what a compiled model needs to the errors of a step (code compiled before
        JDOptimizer existed has neither the Gramian engine's hooks nor a backward that can run
        several times)."""
        try:
            yield
        except RuntimeError as error:
            if self._compiled and hasattr(error, "add_note"):  # Python >= 3.11
                error.add_note(COMPILED_HINT)
            raise

    def _dispatch(
        self,
        losses: Tensor,
        features: list[Tensor] | None,
        params: list[Tensor],
        tasks: list[Tensor] | None,
    ) -> None:
        if features is not None:
            self._backward_mtl(losses, features, params, tasks)
        elif self._gramian_engine is not None and self._engine_is_current():
            self._backward_autogram(losses, params)
        elif self._distributed:
            self._backward_autojac_distributed(losses, params)
        else:
            blocks, used = compute_jacobian(losses, params, False, self.parallel_chunk_size)
            accumulate(self._aggregate(blocks, losses.shape, "autojac"), used)

    def _backward_autogram(self, losses: Tensor, params: list[Tensor]) -> None:
        engine = self._gramian_engine
        # The saved factors give every gradient: the graph can go as soon as it is used.
        fast = self._engine_covers(params)
        # Of every process's losses, if distributed.
        generalized = engine.compute_gramian(losses, retain_graph=not fast)
        shape = generalized.shape[: generalized.ndim // 2]
        scale = _scale(self.scaler)
        weights = self._weights(flatten_generalized(generalized) / scale**2, shape, "autogram")
        if weights is None:  # non-finite: let the GradScaler skip this step
            _poison(params)
            return
        if self._distributed:  # identical weights everywhere, whatever the method's randomness
            broadcast_(weights)
        # The losses carry the scale, so Σ wᵢ ∇(scaled Lᵢ) is already in the scaler's space.
        if fast:
            engine.accumulate_grads(weights)
            return
        if self._distributed and self.batch_dim is not None:
            offset = engine.last_offset
            weights = weights.narrow(self.batch_dim, offset, losses.shape[self.batch_dim])
        losses.backward(weights.to(losses.dtype))
        if self._distributed:
            sync_grads(params, mean=self.batch_dim is None)

    def _backward_autojac_distributed(self, losses: Tensor, params: list[Tensor]) -> None:
        """The Jacobian of every process's losses: rows gathered (per-sample losses) or
        averaged (the mean of the processes' losses, as DDP averages gradients)."""
        blocks, _ = compute_jacobian(losses, params, False, self.parallel_chunk_size, zeros=True)
        jacobian, shape = flatten_rows(blocks), losses.shape
        if self.batch_dim is None:
            all_reduce_([jacobian], mean=True)
        else:
            rows = jacobian.reshape(*shape, -1).movedim(self.batch_dim, 0)
            rows = all_gather_cat(rows, 0).movedim(0, self.batch_dim)
            shape, jacobian = rows.shape[:-1], rows.reshape(-1, jacobian.shape[1])
        update = self._aggregate([jacobian], shape, "autojac")[0]
        accumulate(broadcast_(update), params)

    def _backward_mtl(
        self,
        losses: Tensor,
        features: list[Tensor],
        params: list[Tensor],
        tasks: list[Tensor] | None,
    ) -> None:
        upstream = {id(t) for t in reached_leaves(features)}
        shared = [p for p in params if id(p) in upstream]
        heads = [p for p in params if id(p) not in upstream]
        step = _TaskStep(losses, features, shared, heads, tasks)
        ways = {
            "autogram-mtl": lambda: self._backward_mtl_autogram(step),
            "autojac-mtl": lambda: self._backward_mtl_autojac(step),
        }
        if not self._mtl_on_engine(shared):
            ways["autojac-mtl"]()
            return
        if not self._race_mtl:  # engine="autogram": the trunk on the Gramian engine
            if not ways["autogram-mtl"]():
                ways["autojac-mtl"]()
            return
        # engine="auto": both are exact; which is faster depends on the trunk and the number
        # of tasks (the engine's per-task cost against the Jacobian's), so measure.
        device = shared[0].device
        for way in self._mtl_race.order():
            if self._mtl_race.run(way, lambda way=way: ways[way]() or None, device):
                return

    def _backward_mtl_autojac(self, step: _TaskStep) -> bool:
        """A multi-task step on the full Jacobian of the tasks over the trunk."""
        losses, features, shared, heads, tasks = step
        if self._gramian_engine is not None:  # not used this step: drop what it recorded
            self._gramian_engine.clear()
        blocks, used, head_grads = compute_mtl_jacobian(
            losses, features, shared, heads, False, self.parallel_chunk_size, tasks
        )
        if self._distributed:  # the mean of the processes' task losses, as DDP would average
            all_reduce_([*blocks, *(g for _, g in head_grads)], mean=True)
        update = self._aggregate(blocks, losses.shape, "autojac-mtl")
        if self._distributed:  # one buffer: identical updates, whatever the method's randomness
            update = broadcast_(torch.cat(update)).split([p.numel() for p in used])
        accumulate(update, used)
        for param, grad in head_grads:
            add_grad(param, grad)
        return True

    def _mtl_on_engine(self, shared: list[Tensor]) -> bool:
        """Whether the Gramian engine covers the whole trunk of a multi-task step."""
        if self._gramian_engine is None or self._distributed or not shared:
            return False
        return self._engine_is_current() and self._engine_covers(shared)

    def _engine_covers(self, params: list[Tensor]) -> bool:
        """Whether the Gramian engine's saved factors give the gradients of all ``params``."""
        return all(id(p) in self._covered for p in params)

    def _backward_mtl_autogram(self, step: _TaskStep) -> bool:
        """A multi-task step with the trunk on the Gramian engine; ``False`` when it does not
        apply (a shared parameter reaches the losses around the features)."""
        losses, features, shared, heads, tasks = step
        found = feature_cotangents(losses, features, shared, heads, self.parallel_chunk_size, tasks)
        if found is None:
            return False
        reached, cotangents, head_grads = found
        engine = self._gramian_engine
        gramian = engine.compute_gramian_of_rows(reached, cotangents, retain_graph=False)
        scale = _scale(self.scaler)
        weights = self._weights(gramian / scale**2, losses.shape, "autogram-mtl")
        if weights is None:  # non-finite: let the GradScaler skip this step
            _poison([*shared, *heads])
            return True
        engine.accumulate_grads(weights.reshape(-1))
        for param, grad in head_grads:
            add_grad(param, grad)
        return True

    def _aggregate(self, blocks: list[Tensor], shape: torch.Size, engine: str) -> list[Tensor]:
        """The update, one block per block ``[m, nᵢ]`` of the Jacobian (in the scaler's space).

        A Gramian-based method never needs the Jacobian as one matrix: its Gramian is the sum
        of the blocks' Gramians and its update ``wᵀJ`` is computed block by block.
        """
        scale = _scale(self.scaler)
        if isinstance(self.aggregator, GramianWeightedAggregator):
            # Unscaled before the products: scale² |J|² can overflow float32 when J cannot.
            gramian = sum_of_gramians([b / scale for b in blocks] if scale != 1.0 else blocks)
            weights = self._weights(gramian, shape, engine)
            if weights is not None:
                weights = weights.reshape(-1)
                return [weights.to(block.dtype) @ block for block in blocks]
        else:
            jacobian = flatten_rows(blocks)
            jacobian = jacobian / scale if scale != 1.0 else jacobian
            gramian = compute_gramian(jacobian)
            if self._finite(gramian, engine):
                update = self.aggregator(jacobian)
                self.last_step = step_info(engine, gramian, None, skipped=False)
                update = update * scale if scale != 1.0 else update
                return list(update.split([block.shape[1] for block in blocks]))
        return [block.new_full((block.shape[1],), torch.nan) for block in blocks]

    def _weights(self, gramian: Tensor, shape: torch.Size, engine: str) -> Tensor | None:
        """Weights in the losses' shape, or ``None`` when the Gramian is not finite."""
        if not self._finite(gramian, engine):
            return None
        weights = self.aggregator.weighting(gramian)
        if weights.numel() != shape.numel() or not bool(torch.isfinite(weights).all()):
            name = type(self.aggregator.weighting).__name__
            found = (
                "non-finite weights"
                if weights.numel() == shape.numel()
                else f"weights of shape {tuple(weights.shape)}"
            )
            raise ValueError(
                f"The weighting {name} returned {found} for a Gramian of {shape.numel()} "
                "objectives. Nothing was changed. A weighting must return one finite weight "
                "per objective."
            )
        weights = weights.reshape(shape)
        self.last_step = step_info(engine, gramian, weights, skipped=False)
        return weights

    def _finite(self, gramian: Tensor, engine: str) -> bool:
        # A NaN/inf in J makes G non-finite, and G is m × m: checking it is cheap.
        if bool(torch.isfinite(gramian).all()):
            return True
        if not _scaling(self.scaler):
            raise ValueError(
                "The Jacobian of the losses contains NaN or inf although the losses are finite "
                "(an overflow in the backward pass). Nothing was changed. Lower the learning "
                "rate or use a GradScaler (pass `scaler=` to JDOptimizer)."
            )
        self.last_step = step_info(engine, gramian, None, skipped=True)
        return False


def _poison(params: list[Tensor]) -> None:
    """NaN gradients: the GradScaler then skips the step, as for an overflowing backward."""
    for param in params:
        add_grad(param, torch.full_like(param, torch.nan))


def _scaling(scaler: torch.amp.GradScaler | None) -> bool:
    """Whether a GradScaler will skip steps with non-finite gradients (a disabled one, as in
    ``GradScaler(enabled=use_amp)``, does not: the error contract of no scaler holds then)."""
    return scaler is not None and scaler.is_enabled()


def _scale(scaler: torch.amp.GradScaler | None) -> float:
    if not _scaling(scaler):
        return 1.0
    return float(scaler.get_scale())
