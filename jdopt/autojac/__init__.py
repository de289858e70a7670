"""autojac: Jacobian descent through the full Jacobian.

:func:`backward` computes the Jacobian of several losses with respect to the parameters,
aggregates it into one update with any aggregator, and accumulates it into ``.grad``.
:func:`mtl_backward` does the same for multi-task models: Jacobian descent on the shared trunk,
ordinary gradients on the task heads. Use these for aggregators that need the whole Jacobian
(ConFIG, GradDrop, NashMTL, TrimmedMean) or for a handful of objectives; for many per-sample
losses, the Gramian engine (:mod:`jdopt.autogram`) is much faster.

The other names imported here are the steps that :class:`jdopt.JDOptimizer` composes into its
own pipeline (not part of the public API, hence not in ``__all__``): :func:`compute_jacobian`
and :func:`compute_mtl_jacobian` (the Jacobian as one block per parameter, and a multi-task
step's head gradients), :func:`feature_cotangents` (each task's gradient at the features, for a
trunk on the Gramian engine), :func:`reached_leaves` and :func:`check_features` (what a step
covers), and :func:`accumulate`, :func:`add_grad`, :func:`flatten_rows`, :func:`kept_grads`
(writing updates into ``.grad``).
"""

# Re-exported for JDOptimizer (``name as name``: not in ``__all__``).
from ._accumulate import accumulate as accumulate
from ._accumulate import add_grad as add_grad
from ._accumulate import flatten_rows as flatten_rows
from ._accumulate import kept_grads as kept_grads
from ._backward import backward
from ._backward import compute_jacobian as compute_jacobian
from ._checks import check_features as check_features
from ._graph import reached_leaves as reached_leaves
from ._mtl_backward import compute_mtl_jacobian as compute_mtl_jacobian
from ._mtl_backward import mtl_backward
from ._stages import feature_cotangents as feature_cotangents

__all__ = ["backward", "mtl_backward"]
