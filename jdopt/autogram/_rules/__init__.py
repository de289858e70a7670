"""The registry of per-layer rules: one small file per layer family.

``make_rule(module, names)`` returns the rule for a module's trainable parameters: a
closed-form one when the module's exact type is registered and its factory accepts the
module's configuration, the generic exact fallback otherwise. Everything else the engine needs
to know about a rule, the rule declares itself (see :class:`Rule`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    whole: bool  # the rule covers the parameters of the module's submodules too


REGISTRY: dict[type[nn.Module], _Entry] = {
    nn.Linear: _Entry(LinearRule, False),
    nn.Conv1d: _Entry(ConvRule, False),
    nn.Conv2d: _Entry(ConvRule, False),
    nn.Embedding: _Entry(make_embedding_rule, False),
    # Computes with its out_proj's parameters without calling out_proj.
    nn.MultiheadAttention: _Entry(make_attention_rule, True),
    nn.RNN: _Entry(make_recurrent_rule, False),
    nn.GRU: _Entry(make_recurrent_rule, False),
    nn.LSTM: _Entry(make_recurrent_rule, False),
    **{kind: _Entry(rule, False) for kind, rule in norm_rules().items()},
}


class RuleHandle:
    """Returned by :func:`register_rule`: ``remove()`` restores what was registered before
    (also on leaving a ``with`` block)."""

    def __init__(self, module_type: type[nn.Module], previous: _Entry | None) -> None:
        self._module_type = module_type
        self._previous = previous

    def remove(self) -> None:
        if self._previous is None:
            REGISTRY.pop(self._module_type, None)
        else:
            REGISTRY[self._module_type] = self._previous

    def __enter__(self) -> RuleHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def register_rule(
    module_type: type[nn.Module], factory: Factory, *, submodules: bool = False
) -> RuleHandle:
    """Registers the closed-form rule of a module type for engines built afterwards.

    Args:
        module_type: the exact type the rule is for (a subclass, which may override
            ``forward``, gets its own registration or the exact fallback).
        factory: called as ``factory(module, names)`` for every hooked module of that type,
            with the names of its trainable parameters; returns a :class:`Rule`, or ``None``
            to leave that module to the exact fallback (e.g. an option the rule does not
            cover). A :class:`Rule` subclass is such a factory.
        submodules: the module computes with its submodules' parameters without calling the
            submodules (as ``nn.MultiheadAttention`` does with ``out_proj``): the rule then
            covers every parameter under the module (dotted names), and the submodules are
            not hooked.

    Returns:
        A handle whose ``remove()`` (or a ``with`` block) restores the previous registration.

    See :class:`Rule` for what a rule computes, and the README for an example.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(
            f"register_rule() takes an nn.Module subclass, then a rule factory. Found "
            f"{module_type!r}."
        )
    if not callable(factory):
        raise TypeError(
            "register_rule()'s factory should be callable as factory(module, names) -> Rule | "
            f"None (e.g. a Rule subclass). Found {factory!r}."
        )
    previous = REGISTRY.get(module_type)
    REGISTRY[module_type] = _Entry(factory, submodules)
    return RuleHandle(module_type, previous)


def covers_submodules(module: nn.Module) -> bool:
    """Whether the rule registered for the module's type covers its submodules' parameters."""
    entry = REGISTRY.get(type(module))
    return entry is not None and entry.whole


def make_rule(module: nn.Module, names: Sequence[str]) -> Rule:
    # Exact types only: a subclass may override forward, and then only the fallback is exact.
    entry = REGISTRY.get(type(module))
    rule = None if entry is None else entry.factory(module, names)
    if rule is None:
        return FallbackRule(module, names)
    direct = {name for name, param in module._parameters.items() if param is not None}
    if rule.computes_with is not None and not direct <= rule.computes_with:
        return FallbackRule(module, names)
    return rule


__all__ = [
    "REGISTRY",
    "AttentionRule",
    "FallbackRule",
    "Rule",
    "RuleHandle",
    "Use",
    "covers_submodules",
    "make_rule",
    "register_rule",
]
