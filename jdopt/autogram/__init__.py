"""autogram: the Gramian of the Jacobian, without per-sample Jacobians.

Most aggregation methods only need the Gramian ``G = J Jᵀ`` of the Jacobian (``[m, m]`` for
``m`` losses). :class:`Engine` computes it from the activations each hooked layer saw and the
gradients at their outputs — one backward pass, closed-form per-layer formulas — so per-sample
Jacobian descent costs little more than an ordinary training step::

    engine = Engine(model, batch_dim=0)
    losses = loss_fn(model(x), y)                # [B], reduction="none"
    gramian = engine.compute_gramian(losses)     # [B, B]
    weights = UPGradWeighting()(gramian)         # [B]
    losses.backward(weights)                     # or engine.accumulate_grads(weights)
    optimizer.step()
"""

from ._engine import Engine
from ._rules import register_rule

__all__ = ["Engine", "register_rule"]
