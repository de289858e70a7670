"""The Gramian engine: Gramians of the Jacobian without per-sample Jacobians."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .._linalg import flatten_generalized
from .._losses import as_losses
from .._rows import jacobian_rows
from ..distributed._collectives import world_size
from ._assembly import Step, global_gramian, local_gramian
from ._checks import check_against_backward, check_modules, check_untracked_uses
from ._layout import Layout
from ._recording import Calls, Recording
from ._rules import Rule, Use
from ._rules._methods import Chooser, check_method
from ._streaming import as_edge, covered
from ._weighted import add_to_grads, weighted_grads


@dataclass
class _Pass:
    """The engine's backward pass, planned (see ``Engine._plan_pass``)."""

    needed: list[tuple[Rule, Use]]
    targets: list
    consumed: set[int]  # id(use) of the calls consumed during the pass
    graph_needed: bool


@dataclass
class _Roots:
    """What the engine differentiates: tensors, their cotangents ``[S, ...]`` per slice, the
    shape of the objectives, and their cotangents ``[R, ...]`` per objective (given the order
    of the objectives)."""

    tensors: list[Tensor]
    cotangents: list[Tensor]
    shape: torch.Size
    per_objective: Callable[[Tensor], list[Tensor]]


class Engine:
    """Computes the Gramian of the Jacobian of losses with respect to some modules' parameters.

    The engine hooks ``modules``: each forward call records the inputs and outputs of every
    submodule that has direct trainable parameters (no copy). ``compute_gramian(losses)`` then
    back-propagates once — batched over the slices of ``losses`` that are not per-sample — to
    those outputs only, and builds the Gramian in closed form from the recorded inputs and the
    output gradients: no parameter gradient, no per-sample Jacobian and no second forward pass.
    Modules without a closed-form rule get their per-objective gradients from a backward pass
    batched over the objectives through their own part of the graph (or, where that is not
    exact, from the losses): exact, slower. An output modified in place
    after the call (``ReLU(inplace=True)``, ``out += identity``) is differentiated as the
    module made it, at no cost; the few calls the closed forms cannot read any more (an input
    modified in place) go to that fallback. A rule may record other tensors than its module's
    outputs (``MultiheadAttention``'s: the projections inside it); the engine differentiates to
    those.

    Args:
        modules: the modules whose parameters the Gramian is taken over (none may contain
            another). Give the whole model, or a few layers for *partial* Jacobian descent. A
            parameter tied to a module outside them is refused.
        batch_dim: the dimension of ``losses`` that indexes samples (``0`` for per-sample
            losses ``[B]`` or ``[B, k]``), or ``None`` when the losses are not per-sample (e.g.
            one loss per task). With a ``batch_dim``, the hooked modules must treat samples
            independently; the closed forms read the batch on their calls' first dimension,
            and a call without it (``pos(arange(T))``, a sequence-first layer) takes the exact
            fallback (see :attr:`fallback_parameters`).
        distributed: under ``torch.distributed``, take the Gramian over the losses of every
            process (see :mod:`jdopt.distributed`): each process gets the same global Gramian,
            of the concatenated per-sample losses (or of the mean of the losses without a
            batch dimension), and ``accumulate_grads`` takes the global weights and sums the
            processes' gradients.
        method: how a layer with several exact ways of computing its part of the Gramian
            picks one. ``"auto"`` (default) measures them the first time it meets a shape and
            keeps the fastest for that shape, dtype, device and thread count (like
            ``torch.backends.cudnn.benchmark``: the first step is slower, and so is the first
            step at each new shape: pad variable lengths to a few, or force a way). A name
            forces that way wherever a layer offers it: ``"inner"`` (inner products of the
            layer's inputs and output gradients: Linear, convolution, attention and recurrent
            weights),
            ``"per_sample"`` (per-sample gradients, materialised: a Linear's batched product,
            a convolution's unfolded patches), ``"grouped"`` (a convolution's per-sample
            gradients as one grouped weight gradient), ``"looped"`` (a convolution's, one
            weight gradient per sample) or ``"pairs"`` (an Embedding's inner products over
            the positions with equal indices only). Every way is exact; they differ in speed
            and memory.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        >>> engine = Engine(model, batch_dim=0)
        >>> losses = model(torch.randn(5, 3)).squeeze(1) ** 2   # [5]
        >>> gramian = engine.compute_gramian(losses)             # [5, 5]
        >>> weights = torch.full((5,), 0.2)                      # e.g. UPGradWeighting()(gramian)
        >>> losses.backward(weights)
    """

    def __init__(
        self,
        *modules: nn.Module,
        batch_dim: int | None,
        distributed: bool = False,
        method: str = "auto",
    ) -> None:
        check_modules(modules, batch_dim)
        check_method(method)
        self.batch_dim = batch_dim
        self.distributed = distributed
        self.modules = list(modules)
        self._recording = Recording(modules, Chooser(method))
        self._last: Step | None = None
        self._fallback: frozenset[int] = frozenset()  # of the last Gramian
        self._plans: dict[tuple, tuple[Layout, Tensor, Tensor]] = {}
        # The first Gramian is checked against one ordinary backward pass (see
        # check_against_backward): it catches set-ups that break the engine's assumptions.
        self._verified = False

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Removes every hook and forgets the recorded calls."""
        self._recording.close()
        self._last = None

    def clear(self) -> None:
        """Forgets the recorded calls (each ``compute_gramian`` also consumes them)."""
        self._recording.clear()
        self._last = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def last_offset(self) -> int:
        """Distributed, per-sample: where this process's samples start in the global batch of
        the last ``compute_gramian``."""
        return 0 if self._last is None else self._last.offset

    @property
    def params(self) -> list[nn.Parameter]:
        """The trainable parameters the Gramian is taken over."""
        return list(self._recording.params)

    @property
    def fallback_parameters(self) -> list[nn.Parameter]:
        """The parameters whose per-objective gradients came from the exact fallback (a batched
        backward pass of the losses, slower than the closed forms) in the last
        ``compute_gramian`` (or ``compute_gramian_of_rows``): those of layers without a closed
        form, of calls the closed forms do not cover, and of parameters tied to either."""
        return [p for p in self._recording.params if id(p) in self._fallback]

    def trainable_changed(self) -> bool:
        """Whether a parameter of the hooked modules was frozen or unfrozen (``requires_grad``)
        since the engine was built: it then refuses to compute Gramians, and a new engine is
        needed."""
        return self._recording.trainable_changed()

    # ------------------------------------------------------------------ the Gramian
    def compute_gramian(
        self,
        losses: Tensor | None = None,
        *,
        retain_graph: bool = True,
        output: Tensor | None = None,
    ) -> Tensor:
        """The generalized Gramian ``[*S, *reversed(S)]`` of ``losses`` (shape ``S``).

        Entry ``[i, j]`` (multi-indices) is the inner product of the gradients of ``losses[i]``
        and ``losses[j]`` with respect to the hooked modules' parameters: the ``[m, m]`` matrix
        ``J Jᵀ`` for a vector of losses, a 0-d tensor for a scalar loss.

        Args:
            losses: the losses, computed with the hooked modules.
            retain_graph: keep the graph of ``losses`` (default), so that
                ``losses.backward(weights)`` can follow. ``False`` frees it during the backward
                pass, like ``backward()`` does: less memory when the weighted gradient comes
                from :meth:`accumulate_grads` (the graph is kept all the same for a layer
                without a closed form, which differentiates its own part of the graph, when
                the losses have several slices, and until an engine's first finite Gramian
                has been checked against one ordinary backward pass, which needs the graph).
            output: TorchJD's name for ``losses`` (``compute_gramian(output=losses)`` works
                unchanged); give one of the two.

        Raises:
            TypeError: when both ``losses`` and ``output`` are given, or neither.
            ValueError: when the first Gramian disagrees with an ordinary backward pass (the
                losses break the engine's assumptions, e.g. per-sample losses that mix
                samples), when a parameter is used outside the hooked calls, or when a
                parameter was frozen or unfrozen since the engine was built.
        """
        losses = as_losses(*_one_of(losses, output))
        layout, order, cotangents = self._plan(losses.shape, losses.dtype, losses.device)
        roots = _Roots([losses], [cotangents], losses.shape, self._objective_cotangents(losses))
        if self._verified or (self.distributed and world_size() > 1):
            return self._compute(roots, layout, order, retain_graph)
        half = any(
            t.dtype in (torch.float16, torch.bfloat16) for t in self._recording.outputs()
        )  # autocast: the backward pass rounds differently
        gramian = self._compute(roots, layout, order, True)
        flat = flatten_generalized(gramian)
        try:
            self._verified = check_against_backward(
                losses, self._recording.params, flat, 5e-2 if half else 1e-3
            )
        except ValueError:
            self._last = None  # accumulate_grads must not use a refused Gramian
            raise
        return gramian

    def compute_gramian_of_rows(
        self,
        outputs: Sequence[Tensor],
        cotangents: Sequence[Tensor],
        *,
        retain_graph: bool = True,
    ) -> Tensor:
        """The Gramian ``[k, k]`` of ``k`` vector-Jacobian products of ``outputs``.

        Row ``i`` is the gradient, with respect to the hooked modules' parameters, of
        ``Σⱼ ⟨cotangents[j][i], outputs[j]⟩``: for instance, with ``outputs`` the shared
        features of a multi-task model and ``cotangents`` each task's gradient at them, the
        rows of the multi-task Jacobian over the trunk. :meth:`accumulate_grads` then takes
        weights ``[k]``. Not available with ``distributed=True``.

        Args:
            outputs: tensors computed with the hooked modules.
            cotangents: one ``[k, *output.shape]`` tensor per output.
            retain_graph: as in :meth:`compute_gramian`.
        """
        if self.distributed and world_size() > 1:
            raise RuntimeError("compute_gramian_of_rows does not support distributed engines.")
        k = cotangents[0].shape[0]
        device = cotangents[0].device
        roots = _Roots(list(outputs), list(cotangents), torch.Size([k]), lambda _: list(cotangents))
        order = torch.arange(k, device=device)
        return self._compute(roots, Layout(k, per_sample=False), order, retain_graph)

    def _objective_cotangents(self, losses: Tensor) -> Callable[[], list[Tensor]]:
        def make(order: Tensor) -> list[Tensor]:
            eye = torch.eye(losses.numel(), dtype=losses.dtype, device=losses.device)
            return [eye[order].reshape(len(order), *losses.shape)]

        return make

    def _compute(self, roots: _Roots, layout: Layout, order: Tensor, retain_graph: bool) -> Tensor:
        recording = self._recording
        recorded = recording.take()
        self._last = None
        if recording.trainable_changed():
            raise ValueError(
                "A parameter of the hooked modules was frozen or unfrozen (requires_grad) since "
                "the engine was built, so its Gramian would be taken over the wrong parameters. "
                "Build a new Engine after changing requires_grad (JDOptimizer does this itself)."
            )
        batch = roots.shape[self.batch_dim] if layout.per_sample else None
        fallback = recording.fallback_params(recorded, batch, roots.tensors)
        # Listed for users: the parameters without a closed form this step.
        self._fallback = frozenset(fallback) | {
            id(rule.param(name))
            for rule in recording.rules
            if not rule.closed_form and recorded[id(rule)]
            for name in rule.names
        }
        plan = self._plan_pass(recorded, fallback, layout)
        # A rule that differentiates its call's own graph after the pass needs the graph kept,
        # where the pass runs through that call.
        keep = retain_graph or plan.graph_needed
        retain = keep or bool(fallback)  # the fallback differentiates the losses again
        uses, parts = self._backward_to_outputs(roots, plan, recorded, fallback, layout, retain)
        # Every time: a tie or a penalty term can appear at any step.
        check_untracked_uses(roots.tensors, recording.rules, uses, fallback)
        from_losses = self._grads_from_losses(roots, fallback, order, keep)
        if not any(uses.values()) and not from_losses:
            raise ValueError(
                "The losses depend on none of the hooked modules' calls recorded since the last "
                "Gramian. Compute the losses with the hooked modules."
            )
        step = Step(layout, uses, order, roots.shape, from_losses, frozenset(fallback))
        step.parts = parts
        if self.distributed and world_size() > 1:
            gramian = global_gramian(recording, step, self.batch_dim)
            shape = step.global_shape
            order = self._plan(shape, roots.tensors[0].dtype, roots.tensors[0].device)[1]
        else:
            gramian = local_gramian(recording, step)
            shape = roots.shape
        self._last = step
        if layout.per_sample and layout.slices > 1 and shape[self.batch_dim] > 1:
            # Objectives are (s, b), slices first; the losses' flat order is another one.
            inverse = torch.argsort(order)
            gramian = gramian[inverse][:, inverse]
        return _generalize(gramian, shape)

    def _plan(
        self, shape: torch.Size, dtype: torch.dtype, device: torch.device
    ) -> tuple[Layout, Tensor, Tensor]:
        """The slices, the order of the objectives ``(s, b)`` and the slices' cotangents."""
        key = (shape, dtype, device, self.batch_dim)
        if key not in self._plans:
            if len(self._plans) > 4:  # shapes rarely change: keep a few
                self._plans.clear()
            self._plans[key] = self._make_plan(shape, dtype, device)
        return self._plans[key]

    def _make_plan(
        self, shape: torch.Size, dtype: torch.dtype, device: torch.device
    ) -> tuple[Layout, Tensor, Tensor]:
        numel = math.prod(shape)
        index = torch.arange(numel, device=device).reshape(shape)
        if self.batch_dim is None:
            eye = torch.eye(numel, dtype=dtype, device=device)
            return Layout(numel, per_sample=False), index.reshape(-1), eye.reshape(numel, *shape)
        if len(shape) == 0 or not -len(shape) <= self.batch_dim < len(shape):
            raise ValueError(
                f"`batch_dim`={self.batch_dim} does not exist for losses of shape "
                f"{tuple(shape)}. Give per-sample losses (batch along batch_dim) or use "
                "batch_dim=None."
            )
        moved = index.movedim(self.batch_dim, 0).reshape(shape[self.batch_dim], -1)  # [B, k]
        k = moved.shape[1]
        order = moved.T.reshape(-1)
        cotangents = torch.zeros(k, numel, dtype=dtype, device=device)
        slice_of = torch.arange(k, device=device).repeat_interleave(moved.shape[0])
        cotangents[slice_of, order] = 1
        return Layout(k, per_sample=True), order, cotangents.reshape(k, *shape)

    def _plan_pass(self, recorded: Calls, fallback: dict, layout: Layout) -> _Pass:
        """The calls whose output gradients the engine's backward pass must give, which of them
        their rule consumes during the pass (see ``_streaming``), and whether the graph must be
        kept for a rule that differentiates its call's own graph after the pass."""
        recording = self._recording
        needed = [
            (rule, use)
            for rule in recording.rules
            if any(id(rule.param(n)) not in fallback for n in rule.names)
            for use in recorded[id(rule)]
        ]
        targets = [t for _, use in needed for t in use.targets()]
        # Processes share factors, not Gramian parts: a distributed engine keeps every
        # gradient; under a batched pass, hooks would see batched tensors.
        alone = layout.slices == 1 and not (self.distributed and world_size() > 1)
        candidates = [
            alone
            and type(rule).consume is not Rule.consume
            and len(recorded[id(rule)]) == 1
            and len(use.outputs) == 1
            and all(recording.is_own(rule, name, fallback) for name in rule.names)
            for rule, use in needed
        ]
        local = [rule.needs_graph for rule, _ in needed]
        flags = covered(targets) if any(candidates) or any(local) else [False] * len(targets)
        consumed, graph_needed, position = set(), False, 0
        for (_, use), candidate, differentiates in zip(needed, candidates, local, strict=True):
            # The pass runs through the call's nodes (and frees them) when a target lies below.
            below = any(flags[position : position + len(use.outputs)])
            if candidate and below:
                consumed.add(id(use))
            elif differentiates and below:
                graph_needed = True
            position += len(use.outputs)
        return _Pass(needed, targets, consumed, graph_needed)

    def _backward_to_outputs(
        self,
        roots: _Roots,
        plan: _Pass,
        recorded: Calls,
        fallback: dict[int, nn.Parameter],
        layout: Layout,
        retain_graph: bool,
    ) -> tuple[Calls, dict[int, Tensor]]:
        """Fills the output gradients ``[S, *output.shape]`` of the closed-form rules' calls;
        returns the calls the pass reached and the Gramian parts that rules made during it
        (``id(rule) ↦ part``)."""
        live: Calls = {id(rule): [] for rule in self._recording.rules}
        parts: dict[int, Tensor] = {}
        # An output modified in place is differentiated at its edge (see _hooks._edge).
        if not plan.targets:
            if not fallback or not any(recorded.values()):
                raise RuntimeError(
                    "The engine recorded no forward call of its modules with grad enabled. "
                    "Compute the losses with the hooked modules (outside torch.no_grad()) "
                    "after creating the engine. A model compiled and called before the engine "
                    "existed runs code without its hooks: create the engine before the first "
                    "call, or call torch._dynamo.reset() after creating it."
                )
            return live, parts
        batched = layout.slices > 1
        requested = [(rule, use) for rule, use in plan.needed if id(use) not in plan.consumed]
        targets = [t for _, use in requested for t in use.targets()]
        fired: set[int] = set()  # the consumed calls whose hook ran
        handles = [
            self._consume_hook(rule, use, layout, fired, parts)
            for rule, use in plan.needed
            if id(use) in plan.consumed
        ]
        try:
            if batched:  # one pass per slice where an operation cannot run batched
                grads = jacobian_rows(
                    roots.tensors,
                    targets,
                    roots.cotangents,
                    retain_graph=retain_graph,
                    chunk_size=None,
                    keep_for_fallback=False,
                )
            else:
                grads = torch.autograd.grad(
                    roots.tensors,
                    targets,
                    [c[0] for c in roots.cotangents],
                    retain_graph=retain_graph,
                    allow_unused=True,
                )
        finally:
            for handle in handles:
                handle.remove()
        for rule, use in plan.needed:
            if id(use) in fired:
                live[id(rule)].append(use)
        position = 0
        for rule, use in requested:
            own = grads[position : position + len(use.outputs)]
            position += len(use.outputs)
            if all(g is None for g in own):
                continue  # a call outside the graph of these losses (e.g. an earlier step)
            use.grads = [
                None if g is None else _as_output(g if batched else g.unsqueeze(0), output)
                for g, output in zip(own, use.outputs, strict=True)
            ]
            live[id(rule)].append(use)
        return live, parts

    @staticmethod
    def _consume_hook(
        rule: Rule, use: Use, layout: Layout, fired: set[int], parts: dict[int, Tensor]
    ) -> RemovableHandle:
        """A pre-hook on the node that made the call's output (it sees the gradient of the
        output as the module made it, even after an in-place operation: see _hooks._edge),
        which hands the gradient to the rule."""
        edge = as_edge(use.targets()[0])

        def hook(grad_outputs: tuple) -> None:
            grad = grad_outputs[edge.output_nr]
            # Once per pass: a rule that differentiates its own graph runs this node again.
            if grad is None or id(use) in fired:
                return
            use.grads = [_as_output(grad.unsqueeze(0), use.outputs[0])]
            fired.add(id(use))
            found = rule.consume(use, rule.names, layout)
            if found is not None:
                parts[id(rule)] = found[0]
                if found[1]:
                    use.grads = [None]

        return edge.node.register_prehook(hook)

    def _grads_from_losses(
        self, roots: _Roots, fallback: dict[int, nn.Parameter], order: Tensor, retain: bool
    ) -> dict[int, Tensor]:
        """Per-objective gradients ``[R, numel]`` of the fallback parameters, from the losses."""
        if not fallback:
            return {}
        params = list(fallback.values())
        r = len(order)
        # Batched over the objectives; one pass per objective where an operation cannot run
        # batched (when the failed batched pass left the graph, or it was retained).
        grads = jacobian_rows(
            roots.tensors,
            params,
            roots.per_objective(order),
            retain_graph=retain,
            chunk_size=None,
            keep_for_fallback=False,
        )
        # A parameter the roots do not reach gets no gradient, as with backward() (the
        # processes of a distributed engine keep zeros: they gather every entry together).
        keep_unreached = self.distributed and world_size() > 1
        return {
            id(p): (p.new_zeros(r, p.numel()) if g is None else g.reshape(r, -1).to(p.dtype))
            for p, g in zip(params, grads, strict=True)
            if g is not None or keep_unreached
        }

    # ------------------------------------------------------------------ weighted gradients
    def accumulate_grads(self, weights: Tensor) -> None:
        """Adds ``Σᵢ weights[i] ∇losses[i]`` to the ``.grad`` of the hooked parameters.

        Uses the factors saved by the last :meth:`compute_gramian` (the weighted gradient of a
        Linear layer is ``(w ⊙ dY)ᵀ X``), so no second backward pass is needed. Parameters
        outside the hooked modules are not touched: use ``losses.backward(weights)`` when the
        engine does not cover every trainable parameter.

        Args:
            weights: weights of the losses, in the losses' shape.
        """
        step = self._last
        if step is None:
            raise RuntimeError("Call compute_gramian(losses) before accumulate_grads(weights).")
        expected = step.global_shape or step.shape
        if not isinstance(weights, Tensor) or weights.shape != expected:
            found = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
            raise ValueError(
                f"`weights` should have the shape of the losses, {tuple(expected)}. Found {found}."
            )
        self._last = None
        weights = weights.detach()
        if step.global_shape is not None and step.layout.per_sample:
            weights = weights.narrow(self.batch_dim, step.offset, step.shape[self.batch_dim])
        flat = weights.reshape(-1)[step.order]
        add_to_grads(self._recording, step, weighted_grads(self._recording, step, flat))


def _one_of(losses: object, output: object) -> tuple[object, str]:
    """``compute_gramian``'s losses, given as ``losses`` or by TorchJD's name, ``output``, with
    the name it was given by."""
    if losses is not None and output is not None:
        raise TypeError(
            "compute_gramian() got both `losses` and `output`, two names for the same argument. "
            "Give only one: compute_gramian(losses)."
        )
    if losses is None and output is None:
        raise TypeError("compute_gramian() missing its argument: compute_gramian(losses).")
    return (losses, "losses") if output is None else (output, "output")


def _as_output(grad: Tensor, output: Tensor) -> Tensor:
    """A gradient ``[S, ...]`` read at an output's edge, in the output's shape ``[S, *shape]``
    (an edge of a view's base has the base's shape)."""
    return grad.reshape(grad.shape[0], *output.shape)


def _generalize(gramian: Tensor, shape: torch.Size) -> Tensor:
    """``[M, M]`` in the losses' flat order → ``[*S, *reversed(S)]`` (a 0-d tensor for S=())."""
    k = len(shape)
    if k == 0:
        return gramian.reshape(())
    full = gramian.reshape(*shape, *shape)
    return full.permute(*range(k), *reversed(range(k, 2 * k)))
