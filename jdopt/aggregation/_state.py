"""What stateful methods share: copies of their state, so that a saved or loaded state never
shares memory with the running one."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def copied(value: Any) -> Any:
    """A detached copy of a tensor; anything else (``None``, counts) as it is."""
    return value.detach().clone() if isinstance(value, Tensor) else value
