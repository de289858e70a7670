"""What a rule is: the Gramian, per-objective and weighted gradients of one module type.

Index letters: ``S`` slices, ``B`` rows, ``N`` inner batch, ``T`` positions, ``R = S·B``
objectives; see ``jdopt.autogram._layout``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge
from torch.utils.hooks import RemovableHandle

from ..._linalg import at_least_float32
from .._layout import Layout
from ._methods import MEASURED, Chooser


@dataclass
class Use:
    """One call of a hooked module: its inputs, outputs and, later, the outputs' gradients.

    ``args`` are the call's input tensors, detached (the positional arguments when they are all
    tensors; otherwise every tensor among the positional and keyword arguments, in order),
    ``outputs`` its output tensors that require grad, and ``grads``, filled in by the engine's
    backward pass, one gradient ``[S, *output.shape]`` per output (``S`` slices, see
    :class:`~jdopt.autogram.Layout`; ``None`` for an output the losses do not reach). A rule
    may keep what it derives from a call in ``cache``: it lives until the next Gramian.

    ``versions`` are the version counters of the inputs, then of the outputs, at the call: an
    in-place operation afterwards (``ReLU(inplace=True)``, ``out += identity``) changes them,
    and the outputs' values are then no longer the module's. ``edges`` say, for each output,
    where the gradient of the output *as the module made it* is read after such an operation
    (``None``: nowhere; see ``jdopt.autogram._hooks``).
    """

    args: tuple
    outputs: list[Tensor]
    versions: list[int]
    grads: list[Tensor | None] = field(default_factory=list)  # [S, *output.shape] each
    cache: dict = field(default_factory=dict)  # what rules derive from the call, computed once
    edges: list[GradientEdge | None] = field(default_factory=list)
    # The nodes that made the inputs: where the call's own part of the graph ends.
    sources: list = field(default_factory=list)
    # On the first call of a step: per-objective gradients ``[R, numel]`` of a parameter over
    # all the step's calls, kept by the rule when it made them (``weighted`` uses them).
    kept: dict[str, Tensor] = field(default_factory=dict)

    def inputs_modified(self) -> bool:
        """Whether an input was modified in place since the call."""
        versions = self.versions[: len(self.args)]
        return any(t._version != v for t, v in zip(self.args, versions, strict=True))

    def outputs_modified(self) -> list[bool]:
        """For each output, whether it was modified in place since the call."""
        versions = self.versions[len(self.args) :]
        return [t._version != v for t, v in zip(self.outputs, versions, strict=True)]

    def targets(self) -> list[Tensor | GradientEdge | None]:
        """What to differentiate for each output's gradient: the output itself, or its edge once
        it was modified in place (the gradient then has the shape of the edge's tensor)."""
        modified = self.outputs_modified()
        return [e if m else t for t, m, e in zip(self.outputs, modified, self.edges, strict=True)]


class Rule(ABC):
    """The closed form of one layer type: per-objective gradients of a module's parameters from
    what its calls recorded, without differentiating the losses again.

    The engine records each call of the module (a :class:`Use`: its inputs and outputs), back-
    propagates once to the outputs, and asks the rule for the gradient of every *objective*
    with respect to each parameter. Objectives are ``(s, b)`` pairs, ``R = S·B'`` of them,
    slices first (see :class:`~jdopt.autogram.Layout`): read a call's input and output gradient
    through the layout, as ``layout.rows(use.args[0])`` (``[B', N, ...]``) and
    ``layout.grad_rows(use.grads[0])`` (``[S, B', N, ...]``), and the same formula serves
    per-sample losses, per-sample-per-task losses and losses without a batch dimension.

    Implement :meth:`per_objective`; :meth:`gramian` and :meth:`weighted` follow from it, and a
    rule may override them with something cheaper (inner products of the inputs and output
    gradients instead of materialised gradients, one weighted reduction instead of ``R``
    gradients). Override :meth:`exact_for` to send calls the formulas do not cover to the
    engine's exact fallback, and set the class attributes below where they apply. Register
    the rule with :func:`~jdopt.autogram.register_rule`.

    Args:
        module: the module.
        names: the names of its trainable parameters covered by this rule.
    """

    # What the engine needs to know about a rule, declared by the rule itself:
    from_losses = False  # True: the engine computes this rule's gradients from the losses
    closed_form = True  # False: a per-sample backward pass (listed in fallback_parameters)
    # True: the rule reads its calls' outputs or differentiates its module's recorded graph from
    # them, so a call whose output was modified in place afterwards goes to the fallback.
    needs_graph = False
    # The batch's axis in the recorded outputs (see ``batched``).
    batch_axis = 0
    # True: the formulas read nothing but each call's first input and first output gradient
    # (``use.args[0]``, ``use.grads[0]``), so a distributed engine can gather those across
    # processes instead of per-objective gradients.
    gatherable = False
    # The module's direct parameters the formulas compute with (``None``: no restriction). A
    # module with others (old-style weight_norm's ``weight_g``/``weight_v``, pruning's
    # ``weight_orig``, an extra parameter used by a hook) computes with something else: the
    # engine then uses the exact fallback for it.
    computes_with: frozenset[str] | None = None
    # How the rule picks among its exact ways of computing a quantity (see ``_methods``); the
    # engine sets its own.
    choose: Chooser = MEASURED

    def __init__(self, module: nn.Module, names: Sequence[str]) -> None:
        self.module = module
        self.names = list(names)
        self._params = {name: module.get_parameter(name) for name in self.names}

    def exact_for(self, uses: Sequence[Use]) -> bool:
        """Whether this rule's formulas are exact for these calls (else: the fallback)."""
        return True

    def register_hooks(self, uses: list[Use]) -> list[RemovableHandle] | None:
        """The rule's own hooks, which append the module's calls to ``uses``: ``None`` (the
        default) for the engine's forward hook, which records each call's inputs and outputs.
        A rule that records other tensors (e.g. the projections inside a module) differentiates
        to them: the engine reads the gradients of the recorded ``Use.outputs``."""
        return None

    def graph_references(self, uses: Sequence[Use], name: str) -> int:
        """How many times the graph of these calls may reference parameter ``name``: once per
        call, unless the module's kernel unrolls a loop in autograd (see
        ``check_untracked_uses``)."""
        return len(uses)

    def consume(self, use: Use, names: Sequence[str], layout: Layout) -> tuple[Tensor, bool] | None:
        """Called during the backward pass, with per-sample losses ``[B]``, on the rule's only
        call of the step as soon as its output gradient is made (``use.grads`` filled): the
        rule's part of the Gramian for ``names``, and whether the rule is done with the output
        gradient (it kept what :meth:`weighted` needs), so that the engine lets it go at once
        instead of holding every layer's until the pass ends. ``None`` (the default): the rule
        works after the pass."""
        return None

    def local_references(self, use: Use) -> dict[int, int] | None:
        """For a rule that differentiates its call's own part of the graph: how many times
        that part references each covered parameter (``id ↦ count``). The engine compares it
        with the whole graph's and takes the gradients from the losses when a parameter is
        also used elsewhere. ``None`` (the default): the rule reads only its inputs and output
        gradients."""
        return None

    def batched(self, use: Use, batch: int) -> bool:
        """Whether a call saw the losses' ``batch`` samples on its batch axis (with per-sample
        losses). A call that did not (``pos(arange(T))``, a sequence-first layer, half a
        batch) goes to the exact fallback."""
        output = use.outputs[0]
        return output.ndim > self.batch_axis and output.shape[self.batch_axis] == batch

    def sparse(self, name: str) -> bool:
        """Whether parameter ``name`` gets a sparse gradient from its own backward (a sparse
        ``nn.Embedding``'s weight): its weighted gradient is then made sparse too."""
        return False

    def param(self, name: str) -> nn.Parameter:
        # Looked up once: reassigning a module's Parameter object needs a new engine.
        return self._params[name]

    def dtype(self, name: str) -> torch.dtype:
        """The dtype the rule computes parameter ``name``'s quantities in, whatever autocast
        made its factors: the parameter's, at least float32 (a half-precision Gramian rounds
        and overflows). ``add_to_grads`` casts the weighted gradient to the parameter's."""
        return at_least_float32(self.param(name).dtype)

    @abstractmethod
    def per_objective(self, uses: Sequence[Use], name: str, layout: Layout) -> Tensor:
        """The gradient of every objective with respect to parameter ``name``: ``[R, numel]``."""

    def gramian(self, uses: Sequence[Use], names: Sequence[str], layout: Layout) -> Tensor:
        """The contribution ``[R, R]`` of the parameters ``names`` to the Gramian."""
        total = None
        for name in names:
            grads = self.per_objective(uses, name, layout)
            grads = grads.to(at_least_float32(grads.dtype))
            part = grads @ grads.T
            total = part if total is None else total + part
        return total

    def weighted(self, uses: Sequence[Use], weights: Tensor, layout: Layout) -> dict[str, Tensor]:
        """``Σ_r weights[r] · gradient_r`` for every covered parameter. ``weights``: ``[R]``."""
        grads = {}
        for name in self.names:
            found = uses[0].kept.get(name)
            found = self.per_objective(uses, name, layout) if found is None else found
            found = found.to(at_least_float32(found.dtype))
            grads[name] = (weights.to(found.dtype) @ found).reshape(self.param(name).shape)
        return grads
