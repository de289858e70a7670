"""The Gramian engine's public surface: hooks, lifecycle, and the calls users make.

What one ``compute_gramian`` runs is in ``_pipeline``; what the hooks record, in ``_recording``
and ``_hooks``; the per-layer closed forms, in ``_rules``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .._linalg import no_autocast
from .._losses import as_losses
from ._checks import check_modules, losses_argument
from ._pipeline import Pipeline
from ._recording import Recording
from ._rules._methods import Chooser, check_method
from ._weighted import add_to_grads, local_weights, weighted_grads


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

    Precision: the Gramian is computed in the parameters' dtype, at least float32 (float32 for a
    bfloat16 or float16 model, float64 for a float64 one), whatever dtype autocast gave the
    activations; the engine's calls run without autocast (their backward passes then follow the
    dtypes of the forward pass), and the weighted gradients come in the parameters' dtype.

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
        self._pipeline = Pipeline(self._recording, batch_dim, distributed)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Removes every hook and forgets the recorded calls."""
        self._recording.close()
        self._pipeline.last = None

    def clear(self) -> None:
        """Forgets the recorded calls (each ``compute_gramian`` also consumes them)."""
        self._recording.clear()
        self._pipeline.last = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def last_offset(self) -> int:
        """Distributed, per-sample: where this process's samples start in the global batch of
        the last ``compute_gramian``."""
        last = self._pipeline.last
        return 0 if last is None else last.offset

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
        return [p for p in self._recording.params if id(p) in self._pipeline.fallback]

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
        losses = as_losses(*losses_argument(losses, output))
        with no_autocast(losses.device.type):
            return self._pipeline.of_losses(losses, retain_graph)

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
        if self._pipeline.across_processes():
            raise RuntimeError("compute_gramian_of_rows does not support distributed engines.")
        with no_autocast(cotangents[0].device.type):
            return self._pipeline.of_rows(outputs, cotangents, retain_graph)

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
        step = self._pipeline.last
        if step is None:
            raise RuntimeError("Call compute_gramian(losses) before accumulate_grads(weights).")
        flat = local_weights(step, weights, self.batch_dim)
        self._pipeline.last = None
        with no_autocast(flat.device.type):
            add_to_grads(self._recording, step, weighted_grads(self._recording, step, flat))
