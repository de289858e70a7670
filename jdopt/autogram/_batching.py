"""What an engine learns about its passes batched over the rows: whether they can run batched.

Operations without a batching rule (cuDNN's RNN backward, fused attention backward on CUDA,
custom functions that read values) make a batched pass fail; :class:`Batching` learns it once
per engine, so that later passes neither fail nor keep the graph to recover.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

from torch import Tensor

from .._rows import batched_or_looped_rows, jacobian_rows, through_compiled_code
from ._recording import Recording


class Batching:
    """What an engine learned about one of its passes batched over the rows.

    ``torch.autograd.grad(..., is_grads_batched=True)`` fails on an operation without a
    batching rule; :func:`jdopt._rows.jacobian_rows` then does one backward pass per row, which
    needs the graph the failed pass may have freed on its way. So the batched pass keeps the
    graph until one has gone through (``proven``): later passes free it as they go, as a
    backward pass does. Once a batched pass has failed (``per_row``), every later pass does
    one backward pass per row from the start: exact, and without a failing attempt.
    """

    def __init__(self) -> None:
        self.proven = False
        self.per_row = False

    def rows(
        self,
        outputs: Sequence[Tensor],
        inputs: Sequence[Tensor],
        cotangents: Sequence[Tensor],
        retain_graph: bool,
    ) -> list[Tensor | None]:
        """The rows ``[m, *input.shape]`` of each input (see :func:`jacobian_rows`): the
        gradients of ``Σₖ ⟨cotangents[k][r], outputs[k]⟩`` for each row ``r``."""
        if self.per_row:
            return jacobian_rows(
                outputs, inputs, cotangents, retain_graph=retain_graph, chunk_size=1
            )
        if len(cotangents[0]) == 1 or through_compiled_code(outputs):  # never batched
            return jacobian_rows(
                outputs,
                inputs,
                cotangents,
                retain_graph=retain_graph,
                chunk_size=None,
                keep_for_fallback=False,
            )
        keep = retain_graph or not self.proven
        try:
            rows, batched = batched_or_looped_rows(
                outputs, inputs, tuple(cotangents), retain=retain_graph, keep=keep, batched=True
            )
        except RuntimeError as error:
            if keep or "cannot run batched" not in str(error):
                raise
            self.per_row = True
            raise RuntimeError(
                "An operation in this step's graph cannot run batched over the objectives "
                f"({str(error.__cause__ or error).splitlines()[0]}), and the failed batched "
                "pass freed the graph, so the Gramian engine could not do one backward pass "
                "per objective instead: nothing was computed. Earlier steps ran batched; from "
                "now on the engine does one backward pass per objective. Compute the losses "
                "again and retry the step (or pass retain_graph=True)."
            ) from error
        self.proven = self.proven or batched
        self.per_row = not batched
        return rows


# What each engine learned about its two batched passes, kept with its recording.
_BATCHING: weakref.WeakKeyDictionary[Recording, dict[str, Batching]] = weakref.WeakKeyDictionary()


def batching_of(recording: Recording) -> dict[str, Batching]:
    """The engine's :class:`Batching` of its pass to the outputs (``"outputs"``) and of its
    pass from the losses to the fallback parameters (``"losses"``)."""
    if recording not in _BATCHING:
        _BATCHING[recording] = {"outputs": Batching(), "losses": Batching()}
    return _BATCHING[recording]
