"""One Gramian, as a pipeline: what ``Engine.compute_gramian`` runs, in order.

1. the objectives of the losses: slices, order, cotangents (``_objectives``);
2. the calls recorded since the last Gramian (``_recording``), and the parameters that take
   the exact fallback (layers without a closed form, calls the closed forms cannot read);
3. the backward passes: one to the calls' outputs, planned so that some layers finish their
   work while it runs (``_backward``, ``_streaming``), and one from the losses for the fallback;
4. the Gramian from the rules' parts (``_assembly``; on every process with ``_distributed``),
   in the losses' shape.

The first Gramian is checked against one ordinary backward pass (``_checks``). The step is kept
for ``accumulate_grads``, which takes the weighted gradient from the same factors
(``_weighted``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._linalg import at_least_float32, flatten_generalized
from ..distributed import world_size
from ._assembly import Step, gramian_of
from ._backward import backward_step
from ._checks import check_against_backward
from ._layout import Layout
from ._objectives import Plans, Roots
from ._recording import Recording


class Pipeline:
    """Computes an engine's Gramians and keeps what the last one found.

    Args:
        recording: the engine's hooked rules and their calls.
        batch_dim: the engine's ``batch_dim``.
        distributed: the engine's ``distributed``.
    """

    def __init__(self, recording: Recording, batch_dim: int | None, distributed: bool) -> None:
        self.recording = recording
        self.distributed = distributed
        self.plans = Plans(batch_dim)
        self.last: Step | None = None  # for accumulate_grads
        self.fallback: frozenset[int] = frozenset()  # id(param) listed by the last Gramian
        # The first Gramian is checked against one ordinary backward pass (see
        # check_against_backward): it catches set-ups that break the engine's assumptions.
        self.verified = False

    def of_losses(self, losses: Tensor, retain_graph: bool) -> Tensor:
        """The generalized Gramian ``[*S, *reversed(S)]`` of ``losses``."""
        layout, order, cotangents = self.plans(losses.shape, losses.dtype, losses.device)
        roots = Roots.of_losses(losses, cotangents)
        if self.verified or self.across_processes():
            return self._run(roots, layout, order, retain_graph)
        return self._checked(losses, roots, layout, order)

    def of_rows(
        self, outputs: Sequence[Tensor], cotangents: Sequence[Tensor], retain_graph: bool
    ) -> Tensor:
        """The Gramian ``[k, k]`` of ``k`` vector-Jacobian products of ``outputs``."""
        k = cotangents[0].shape[0]
        order = torch.arange(k, device=cotangents[0].device)
        roots = Roots.of_rows(outputs, cotangents)
        return self._run(roots, Layout(k, per_sample=False), order, retain_graph)

    def across_processes(self) -> bool:
        return self.distributed and world_size() > 1

    def _checked(self, losses: Tensor, roots: Roots, layout: Layout, order: Tensor) -> Tensor:
        """The Gramian, with the graph kept to check it against one ordinary backward pass."""
        half = any(
            t.dtype in (torch.float16, torch.bfloat16) for t in self.recording.outputs()
        )  # autocast: the backward pass rounds differently
        gramian = self._run(roots, layout, order, True)
        flat = flatten_generalized(gramian)
        try:
            self.verified = check_against_backward(
                losses, self.recording.params, flat, 5e-2 if half else 1e-3
            )
        except ValueError:
            self.last = None  # accumulate_grads must not use a refused Gramian
            raise
        return gramian

    def _run(self, roots: Roots, layout: Layout, order: Tensor, retain_graph: bool) -> Tensor:
        recording = self.recording
        self.last = None
        recorded = recording.take()
        batch = roots.shape[self.plans.batch_dim] if layout.per_sample else None
        fallback = recording.fallback_params(recorded, batch, roots.tensors)
        # Listed for users: the parameters without a closed form this step.
        self.fallback = frozenset(fallback) | recording.without_closed_form(recorded)
        alone = not self.across_processes()
        objectives = (roots, layout, order)
        step = backward_step(recording, recorded, fallback, objectives, retain_graph, alone)
        _promote(step.from_losses)
        gramian = gramian_of(recording, step, self.plans, roots.tensors[0], alone)
        self.last = step
        return gramian


def _promote(grads: dict[int, Tensor]) -> None:
    """Per-objective gradients of half-precision parameters (from the losses, in the
    parameters' dtype) in float32, for the Gramian and the weighted gradient: their products
    would round or overflow."""
    for key, grad in grads.items():
        grads[key] = grad.to(at_least_float32(grad.dtype))
