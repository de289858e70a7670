"""Aggregation: how the rows of a Jacobian become one update.

An :class:`Aggregator` maps a Jacobian ``J`` of shape ``[m, n]`` (one row per objective) to an
update of shape ``[n]``. Most methods are *weighted*: the update is ``weights @ J`` and the
weights depend on ``J`` only through its Gramian ``G = J Jᵀ`` (``[m, m]``). For those methods
the maths lives in a :class:`Weighting` (``G → weights``), and the aggregator ``X`` is a thin
shell around ``XWeighting`` — which is what lets the Gramian engine (:mod:`jdopt.autogram`)
train without ever forming ``J``.

>>> import torch
>>> from jdopt.aggregation import UPGrad, UPGradWeighting
>>> jacobian = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
>>> UPGrad()(jacobian)
tensor([0.2929, 1.9004, 1.9004])
>>> weights = UPGradWeighting()(jacobian @ jacobian.T)
>>> weights @ jacobian
tensor([0.2929, 1.9004, 1.9004])

For losses of any shape ``S`` (e.g. ``[batch, tasks]``), :class:`Flattening` turns a
:class:`Weighting` into a :class:`GeneralizedWeighting` that maps the generalized Gramian
``[*S, *reversed(S)]`` to weights of shape ``S``.
"""

from ._aligned_mtl import AlignedMTL, AlignedMTLWeighting
from ._bases import (
    Aggregator,
    Flattening,
    GeneralizedWeighting,
    GramianWeightedAggregator,
    WeightedAggregator,
    Weighting,
)
from ._cagrad import CAGrad, CAGradWeighting
from ._config import ConFIG
from ._constant import Constant, ConstantWeighting
from ._cr_mogm import CRMOGMWeighting
from ._cross_batch import CrossBatchWeighting, MoDoWeighting, SDMGradWeighting
from ._dual_cone import SolverOptions
from ._dualproj import DualProj, DualProjWeighting
from ._excess_mtl import ExcessMTL
from ._fairgrad import FairGrad, FairGradWeighting
from ._graddrop import GradDrop
from ._gradnorm import GradNorm, GradNormWeighting
from ._gradvac import GradVac, GradVacWeighting
from ._imtlg import IMTLG, IMTLGWeighting
from ._krum import Krum, KrumWeighting
from ._mean import Mean, MeanWeighting
from ._mgda import MGDA, MGDAWeighting
from ._moco import MoCo
from ._nash_mtl import NashMTL
from ._pcd import PCD, PCDWeighting
from ._pcgrad import PCGrad, PCGradWeighting
from ._random import Random, RandomWeighting
from ._sum import Sum, SumWeighting
from ._trimmed_mean import TrimmedMean
from ._upgrad import UPGrad, UPGradWeighting

__all__ = [
    "IMTLG",
    "MGDA",
    "PCD",
    "Aggregator",
    "AlignedMTL",
    "AlignedMTLWeighting",
    "CAGrad",
    "CAGradWeighting",
    "CRMOGMWeighting",
    "ConFIG",
    "Constant",
    "ConstantWeighting",
    "CrossBatchWeighting",
    "DualProj",
    "DualProjWeighting",
    "ExcessMTL",
    "FairGrad",
    "FairGradWeighting",
    "Flattening",
    "GeneralizedWeighting",
    "GradDrop",
    "GradNorm",
    "GradNormWeighting",
    "GradVac",
    "GradVacWeighting",
    "GramianWeightedAggregator",
    "IMTLGWeighting",
    "Krum",
    "KrumWeighting",
    "MGDAWeighting",
    "Mean",
    "MeanWeighting",
    "MoCo",
    "MoDoWeighting",
    "NashMTL",
    "PCDWeighting",
    "PCGrad",
    "PCGradWeighting",
    "Random",
    "RandomWeighting",
    "SDMGradWeighting",
    "SolverOptions",
    "Sum",
    "SumWeighting",
    "TrimmedMean",
    "UPGrad",
    "UPGradWeighting",
    "WeightedAggregator",
    "Weighting",
]
