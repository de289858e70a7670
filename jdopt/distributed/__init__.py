"""distributed: exact Jacobian descent over the global batch with ``torch.distributed``.

Wrap the model in ``DistributedDataParallel`` as usual and give the wrapped model to
``JDOptimizer(optimizer, model=ddp_model, batch_dim=0)``: every process computes the Gramian of
the losses of *all* processes (gathering each layer's inputs and output gradients, not
Jacobians), the same weights, and its share of the weighted gradient, which is then summed over
the processes. The step equals one process doing the same step on the whole batch.
"""

from ._collectives import bytes_sent, is_distributed, rank, reset_bytes_sent, world_size

__all__ = ["bytes_sent", "is_distributed", "rank", "reset_bytes_sent", "world_size"]
