"""Loss scalarizers: the weights of the losses from the losses alone, without their gradients.

A :class:`Scalarizer` reduces a tensor of losses of any shape to one scalar, whose ordinary
``backward()`` gives the update: a step costs what a plain step costs. They are the baselines
that Jacobian descent is compared with, under TorchJD 0.18's names. Each works alone
(``scalarizer(losses).backward()``) and in ``JDOptimizer(optimizer, aggregator=scalarizer)``.

>>> import torch
>>> from jdopt.scalarization import Mean
>>> Mean()(torch.tensor([1.0, 2.0, 3.0]))
tensor(2.)
"""

from ._base import Scalarizer
from ._dwa import DWA
from ._famo import FAMO
from ._fixed import Constant, GeometricMean, Mean, Random, Sum
from ._learned import IMTLL, UW
from ._preference import COSMOS, PBI, STCH

__all__ = [
    "COSMOS",
    "DWA",
    "FAMO",
    "IMTLL",
    "PBI",
    "STCH",
    "UW",
    "Constant",
    "GeometricMean",
    "Mean",
    "Random",
    "Scalarizer",
    "Sum",
]
