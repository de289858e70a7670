"""JDOptimizer's backends, built once, and the table that picks one for each step."""

from __future__ import annotations

from ._race import Race
from ._step import (
    Autogram,
    Autojac,
    Backend,
    DistributedAutogram,
    DistributedAutojac,
    DistributedMtlAutojac,
    EngineSlot,
    MtlAutogram,
    MtlAutojac,
    Step,
)


class Backends:
    """The backends of one JDOptimizer: on one process, or their variants for one global step
    under ``torch.distributed``.

    Args:
        slot: the Gramian engine (or none).
        chunk_size: Jacobian rows per batched backward pass (``None``: all at once).
        batch_dim: the losses' sample dimension, or ``None``.
        distributed: one step over every process's losses.
        race: multi-task steps with the trunk on the engine time both multi-task backends on
            the first steps and keep the faster (``engine="auto"``); otherwise they prefer the
            engine and fall back to the full Jacobian only where the engine does not apply.
    """

    def __init__(
        self,
        slot: EngineSlot,
        *,
        chunk_size: int | None,
        batch_dim: int | None,
        distributed: bool,
        race: bool,
    ) -> None:
        self.slot = slot
        self.mtl_on_engine: Backend | None = None
        if distributed:
            self.autogram: Backend = DistributedAutogram(slot, batch_dim)
            self.autojac: Backend = DistributedAutojac(slot, chunk_size, batch_dim)
            self.mtl_autojac: Backend = DistributedMtlAutojac(slot, chunk_size)
            return  # the engine's multi-task Gramian is per process
        self.autogram = Autogram(slot)
        self.autojac = Autojac(slot, chunk_size)
        self.mtl_autojac = MtlAutojac(slot, chunk_size)
        self.mtl_on_engine = Race(MtlAutogram(slot, chunk_size), self.mtl_autojac, timed=race)

    def choose(self, step: Step, *, engine_usable: bool) -> Backend:
        """The backend for ``step``; ``engine_usable``: whether the Gramian engine's hooks
        recorded this step's forward pass (see :meth:`EngineSlot.refresh`).

        - per-objective losses: ``autogram`` on the engine, else ``autojac``;
        - multi-task (``features=``): on the engine when it covers the whole trunk
          (``autogram-mtl``, raced against ``autojac-mtl`` with ``engine="auto"``), else
          ``autojac-mtl``.
        """
        if step.features is None:
            return self.autogram if engine_usable else self.autojac
        on_trunk = engine_usable and bool(step.shared) and self.slot.covers(step.shared)
        if on_trunk and self.mtl_on_engine is not None:
            return self.mtl_on_engine
        return self.mtl_autojac
