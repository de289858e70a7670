"""How methods print: ``repr`` is a call of the constructor that rebuilds the object, ``str`` of
an aggregator is the short name TorchJD 0.8 prints, ``str`` of a weighting is its ``repr``."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
import torch
from torch import nn

import jdopt.aggregation as agg

from ._matrices import conflicting
from ._registry import METHODS

_UNNAMED = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
NAMESPACE = {"tensor": torch.tensor, "torch": torch, **{n: getattr(agg, n) for n in agg.__all__}}


def _modules() -> list[nn.Module]:
    """Every registry method built for 4 objectives: its aggregator and its weighting."""
    built = [method.aggregator(4) for method in METHODS]
    built += [method.weighting(4) for method in METHODS if method.weighting is not None]
    return [*built, agg.Flattening(agg.UPGradWeighting())]


MODULES = _modules()
# Modules whose arguments all print as Python expressions (no generator, no function).
REBUILDABLE = [
    agg.UPGrad(pref_vector=torch.tensor([1.0, 2.0, 3.0, 4.0]), reg_eps=0.0, solver="quadprog"),
    agg.DualProj(norm_eps=0.0, reg_eps=1e-6),
    agg.UPGrad(options=agg.SolverOptions(check_once=True, once_admm_steps=(5, 5))),
    agg.DualProjWeighting(options=agg.SolverOptions(admm_sizes=(1, 0))),
    agg.AlignedMTL(pref_vector=torch.tensor([1.0, 1.0, 2.0, 2.0]), scale_mode="rmse"),
    agg.ConFIG(pref_vector=torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)),
    agg.Constant(torch.tensor([0.5, -1.0, 2.0, 0.0])),
    agg.GramianWeightedAggregator(agg.MeanWeighting()),
    agg.Krum(n_byzantine=0, n_selected=3),
    agg.NashMTL(n_tasks=4, max_norm=0.0, update_weights_every=2, optim_niter=30),
    agg.TrimmedMean(trim_number=1),
    agg.Random(),
    agg.GradDrop(leak=torch.tensor([0.0, 0.5, 1.0, 0.25])),
    *[m for m in MODULES if "<" not in repr(m)],
]


def _arguments(text: str, name: str) -> list[tuple[str, str]]:
    """``Name(a=1, b=f(x, y))`` → ``[("a", "1"), ("b", "f(x, y)")]``: the top-level arguments."""
    assert text.startswith(f"{name}(") and text.endswith(")"), text
    inner, parts, depth, start = text[len(name) + 1 : -1], [], 0, 0
    for i, char in enumerate(inner):
        depth += (char in "([{<") - (char in ")]}>")
        if char == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts += [inner[start:]] if inner else []
    return [tuple(part.strip().split("=", 1)) for part in parts]


def _options(module: nn.Module) -> object:
    owner = getattr(module, "weighting", module)
    return owner.options


@pytest.mark.parametrize("module", MODULES, ids=lambda m: type(m).__name__)
def test_repr_names_every_constructor_argument_in_order(module: nn.Module) -> None:
    parameters = inspect.signature(type(module)).parameters.items()
    expected = [name for name, p in parameters if p.kind not in _UNNAMED]
    if isinstance(module, agg.Flattening):  # written as Flattening(weighting)
        assert repr(module) == f"Flattening({module.weighting!r})"
        return
    if "options" in expected and _options(module) is None:
        expected.remove("options")  # jdopt's addition, left out at its default: TorchJD's repr
    arguments = _arguments(repr(module), type(module).__name__)
    assert [name for name, *_ in arguments] == expected
    assert all(len(argument) == 2 for argument in arguments)  # every one as name=value


@pytest.mark.parametrize("module", REBUILDABLE, ids=lambda m: type(m).__name__)
def test_repr_rebuilds_a_module_that_computes_the_same(module: nn.Module) -> None:
    rebuilt = eval(repr(module), NAMESPACE)
    assert type(rebuilt) is type(module)
    assert repr(rebuilt) == repr(module)
    jacobian = conflicting(4)
    if isinstance(module, agg.Aggregator) and not isinstance(module, (agg.Random, agg.GradDrop)):
        assert torch.equal(rebuilt(jacobian), module(jacobian))


@pytest.mark.parametrize("module", MODULES, ids=lambda m: type(m).__name__)
def test_nothing_prints_on_several_lines(module: nn.Module) -> None:
    assert "\n" not in repr(module) and "\n" not in str(module)


@pytest.mark.parametrize(
    "module",
    [m for m in MODULES if not isinstance(m, agg.Aggregator)],
    ids=lambda m: type(m).__name__,
)
def test_a_weighting_prints_its_constructor_call_as_str_too(module: nn.Module) -> None:
    assert str(module) == repr(module)


@pytest.mark.parametrize(
    "method",
    METHODS,
    ids=lambda m: m.name,
)
def test_str_is_the_short_name_torchjd_prints(method) -> None:
    assert str(method.aggregator(4)) == (method.short_name or method.name)


# As TorchJD 0.8 prints them: (the same object, its repr, its str). jdopt's constructors take
# the same arguments here, with the same defaults (UPGrad and DualProj: given solver).
TORCHJD = [
    (
        lambda: agg.UPGrad(solver="quadprog"),
        "UPGrad(pref_vector=None, norm_eps=0.0001, reg_eps=0.0001, solver='quadprog')",
        "UPGrad",
    ),
    (
        lambda: agg.UPGrad(pref_vector=torch.tensor([1.0, 2.0, 3.0]), solver="quadprog"),
        "UPGrad(pref_vector=tensor([1., 2., 3.]), norm_eps=0.0001, reg_eps=0.0001, "
        "solver='quadprog')",
        "UPGrad([1., 2., 3.])",
    ),
    (
        lambda: agg.UPGrad(pref_vector=torch.tensor([0.333, -1.5, 10.0, 1e-3])),
        None,
        "UPGrad([0.33, -1.5, 10., 0.])",
    ),
    (
        lambda: agg.DualProj(pref_vector=torch.tensor([1.0, 2.0]), solver="quadprog"),
        "DualProj(pref_vector=tensor([1., 2.]), norm_eps=0.0001, reg_eps=0.0001, "
        "solver='quadprog')",
        "DualProj([1., 2.])",
    ),
    (lambda: agg.Mean(), "Mean()", "Mean"),
    (lambda: agg.Sum(), "Sum()", "Sum"),
    (lambda: agg.IMTLG(), "IMTLG()", "IMTLG"),
    (lambda: agg.Krum(n_byzantine=1, n_selected=2), "Krum(n_byzantine=1, n_selected=2)", "Krum1-2"),
    (lambda: agg.Krum(n_byzantine=1), "Krum(n_byzantine=1, n_selected=1)", "Krum1-1"),
    (lambda: agg.TrimmedMean(trim_number=2), "TrimmedMean(trim_number=2)", "TM2"),
    (lambda: agg.Constant(torch.tensor([1.0, 2.0])), "Constant(weights=tensor([1., 2.]))", None),
    (lambda: agg.Constant(torch.tensor([1.0, 2.0])), None, "Constant([1., 2.])"),
    (lambda: agg.Constant(torch.tensor([1 / 3, 2 / 3])), None, "Constant([0.33, 0.67])"),
    (lambda: agg.Constant(torch.ones(0)), "Constant(weights=tensor([]))", "Constant([])"),
    (lambda: agg.ConFIG(), "ConFIG(pref_vector=None)", "ConFIG"),
    (lambda: agg.ConFIG(pref_vector=torch.tensor([1.0, 2.0])), None, "ConFIG([1., 2.])"),
    (lambda: agg.AlignedMTL(pref_vector=torch.tensor([1.0, 2.0])), None, "AlignedMTL([1., 2.])"),
    (lambda: agg.GradDrop(leak=torch.tensor([0.0, 1.0])), None, "GradDrop([0., 1.])"),
    (lambda: agg.GradDrop(leak=torch.ones(0)), None, "GradDrop([])"),
    (
        lambda: agg.NashMTL(n_tasks=2),
        "NashMTL(n_tasks=2, max_norm=1.0, update_weights_every=1, optim_niter=20)",
        "NashMTL",
    ),
    (lambda: agg.CAGrad(c=0.5), "CAGrad(c=0.5, norm_eps=0.0001)", None),
    pytest.param(lambda: agg.CAGrad(c=0.5), None, "CAGrad0.5"),
    pytest.param(lambda: agg.CAGrad(c=1), None, "CAGrad1"),
    pytest.param(lambda: agg.CAGrad(c=1.0), None, "CAGrad1."),
    (lambda: agg.MGDA(), None, "MGDA"),
]


@pytest.mark.parametrize(("make", "expected_repr", "expected_str"), TORCHJD)
def test_prints_as_torchjd(
    make: Callable[[], agg.Aggregator], expected_repr: str | None, expected_str: str | None
) -> None:
    aggregator = make()
    if expected_repr is not None:
        assert repr(aggregator) == expected_repr
    if expected_str is not None:
        assert str(aggregator) == expected_str


class _Renamed(agg.Weighting):
    """A user's weighting that keeps its argument under another name."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.t = temperature

    def forward(self, gramian: torch.Tensor, /) -> torch.Tensor:
        return torch.softmax(-gramian.diagonal() / self.t, dim=0)


def test_a_subclass_that_renames_its_arguments_prints_as_a_module() -> None:
    weighting = _Renamed(2.0)
    assert repr(weighting) == "_Renamed()"
    assert str(agg.GramianWeightedAggregator(weighting)) == "GramianWeightedAggregator"
    assert repr(agg.GramianWeightedAggregator(weighting)) == (
        "GramianWeightedAggregator(weighting=_Renamed())"
    )
