"""Every public aggregation method, once, with the properties it claims.

Adding a method to jdopt.aggregation = adding a row here; ``test_registry_is_complete`` fails
otherwise. Factories take the number of objectives ``m`` (some methods need it) and return
``None`` when the method cannot handle ``m`` objectives. ``short_name`` is ``str`` of the
aggregator built for ``m = 4`` as TorchJD 0.8 prints it, where it is not the name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import jdopt.aggregation as agg
from tests.utils.device import seeded

Factory = Callable[[int], nn.Module | None]


@dataclass(frozen=True)
class Method:
    name: str
    aggregator: Factory
    weighting: Factory | None = None  # the matching ...Weighting, for Gramian-based methods
    non_conflicting: str | None = None  # "always", "independent_rows" (full row rank) or None
    linear_under_scaling: bool = False
    permutation_invariant: bool = False
    deterministic: bool = True
    short_name: str | None = None
    differentiable: bool = True  # autograd differentiates it exactly (else: backward raises)


def _seeded() -> torch.Generator:
    """A CPU generator: the random methods draw on it and move the draw, on every device."""
    return seeded(0)


def _cross_batch(m: int, wrap: type | None = None) -> nn.Module | None:
    """MoDo on two stacked batches of m / 2 objectives (none for an odd m)."""
    if m % 2:
        return None
    weighting = agg.CrossBatchWeighting(agg.MoDoWeighting(), batches=2)
    return weighting if wrap is None else wrap(weighting)


def _krum(m: int, cls: type) -> nn.Module | None:
    return cls(n_byzantine=1, n_selected=2) if m >= 4 else None


METHODS = [
    Method(
        "UPGrad",
        lambda m: agg.UPGrad(),
        lambda m: agg.UPGradWeighting(),
        "always",
        True,
        True,
        differentiable=False,
    ),
    Method(
        "DualProj",
        lambda m: agg.DualProj(),
        lambda m: agg.DualProjWeighting(),
        "always",
        False,
        True,
        differentiable=False,
    ),
    Method("MGDA", lambda m: agg.MGDA(), lambda m: agg.MGDAWeighting(), "always", False, True),
    Method("Mean", lambda m: agg.Mean(), lambda m: agg.MeanWeighting(), None, True, True),
    Method("Sum", lambda m: agg.Sum(), lambda m: agg.SumWeighting(), None, True, True),
    Method(
        "Constant",
        lambda m: agg.Constant(torch.linspace(0.5, 2.0, m)),
        lambda m: agg.ConstantWeighting(torch.linspace(0.5, 2.0, m)),
        None,
        True,
        short_name="Constant([0.5, 1., 1.5, 2.])",
    ),
    Method(
        "Random",
        lambda m: agg.Random(generator=_seeded()),
        lambda m: agg.RandomWeighting(generator=_seeded()),
        None,
        True,
        deterministic=False,
    ),
    Method(
        "PCGrad",
        lambda m: agg.PCGrad(generator=_seeded()),
        lambda m: agg.PCGradWeighting(generator=_seeded()),
        None,
        True,
        deterministic=False,
    ),
    Method("IMTLG", lambda m: agg.IMTLG(), lambda m: agg.IMTLGWeighting(), None, False, True),
    Method(
        "AlignedMTL",
        lambda m: agg.AlignedMTL(),
        lambda m: agg.AlignedMTLWeighting(),
        None,
        False,
        True,
    ),
    Method(
        "CAGrad",
        lambda m: agg.CAGrad(c=0.5),
        lambda m: agg.CAGradWeighting(c=0.5),
        None,
        False,
        True,
        short_name="CAGrad0.5",
        differentiable=False,
    ),
    Method(
        "Krum",
        lambda m: _krum(m, agg.Krum),
        lambda m: _krum(m, agg.KrumWeighting),
        None,
        False,
        True,
        short_name="Krum1-2",
    ),
    Method("ConFIG", lambda m: agg.ConFIG(), None, "independent_rows", False, True),
    Method("GradDrop", lambda m: agg.GradDrop(generator=_seeded()), None, None, False, True, False),
    Method(
        "NashMTL",
        lambda m: agg.NashMTL(n_tasks=m),
        None,
        "independent_rows",
        False,
        True,
        differentiable=False,
    ),
    Method(
        "TrimmedMean",
        lambda m: agg.TrimmedMean(trim_number=1) if m >= 3 else None,
        None,
        None,
        False,
        True,
        short_name="TM1",
    ),
    Method(
        "FairGrad",
        lambda m: agg.FairGrad(alpha=2.0),
        lambda m: agg.FairGradWeighting(alpha=2.0),
        "independent_rows",
        False,
        True,
        short_name="2.0-FairGrad",
        differentiable=False,
    ),
    Method(
        "PCD",
        lambda m: agg.PCD(tau=0.3),
        lambda m: agg.PCDWeighting(tau=0.3),
        short_name="PCD",
        differentiable=False,
    ),
    Method(
        "CRMOGM",
        lambda m: agg.GramianWeightedAggregator(agg.CRMOGMWeighting(agg.MGDAWeighting())),
        lambda m: agg.CRMOGMWeighting(agg.MGDAWeighting()),
        deterministic=False,  # the same Jacobian twice: the second call mixes in the first's
        short_name="GramianWeightedAggregator",  # TorchJD has no CRMOGM aggregator
    ),
    Method(
        "MoCo",
        lambda m: agg.MoCo(),
        None,
        permutation_invariant=True,
        deterministic=False,  # stateful: a second call moves its tracked Jacobian and weights
        differentiable=False,
    ),
    Method(
        "MoDo",
        lambda m: agg.GramianWeightedAggregator(agg.MoDoWeighting()),
        lambda m: agg.MoDoWeighting(),
        permutation_invariant=True,
        deterministic=False,  # stateful: each call steps its weights
        short_name="GramianWeightedAggregator",  # TorchJD has no MoDo aggregator
        differentiable=False,
    ),
    Method(
        "SDMGrad",
        lambda m: agg.GramianWeightedAggregator(agg.SDMGradWeighting()),
        lambda m: agg.SDMGradWeighting(),
        permutation_invariant=True,
        deterministic=False,
        short_name="GramianWeightedAggregator",
        differentiable=False,
    ),
    Method(
        "CrossBatch",
        lambda m: _cross_batch(m, agg.GramianWeightedAggregator),
        lambda m: _cross_batch(m),
        deterministic=False,
        short_name="GramianWeightedAggregator",
        differentiable=False,
    ),
    Method(
        "ExcessMTL",
        lambda m: agg.ExcessMTL(),
        None,
        permutation_invariant=True,
        deterministic=False,  # stateful: each call moves its weights
        differentiable=False,
    ),
    Method(
        "GradVac",
        lambda m: agg.GradVac(generator=_seeded()),
        lambda m: agg.GradVacWeighting(generator=_seeded()),
        deterministic=False,  # random orders, and stateful
        differentiable=False,
    ),
    Method(
        "GradNorm",
        lambda m: agg.GradNorm(),
        lambda m: agg.GradNormWeighting(),
        permutation_invariant=True,
        deterministic=False,  # stateful: each call steps its weights
        differentiable=False,
    ),
]
