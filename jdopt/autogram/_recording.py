"""The engine's first role: the hooked modules' rules, and what their calls recorded."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ._checks import graph_references
from ._hooks import make_hook, parameter_owners, readable
from ._rules import Rule, Use, make_rule
from ._rules._methods import Chooser

Calls = dict[int, list[Use]]  # id(rule) ↦ its recorded calls


class Recording:
    """One rule per module with trainable parameters, hooked to record the module's calls.

    Args:
        modules: the modules given to the engine.
        chooser: how the rules pick among their exact ways (see ``_rules._methods``).
    """

    def __init__(self, modules: Sequence[nn.Module], chooser: Chooser) -> None:
        self.rules: list[Rule] = []
        self._calls: Calls = {}
        self._handles: list[RemovableHandle] = []
        for module, names in parameter_owners(modules):
            rule = make_rule(module, names)
            rule.choose = chooser
            self.rules.append(rule)
            self._calls[id(rule)] = []
            self._handles.extend(self._hook(rule, module))
        # id(param) ↦ every (rule, name) that covers it: several for a tied parameter.
        self.owners: dict[int, list[tuple[Rule, str]]] = {}
        for rule in self.rules:
            for name in rule.names:
                self.owners.setdefault(id(rule.param(name)), []).append((rule, name))
        self.params = [owners[0][0].param(owners[0][1]) for owners in self.owners.values()]
        # Every parameter of the modules, with its requires_grad now (see trainable_changed).
        unique = {id(p): p for module in modules for p in module.parameters()}
        self._watched = [(param, param.requires_grad) for param in unique.values()]
        # A parameter whose own backward gives a sparse gradient gets a sparse one, unless it
        # is tied to another module (whose dense gradient makes the sum dense).
        self.sparse = {
            id(rule.param(name))
            for rule in self.rules
            for name in rule.names
            if rule.sparse(name) and len(self.owners[id(rule.param(name))]) == 1
        }

    def _hook(self, rule: Rule, module: nn.Module) -> list[RemovableHandle]:
        """Records the module's calls for the rule: with the rule's own hooks if it has some."""
        handles = rule.register_hooks(self._calls[id(rule)])
        if handles is None:
            hook = make_hook(self._calls[id(rule)])
            # First among the module's forward hooks: it must see the module's own output,
            # before a user's hook replaces it.
            handles = [module.register_forward_hook(hook, with_kwargs=True, prepend=True)]
        return list(handles)

    def take(self) -> Calls:
        """The calls recorded since the last ``take``, which forgets them; refused when a
        parameter was frozen or unfrozen since the recording began (the Gramian would be taken
        over the wrong parameters)."""
        taken = {key: list(calls) for key, calls in self._calls.items()}
        self.clear()
        if self.trainable_changed():
            raise ValueError(
                "A parameter of the hooked modules was frozen or unfrozen (requires_grad) since "
                "the engine was built, so its Gramian would be taken over the wrong parameters. "
                "Build a new Engine after changing requires_grad (JDOptimizer does this itself)."
            )
        return taken

    def clear(self) -> None:
        for calls in self._calls.values():
            calls.clear()

    def outputs(self) -> list[Tensor]:
        """The outputs of every call recorded since the last ``take``."""
        return [t for calls in self._calls.values() for use in calls for t in use.outputs]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def trainable_changed(self) -> bool:
        return any(param.requires_grad is not flag for param, flag in self._watched)

    def fallback_params(
        self, calls: Calls, batch: int | None, roots: Sequence[Tensor]
    ) -> dict[int, nn.Parameter]:
        """Parameters whose per-objective gradients come from the losses: those of fallback
        rules, of rules not exact for these calls (or unable to read them after in-place
        operations, or — per-sample losses of ``batch`` samples — called without the batch on
        their batch axis: ``pos(arange(T))``, a sequence-first layer), and those tied to
        either."""
        fallback: dict[int, nn.Parameter] = {}
        exact = {}
        local: dict[int, dict[int, int]] = {}  # id(rule) ↦ its call's own references
        for rule in self.rules:
            mine = calls[id(rule)]
            exact[id(rule)] = rule.exact_for(mine) and all(
                readable(c, rule.needs_graph) and (batch is None or rule.batched(c, batch))
                for c in mine
            )
            found = rule.local_references(mine[0]) if exact[id(rule)] and len(mine) == 1 else None
            if found is not None:
                local[id(rule)] = found
        if local:  # a rule that differentiates its own graph: is the parameter used elsewhere?
            keys = {key for counts in local.values() for key in counts}
            everywhere = graph_references(roots, keys)
            for key, counts in local.items():
                exact[key] = all(everywhere.get(k, 0) == n for k, n in counts.items())
        for rule in self.rules:
            if rule.from_losses or not exact[id(rule)]:
                for name in rule.names:
                    fallback[id(rule.param(name))] = rule.param(name)
        return fallback

    def without_closed_form(self, calls: Calls) -> set[int]:
        """The parameters of the called rules that have no closed form (``id(param)``)."""
        return {
            id(rule.param(name))
            for rule in self.rules
            if not rule.closed_form and calls[id(rule)]
            for name in rule.names
        }

    def own_names(self, calls: Calls, fallback: dict) -> list[tuple[Rule, list[str]]]:
        """The called rules, each with the parameters only it owns (neither tied nor fallback)."""
        pairs = []
        for rule in self.rules:
            own = [n for n in rule.names if self.is_own(rule, n, fallback)]
            if own and calls[id(rule)]:
                pairs.append((rule, own))
        return pairs

    def is_own(self, rule: Rule, name: str, fallback: dict) -> bool:
        key = id(rule.param(name))
        return key not in fallback and len(self.owners[key]) == 1

    def tied(self, calls: Calls, fallback: dict) -> list[list[tuple[Rule, str]]]:
        """The called owners of every closed-form parameter that several modules use."""
        groups = []
        for key, owners in self.owners.items():
            if len(owners) == 1 or key in fallback:
                continue
            called = [(rule, name) for rule, name in owners if calls[id(rule)]]
            if called:
                groups.append(called)
        return groups
