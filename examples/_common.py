"""Helpers shared by the examples: optional imports with a clear install line."""

from __future__ import annotations

from typing import Any

INSTALL = 'pip install "jdopt[examples]"'


def require(module: str) -> Any:
    """Imports an optional dependency of the examples, or explains how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"This example needs `{module}`. Install it with: {INSTALL}") from error


def optional(module: str) -> Any | None:
    """Imports an optional dependency, or returns None when it is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        return None
