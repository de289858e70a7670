"""The parts of a JDOptimizer step: one pipeline over interchangeable backends.

Each ``backward`` runs the same pipeline (``JDOptimizer._run``):

1. the Gramian engine is refreshed (rebuilt when the model's trainable parameters changed;
   the step then does without it) — :class:`EngineSlot`;
2. one backend is chosen for the step (``jdopt._backends``);
3. the backend computes the losses' :class:`Gramian` (in the objectives' shape) or
   :class:`Jacobian` (one block per parameter);
4. the optimizer unscales it (GradScaler) — :func:`unscale`;
5. the optimizer computes the weights (Gramian-based methods) or the update, then checks the
   losses, the Gramian and the weights, in one read of the device — :func:`decide_checked`
   (a non-finite Gramian under a GradScaler: :func:`skip`) — as the backend settles it
   (:meth:`Backend.settle`: under ``torch.distributed``, rank 0 decides, skips or raises for
   every process);
6. the backend applies them: it writes ``.grad``.

Backends (:class:`Backend`): :class:`Autogram` and :class:`MtlAutogram` on the Gramian
engine, :class:`Autojac` and :class:`MtlAutojac` on the full Jacobian, and their variants
under ``torch.distributed`` (:mod:`._distributed`); ``jdopt._race.Race`` picks between two.
"""

from ._aggregate import decide, decide_checked, scale_of, scaling, skip, unscale
from ._autogram import Autogram, MtlAutogram
from ._autojac import Autojac, MtlAutojac
from ._backend import Backend, Decision, Found, Gramian, Jacobian
from ._distributed import DistributedAutogram, DistributedAutojac, DistributedMtlAutojac
from ._engine import EngineSlot
from ._inputs import Step, prepare

__all__ = [
    "Autogram",
    "Autojac",
    "Backend",
    "Decision",
    "DistributedAutogram",
    "DistributedAutojac",
    "DistributedMtlAutojac",
    "EngineSlot",
    "Found",
    "Gramian",
    "Jacobian",
    "MtlAutogram",
    "MtlAutojac",
    "Step",
    "decide",
    "decide_checked",
    "prepare",
    "scale_of",
    "scaling",
    "skip",
    "unscale",
]
