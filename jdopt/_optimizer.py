"""JDOptimizer: a torch.optim.Optimizer that does Jacobian descent around any optimizer."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ._diagnostics import StepInfo, step_info
from ._linalg import compute_gramian
from ._losses import as_losses, check_chunk_size, check_finite_losses
from .aggregation import Aggregator, GramianWeightedAggregator, UPGrad, Weighting
from .autojac._accumulate import accumulate, add_grad
from .autojac._backward import compute_jacobian
from .autojac._graph import reached_leaves
from .autojac._mtl_backward import check_features, compute_mtl_jacobian

ENGINES = ("auto", "autojac")
_HOOK_DICTS = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)


class JDOptimizer(Optimizer):
    """Jacobian descent around any ``torch.optim.Optimizer``.

    Replace ``loss.backward(); optimizer.step()`` with ``jd.step(losses)``, where ``losses``
    holds one loss per objective (tasks, samples, or both, in any shape). ``jd`` computes the
    Jacobian of the losses, aggregates it with ``aggregator`` into one update that conflicts
    with none of them (UPGrad, the default) or follows another rule, writes it into ``.grad``,
    and lets the wrapped optimizer step. It *is* a torch optimizer: ``param_groups``, ``state``,
    ``zero_grad``, ``state_dict`` and LR schedulers all work, delegated to ``optimizer``.

    Args:
        optimizer: the optimizer to wrap (SGD, Adam, AdamW, …), built as usual.
        aggregator: an :class:`~jdopt.aggregation.Aggregator` or a
            :class:`~jdopt.aggregation.Weighting`. Default: ``UPGrad()``.
        model: the module (or list of modules) whose parameters the objectives are
            differentiated against by the Gramian engine; see ``engine``.
        batch_dim: the dimension of ``losses`` that indexes samples (``0`` for per-sample
            losses), or ``None``.
        engine: ``"auto"`` (default) or ``"autojac"`` (the full Jacobian over the wrapped
            optimizer's parameters).
        scaler: the ``torch.amp.GradScaler`` used with ``jd.backward(scaler.scale(losses))``
            and ``scaler.step(jd)``; jdopt then computes the weights in the unscaled space and
            lets the scaler skip steps whose Jacobian overflowed.
        parallel_chunk_size: Jacobian rows per batched backward pass (``None``: all at once).

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> losses = ((model(x) - y) ** 2).squeeze(1)  # one loss per sample
        >>> jd.zero_grad()
        >>> jd.step(losses)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        aggregator: Aggregator | Weighting | None = None,
        model: nn.Module | Sequence[nn.Module] | None = None,
        batch_dim: int | None = None,
        engine: str = "auto",
        scaler: torch.amp.GradScaler | None = None,
        parallel_chunk_size: int | None = None,
    ) -> None:
        _check_arguments(optimizer, aggregator, model, batch_dim, engine, scaler)
        check_chunk_size(parallel_chunk_size)
        self.optimizer = optimizer
        self.aggregator = _as_aggregator(UPGrad() if aggregator is None else aggregator)
        self.model = model
        self.batch_dim = batch_dim
        self.engine = "autojac"
        self.scaler = scaler
        self.parallel_chunk_size = parallel_chunk_size
        self.last_step: StepInfo | None = None
        for name in _HOOK_DICTS:
            setattr(self, name, OrderedDict())
        self._patch_step_function()

    # The whole Optimizer surface is the wrapped optimizer's.
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict, plus the aggregator's state under ``"jdopt"``."""
        state = self.optimizer.state_dict()
        state["jdopt"] = {"aggregator": self.aggregator.state_dict()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        extra = state.pop("jdopt", None)
        if extra is not None:
            self.aggregator.load_state_dict(extra["aggregator"])
        self.optimizer.load_state_dict(state)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        inner = "\n".join("    " + line for line in repr(self.optimizer).splitlines())
        return (
            f"JDOptimizer(engine={self.engine!r}, aggregator={self.aggregator!r},\n"
            f"  optimizer=\n{inner}\n)"
        )

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, losses: Tensor | Sequence[Tensor] | None = None, *, features: Any = None
    ) -> None:
        """``backward(losses, features=features)`` then the wrapped optimizer's ``step()``.

        Without losses (as ``GradScaler.step`` calls it) it only steps, using ``.grad``.
        """
        if losses is not None or features is not None:
            with torch.enable_grad():
                self.backward(losses, features=features)
        self.optimizer.step()

    def backward(self, losses: Tensor | Sequence[Tensor], *, features: Any = None) -> None:
        """Aggregates the Jacobian of ``losses`` into the parameters' ``.grad``.

        Args:
            losses: one loss per objective, any shape (each element is an objective).
            features: the shared representation of a multi-task model: the parameters
                upstream of it get Jacobian descent, the heads their own task's gradient.

        Raises:
            TypeError, ValueError: on invalid losses or features, before anything changes.
        """
        if callable(losses) and not isinstance(losses, Tensor):
            raise TypeError(
                "JDOptimizer.step does not take a closure. Compute the losses and call "
                "`jd.step(losses)` (or `jd.backward(losses)` then `jd.step()`)."
            )
        losses = as_losses(losses)
        if self.scaler is None:
            check_finite_losses(losses)
        params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        if features is None:
            self._backward_autojac(losses, params)
        else:
            self._backward_mtl(losses, features, params)

    def _backward_autojac(self, losses: Tensor, params: list[Tensor]) -> None:
        jacobian, used = compute_jacobian(losses, params, False, self.parallel_chunk_size)
        accumulate(self._aggregate(jacobian, losses.shape, "autojac"), used)

    def _backward_mtl(self, losses: Tensor, features: Any, params: list[Tensor]) -> None:
        features = check_features(features)
        upstream = {id(t) for t in reached_leaves(features)}
        shared = [p for p in params if id(p) in upstream]
        heads = [p for p in params if id(p) not in upstream]
        jacobian, used, head_grads = compute_mtl_jacobian(
            losses, features, shared, heads, False, self.parallel_chunk_size
        )
        update = self._aggregate(jacobian, losses.shape, "autojac-mtl")
        accumulate(update, used)
        for param, grad in head_grads:
            add_grad(param, grad)

    def _aggregate(self, jacobian: Tensor, shape: torch.Size, engine: str) -> Tensor:
        """The update ``[n]`` (in the scaler's space), with diagnostics in ``last_step``."""
        scale = _scale(self.scaler)
        jacobian = jacobian / scale if scale != 1.0 else jacobian
        gramian = compute_gramian(jacobian)
        # A NaN/inf in J makes G non-finite, and G is m × m: checking it is cheap.
        finite = bool(torch.isfinite(gramian).all())
        if not finite and self.scaler is None:
            raise ValueError(
                "The Jacobian of the losses contains NaN or inf although the losses are finite "
                "(an overflow in the backward pass). Nothing was changed. Lower the learning "
                "rate or use a GradScaler (pass `scaler=` to JDOptimizer)."
            )
        weights = None
        if not finite:
            update = jacobian.new_full((jacobian.shape[1],), torch.nan)
        elif isinstance(self.aggregator, GramianWeightedAggregator):
            weights = self.aggregator.weighting(gramian)
            update = weights @ jacobian
        else:
            update = self.aggregator(jacobian)
        shaped = None if weights is None else weights.reshape(shape)
        self.last_step = step_info(engine, gramian, shaped, skipped=not finite)
        return update * scale if scale != 1.0 else update


def _check_arguments(
    optimizer: object,
    aggregator: object,
    model: object,
    batch_dim: object,
    engine: object,
    scaler: object,
) -> None:
    if isinstance(optimizer, JDOptimizer) or not isinstance(optimizer, Optimizer):
        raise TypeError(
            "`optimizer` should be a torch.optim.Optimizer (e.g. torch.optim.Adam(model."
            f"parameters())), not already wrapped. Found {type(optimizer).__name__}."
        )
    if aggregator is not None and not isinstance(aggregator, (Aggregator, Weighting)):
        raise TypeError(
            "`aggregator` should be a jdopt.aggregation.Aggregator or Weighting (e.g. UPGrad()). "
            f"Found {type(aggregator).__name__}."
        )
    if engine not in ENGINES:
        raise ValueError(f"`engine` should be one of {ENGINES}. Found engine={engine!r}.")
    if model is not None and not _is_modules(model):
        raise TypeError(
            f"`model` should be an nn.Module or a list of them. Found {type(model).__name__}."
        )
    if batch_dim is not None and (not isinstance(batch_dim, int) or isinstance(batch_dim, bool)):
        raise TypeError(f"`batch_dim` should be an int or None. Found {batch_dim!r}.")
    if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(
            f"`scaler` should be a torch.amp.GradScaler or None. Found {type(scaler).__name__}."
        )


def _is_modules(model: object) -> bool:
    if isinstance(model, nn.Module):
        return True
    return (
        isinstance(model, Sequence) and bool(model) and all(isinstance(m, nn.Module) for m in model)
    )


def _as_aggregator(aggregator: Aggregator | Weighting) -> Aggregator:
    if isinstance(aggregator, Weighting):
        return GramianWeightedAggregator(aggregator)
    return aggregator


def _scale(scaler: torch.amp.GradScaler | None) -> float:
    if scaler is None or not scaler.is_enabled():
        return 1.0
    return float(scaler.get_scale())
