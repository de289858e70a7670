"""autojac: Jacobian descent through the full Jacobian.

:func:`backward` computes the Jacobian of several losses with respect to the parameters,
aggregates it into one update with any aggregator, and accumulates it into ``.grad``.
:func:`mtl_backward` does the same for multi-task models: Jacobian descent on the shared trunk,
ordinary gradients on the task heads. Use these for aggregators that need the whole Jacobian
(ConFIG, GradDrop, NashMTL, TrimmedMean) or for a handful of objectives; for many per-sample
losses, the Gramian engine (:mod:`jdopt.autogram`) is much faster.
"""

from ._backward import backward
from ._mtl_backward import mtl_backward

__all__ = ["backward", "mtl_backward"]
