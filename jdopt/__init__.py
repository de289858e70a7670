"""jdopt: Jacobian descent as a PyTorch optimizer.

:class:`JDOptimizer` wraps any ``torch.optim.Optimizer``; ``jd.step(losses)`` replaces
``loss.backward(); optimizer.step()`` for a tensor of losses (one per task, per sample, or
both).

Subpackages:
    aggregation: the methods that turn a Jacobian (or its Gramian) into one update.
    autojac: ``backward`` and ``mtl_backward`` through the full Jacobian.
    autogram: the Gramian engine, without per-sample Jacobians.
    distributed: exact Jacobian descent over the global batch under ``torch.distributed``.
    scalarization: loss scalarizers (weights from the losses alone, at a plain step's cost).
"""

from . import aggregation, autogram, autojac, distributed, scalarization
from ._diagnostics import StepInfo
from ._optimizer import JDOptimizer

__version__ = "0.1.0.dev0"

__all__ = [
    "JDOptimizer",
    "StepInfo",
    "__version__",
    "aggregation",
    "autogram",
    "autojac",
    "distributed",
    "scalarization",
]
