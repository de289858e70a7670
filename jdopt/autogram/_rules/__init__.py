"""The registry of per-layer rules: one small file per layer family.

``make_rule(module, names, batch_dim)`` returns the rule for a module's direct trainable
parameters: a closed-form one when the module type is registered and its configuration is
supported, the generic batched-VJP fallback otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ._attention import make_attention_rule
from ._base import Rule, Use
from ._conv import ConvRule
from ._embedding import make_embedding_rule
from ._fallback import AttentionRule, FallbackRule
from ._linear import LinearRule
from ._norm import norm_rules
from ._recurrent import make_recurrent_rule

Factory = Callable[[nn.Module, Sequence[str]], Rule | None]

REGISTRY: dict[type[nn.Module], Factory] = {
    nn.Linear: LinearRule,
    nn.Conv1d: ConvRule,
    nn.Conv2d: ConvRule,
    nn.Embedding: make_embedding_rule,
    nn.MultiheadAttention: make_attention_rule,
    nn.RNN: make_recurrent_rule,
    nn.GRU: make_recurrent_rule,
    nn.LSTM: make_recurrent_rule,
    **norm_rules(),
}


def register_rule(module_type: type[nn.Module], factory: Factory) -> None:
    """Registers a rule factory for a module type (a factory may return ``None`` to decline)."""
    REGISTRY[module_type] = factory


# The built-in closed forms compute with the module's `weight` and `bias` attributes. Other
# direct parameters (old-style weight_norm's weight_g/weight_v, pruning's weight_orig, an extra
# parameter used by a hook) mean that the forward pass computes with something else.
_WEIGHT_AND_BIAS = {nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, *norm_rules()}


def make_rule(module: nn.Module, names: Sequence[str]) -> Rule:
    # Exact types only: a subclass may override forward, and then only the fallback is exact.
    kind = type(module)
    direct = {name for name, param in module._parameters.items() if param is not None}
    if kind in _WEIGHT_AND_BIAS and not direct <= {"weight", "bias"}:
        return FallbackRule(module, names)
    factory = REGISTRY.get(kind)
    rule = None if factory is None else factory(module, names)
    return rule if rule is not None else FallbackRule(module, names)


__all__ = ["REGISTRY", "AttentionRule", "FallbackRule", "Rule", "Use", "make_rule", "register_rule"]
