"""distributed: exact Jacobian descent over the global batch with ``torch.distributed``.

Wrap the model in ``DistributedDataParallel`` as usual and give the wrapped model to
``JDOptimizer(optimizer, model=ddp_model, batch_dim=0)``: every process computes the Gramian of
the losses of *all* processes (gathering each layer's inputs and output gradients, not
Jacobians); rank 0 decides the weights — or to skip the step, or an error — for every process
(``_decision``), and each process computes its share of the weighted gradient, which is then
summed over the processes. The step equals one process doing the same step on the whole batch.

:func:`all_gather_cat` and :func:`all_reduce_` are the collectives that
:class:`jdopt.JDOptimizer` uses to gather Jacobian rows and reduce gradients, and
:func:`decide_once` shares rank 0's decision (not part of the public API, hence not in
``__all__``).
"""

# Re-exported for JDOptimizer and the engines (``name as name``: not in ``__all__``).
from ._collectives import all_gather_cat as all_gather_cat
from ._collectives import all_reduce_ as all_reduce_
from ._collectives import bytes_sent, is_distributed, rank, reset_bytes_sent, world_size
from ._collectives import gather_sizes as gather_sizes
from ._decision import Slot as Slot
from ._decision import decide_once as decide_once

__all__ = ["bytes_sent", "is_distributed", "rank", "reset_bytes_sent", "world_size"]
