"""The Gramian engine: Gramians of the Jacobian without per-sample Jacobians."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .._losses import as_losses
from ._layout import Layout
from ._rules import Rule, Use, make_rule

_CROSS_SAMPLE = (nn.modules.batchnorm._BatchNorm,)


class Engine:
    """Computes the Gramian of the Jacobian of losses with respect to some modules' parameters.

    The engine hooks ``modules``: each forward call records the inputs and outputs of every
    submodule that has direct trainable parameters (no copy). ``compute_gramian(losses)`` then
    back-propagates once — batched over the slices of ``losses`` that are not per-sample — to
    those outputs only, and builds the Gramian in closed form from the recorded inputs and the
    output gradients: no parameter gradient, no per-sample Jacobian and no second forward pass.

    Args:
        modules: the modules whose parameters the Gramian is taken over (none may contain
            another). Give the whole model, or a few layers for *partial* Jacobian descent.
        batch_dim: the dimension of ``losses`` that indexes samples (``0`` for per-sample
            losses ``[B]`` or ``[B, k]``), or ``None`` when the losses are not per-sample (e.g.
            one loss per task). With a ``batch_dim``, the hooked modules must treat samples
            independently, with the batch on their inputs' first dimension.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        >>> engine = Engine(model, batch_dim=0)
        >>> losses = model(torch.randn(5, 3)).squeeze(1) ** 2   # [5]
        >>> gramian = engine.compute_gramian(losses)             # [5, 5]
        >>> weights = torch.full((5,), 0.2)                      # e.g. UPGradWeighting()(gramian)
        >>> losses.backward(weights)
    """

    def __init__(self, *modules: nn.Module, batch_dim: int | None) -> None:
        _check_modules(modules, batch_dim)
        self.batch_dim = batch_dim
        self.modules = list(modules)
        self._rules: list[Rule] = []
        self._uses: dict[int, list[Use]] = {}
        self._handles: list[RemovableHandle] = []
        self._last: tuple[Layout, dict[int, list[Use]], Tensor] | None = None
        for submodule, names in _parameter_owners(modules):
            self._add_rule(make_rule(submodule, names))
        self._owners = _owners(self._rules)

    # ------------------------------------------------------------------ lifecycle
    def _add_rule(self, rule: Rule) -> None:
        self._rules.append(rule)
        self._uses[id(rule)] = []
        handle = rule.module.register_forward_hook(self._make_hook(rule))
        self._handles.append(handle)

    def _make_hook(self, rule: Rule):
        uses = self._uses[id(rule)]

        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if not torch.is_grad_enabled():
                return
            outputs = [t for t in _tensors(output) if t.requires_grad]
            if outputs:
                uses.append(Use(args, outputs, [t._version for t in outputs]))

        return hook

    def close(self) -> None:
        """Removes every hook and forgets the recorded calls."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def clear(self) -> None:
        """Forgets the recorded calls (they are also dropped by each ``compute_gramian``)."""
        for uses in self._uses.values():
            uses.clear()
        self._last = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def params(self) -> list[nn.Parameter]:
        """The trainable parameters the Gramian is taken over."""
        return list(
            {id(p): p for rule in self._rules for p in map(rule.param, rule.names)}.values()
        )

    # ------------------------------------------------------------------ the Gramian
    def compute_gramian(self, losses: Tensor) -> Tensor:
        """The generalized Gramian ``[*S, *reversed(S)]`` of ``losses`` (shape ``S``).

        Entry ``[i, j]`` (multi-indices) is the inner product of the gradients of ``losses[i]``
        and ``losses[j]`` with respect to the hooked modules' parameters. For a vector of
        losses it is the ``[m, m]`` matrix ``J Jᵀ``. The graph of ``losses`` is kept, so that
        ``losses.backward(weights)`` can follow.
        """
        losses = as_losses(losses)
        layout, order, cotangents = self._plan(losses)
        uses = self._backward_to_outputs(losses, cotangents, layout.slices)
        batch = losses.shape[self.batch_dim] if layout.per_sample else 1
        r = layout.slices * batch
        gramian = losses.new_zeros(r, r, dtype=self._dtype(losses))
        for rule in self._rules:
            rule_uses = uses[id(rule)]
            if rule_uses:
                own = [n for n in rule.names if len(self._owners[id(rule.param(n))]) == 1]
                if own:
                    gramian = gramian + rule.gramian(rule_uses, own, layout)
        gramian = gramian + self._shared_gramian(uses, layout, r)
        self._last = (layout, uses, order)
        inverse = torch.argsort(order)
        flat = gramian[inverse][:, inverse]
        return _generalize(flat, losses.shape)

    def _plan(self, losses: Tensor) -> tuple[Layout, Tensor, Tensor]:
        """The slices, the order of the objectives ``(s, b)`` and the cotangents."""
        shape = losses.shape
        index = torch.arange(losses.numel(), device=losses.device).reshape(shape)
        if self.batch_dim is None:
            m = losses.numel()
            eye = torch.eye(m, dtype=losses.dtype, device=losses.device)
            return Layout(m, per_sample=False), index.reshape(-1), eye.reshape(m, *shape)
        if not -losses.ndim <= self.batch_dim < max(losses.ndim, 1):
            raise ValueError(
                f"`batch_dim`={self.batch_dim} does not exist for losses of shape "
                f"{tuple(shape)}. Give per-sample losses (batch along batch_dim) or use "
                "batch_dim=None."
            )
        moved = index.movedim(self.batch_dim, 0).reshape(shape[self.batch_dim], -1)  # [B, k]
        k = moved.shape[1]
        order = moved.T.reshape(-1)  # objective (s, b) ↦ flat index in the losses
        cotangents = torch.zeros(k, losses.numel(), dtype=losses.dtype, device=losses.device)
        cotangents[
            torch.arange(k, device=losses.device).repeat_interleave(moved.shape[0]), order
        ] = 1
        return Layout(k, per_sample=True), order, cotangents.reshape(k, *shape)

    def _backward_to_outputs(
        self, losses: Tensor, cotangents: Tensor, slices: int
    ) -> dict[int, list[Use]]:
        """Fills every recorded call's output gradients ``[S, *output.shape]``."""
        recorded = [(rule, use) for rule in self._rules for use in self._uses[id(rule)]]
        for rule, use in recorded:
            _check_not_modified(rule, use)
        outputs = [t for _, use in recorded for t in use.outputs]
        if not outputs:
            raise RuntimeError(
                "The engine recorded no forward call of its modules with grad enabled. Compute "
                "the losses with the hooked modules (outside torch.no_grad()) after creating "
                "the engine."
            )
        batched = slices > 1
        grads = torch.autograd.grad(
            losses,
            outputs,
            cotangents if batched else cotangents[0],
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=batched,
        )
        live: dict[int, list[Use]] = {id(rule): [] for rule in self._rules}
        position = 0
        for rule, use in recorded:
            own = grads[position : position + len(use.outputs)]
            position += len(use.outputs)
            if all(g is None for g in own):
                continue  # a call outside the graph of these losses (e.g. an earlier step)
            use.grads = [None if g is None else (g if batched else g.unsqueeze(0)) for g in own]
            self._check_batch(rule, use, losses)
            live[id(rule)].append(use)
        self.clear()
        return live

    def _check_batch(self, rule: Rule, use: Use, losses: Tensor) -> None:
        if self.batch_dim is None:
            return
        expected = losses.shape[self.batch_dim]
        axis = getattr(rule, "batch_axis", 0)
        found = use.outputs[0].shape[axis] if use.outputs[0].ndim > axis else None
        if found != expected:
            raise ValueError(
                f"With batch_dim={self.batch_dim}, the losses have {expected} samples but "
                f"{type(rule.module).__name__} was called on a batch of {found} (its output has "
                f"shape {tuple(use.outputs[0].shape)}). Hooked modules must see the batch on "
                "their inputs' first dimension; otherwise use batch_dim=None."
            )

    def _shared_gramian(self, uses: dict[int, list[Use]], layout: Layout, r: int) -> Tensor:
        """Parameters used by several modules (tied weights): sum their gradients first."""
        total = 0
        for owners in self._owners.values():
            if len(owners) == 1:
                continue
            grads = [
                rule.per_objective(uses[id(rule)], name, layout)
                for rule, name in owners
                if uses[id(rule)]
            ]
            if grads:
                summed = torch.stack(grads).sum(dim=0)
                total = total + summed @ summed.T
        return total

    def _dtype(self, losses: Tensor) -> torch.dtype:
        params = self.params
        return params[0].dtype if params else losses.dtype

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
        if self._last is None:
            raise RuntimeError("Call compute_gramian(losses) before accumulate_grads(weights).")
        layout, uses, order = self._last
        self._last = None
        flat = weights.reshape(-1)[order]
        grads: dict[int, Tensor] = {}
        params: dict[int, nn.Parameter] = {}
        for rule in self._rules:
            if not uses[id(rule)]:
                continue
            for name, grad in rule.weighted(uses[id(rule)], flat, layout).items():
                param = rule.param(name)
                key = id(param)
                params[key] = param
                grads[key] = grads[key] + grad if key in grads else grad
        for key, grad in grads.items():
            param = params[key]
            grad = grad.reshape(param.shape).to(param.dtype)
            param.grad = grad if param.grad is None else param.grad + grad


# Modules that use their submodules' parameters without calling the submodules.
_OPAQUE = (nn.MultiheadAttention,)


def _parameter_owners(modules: Sequence[nn.Module]) -> list[tuple[nn.Module, list[str]]]:
    """The modules to hook, each with the names of the trainable parameters its calls use.

    Each module appears once, even when it is reachable along several paths.
    """
    owners: list[tuple[nn.Module, list[str]]] = []
    seen: set[int] = set()
    stack = list(reversed(modules))
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        if isinstance(module, _OPAQUE):
            names = [n for n, p in module.named_parameters() if p.requires_grad]
            owners.extend([(module, names)] if names else [])
            continue
        direct = [n for n, p in module._parameters.items() if p is not None and p.requires_grad]
        if direct:
            owners.append((module, direct))
        stack.extend(reversed(list(module.children())))
    return owners


def _tensors(output: object) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for t in output if isinstance(t, Tensor)]
    return []


def _check_not_modified(rule: Rule, use: Use) -> None:
    for tensor, version in zip(use.outputs, use.versions, strict=True):
        if tensor._version != version:
            raise RuntimeError(
                f"The output of {type(rule.module).__name__} was modified in place after the "
                "forward pass (e.g. by ReLU(inplace=True)); the engine needs it intact. Use "
                "the out-of-place operation (inplace=False)."
            )


def _owners(rules: Sequence[Rule]) -> dict[int, list[tuple[Rule, str]]]:
    owners: dict[int, list[tuple[Rule, str]]] = {}
    for rule in rules:
        for name in rule.names:
            owners.setdefault(id(rule.param(name)), []).append((rule, name))
    return owners


def _generalize(gramian: Tensor, shape: torch.Size) -> Tensor:
    """``[M, M]`` in the losses' flat order → ``[*S, *reversed(S)]``."""
    k = len(shape)
    full = gramian.reshape(*shape, *shape)
    return full.permute(*range(k), *reversed(range(k, 2 * k)))


def _check_modules(modules: Sequence[nn.Module], batch_dim: int | None) -> None:
    if not modules:
        raise ValueError("Engine needs at least one module: Engine(model, batch_dim=0).")
    for module in modules:
        if not isinstance(module, nn.Module):
            raise TypeError(f"Engine takes nn.Module objects. Found {type(module).__name__}.")
    for i, a in enumerate(modules):
        for j, b in enumerate(modules):
            if i != j and any(m is b for m in a.modules()):
                raise ValueError(
                    f"The modules given to Engine must not contain each other: "
                    f"{type(b).__name__} is inside {type(a).__name__}. Give only the outer one."
                )
    if batch_dim is not None and (not isinstance(batch_dim, int) or isinstance(batch_dim, bool)):
        raise TypeError(f"`batch_dim` should be an int or None. Found {batch_dim!r}.")
    if batch_dim is None:
        return
    for module in modules:
        for name, sub in module.named_modules():
            if isinstance(sub, _CROSS_SAMPLE):
                raise ValueError(
                    f"{type(sub).__name__} ({name or 'the module itself'}) mixes the samples of "
                    "a batch, so per-sample gradients (batch_dim=0) are not defined. Replace it "
                    "with GroupNorm or LayerNorm, or use batch_dim=None."
                )
