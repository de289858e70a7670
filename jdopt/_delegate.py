"""A torch optimizer whose whole surface is another optimizer's."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn
from torch.optim import Optimizer

_HOOK_DICTS = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)


class DelegatingOptimizer(Optimizer):
    """Delegates ``param_groups``, ``state``, ``defaults``, ``zero_grad``, ``add_param_group``
    and ``state_dict`` to ``self.optimizer``, and adds ``extra``'s state to the state dict.

    ``Optimizer.__init__`` is not called: it would build param groups of its own. Only the hook
    tables it sets up are created, so that step hooks and LR schedulers work.
    """

    optimizer: Optimizer
    extra: nn.Module

    def _init_delegation(self, optimizer: Optimizer, extra: nn.Module) -> None:
        self.optimizer = optimizer
        self.extra = extra
        for name in _HOOK_DICTS:
            setattr(self, name, OrderedDict())
        self._patch_step_function()

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict, plus the aggregator's state under ``"jdopt"``.

        Hooks registered on this optimizer (``register_state_dict_pre_hook`` / ``_post_hook``)
        run as they would on a torch optimizer.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state = self.optimizer.state_dict()
        state["jdopt"] = {"aggregator": self.extra.state_dict()}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state)
            state = state if result is None else result
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            state_dict = state_dict if result is None else result
        state = dict(state_dict)
        extra = state.pop("jdopt", None)
        # The wrapped optimizer first: it checks the state against its parameter groups, and
        # raising then must leave the aggregator's state as it was.
        self.optimizer.load_state_dict(state)
        if extra is not None:
            self.extra.load_state_dict(extra["aggregator"])
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
