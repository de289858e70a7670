"""jdopt: Jacobian descent as a PyTorch optimizer.

Subpackages:
    aggregation: the methods that turn a Jacobian (or its Gramian) into one update.
"""

from . import aggregation

__version__ = "0.1.0.dev0"

__all__ = ["__version__", "aggregation"]
