"""The Gramian engine that JDOptimizer owns, rebuilt when the model's trainable parameters
change."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torch.optim import Optimizer

from .._arguments import modules_of
from ..autogram import Engine


class EngineSlot:
    """Holds JDOptimizer's Gramian engine on ``model`` (or none) and the parameters it covers.

    Args:
        optimizer: the wrapped optimizer: the engine may only cover parameters it holds.
        model: the module, or modules, the engine hooks.
        batch_dim: the losses' sample dimension, or ``None``.
        distributed: whether the engine takes the Gramian over every process's losses.
    """

    def __init__(
        self, optimizer: Optimizer, model: object, *, batch_dim: int | None, distributed: bool
    ) -> None:
        self.optimizer = optimizer
        self.model = model
        self.batch_dim = batch_dim
        self.distributed = distributed
        self.engine: Engine | None = None
        self._covered: set[int] = set()  # ids of the engine's parameters

    def open(self) -> None:
        """Builds the engine (its hooks record the model's next forward passes)."""
        self._use(self._build())

    def refresh(self) -> bool:
        """Whether this step can use the engine; called once, at the start of each step.

        When a parameter of the model was frozen or unfrozen since the engine was built, the
        forward pass ran with hooks that no longer match: the engine is rebuilt for the next
        steps and this step does without it. A rebuild that raises keeps the old engine, so
        that the next step tries again.
        """
        engine = self.engine
        if engine is None:
            return False
        if not engine.trainable_changed():
            return True
        engine.clear()
        fresh = self._build()
        engine.close()
        self._use(fresh)
        return False

    def covers(self, params: Sequence[Tensor]) -> bool:
        """Whether the engine's saved factors give the gradients of all ``params``."""
        return all(id(p) in self._covered for p in params)

    def clear(self) -> None:
        """Forgets what the engine recorded, for a step that does not use it: the recorded
        activations are then freed with the step's graph."""
        if self.engine is not None:
            self.engine.clear()

    def close(self) -> None:
        """Removes the engine's hooks; later steps have no engine."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None
            self._covered = set()

    def _use(self, engine: Engine) -> None:
        self.engine = engine
        self._covered = {id(p) for p in engine.params}

    def _build(self) -> Engine:
        """A new engine on the model; refused when it would cover parameters that the
        optimizer does not hold (the Gramian would include their gradients)."""
        modules = modules_of(self.model)
        engine = Engine(*modules, batch_dim=self.batch_dim, distributed=self.distributed)
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        outside = [p for p in engine.params if id(p) not in held]
        if outside:
            engine.close()
            names = {id(p): n for m in modules for n, p in m.named_parameters()}
            example = names.get(id(outside[0]), f"one of shape {tuple(outside[0].shape)}")
            raise ValueError(
                f"`model` has {len(outside)} trainable parameter(s) that the optimizer does not "
                f"hold (e.g. {example!r}): the Gramian would include their gradients. Freeze "
                "them (requires_grad_(False)), add them to the optimizer, or give `model` only "
                "the modules whose parameters the optimizer trains."
            )
        return engine
