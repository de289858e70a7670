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

A layer type without a closed form gets exact per-sample gradients from a batched backward
pass (slower); :func:`register_rule` adds a closed form for a custom layer (a :class:`Rule`
subclass, which reads the layer's recorded calls, :class:`Use`, through a :class:`Layout`).
"""

from ._engine import Engine
from ._layout import Layout
from ._rules import Rule, RuleHandle, Use, register_rule

__all__ = ["Engine", "Layout", "Rule", "RuleHandle", "Use", "register_rule"]
