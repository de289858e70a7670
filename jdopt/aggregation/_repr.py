"""How aggregators and weightings print: ``repr`` is the constructor call, ``str`` a short name.

``repr(UPGrad())`` is ``UPGrad(pref_vector=None, norm_eps=0.0001, reg_eps=0.0001,
solver='native')``: a call of the class with every argument of its ``__init__`` (tensors,
random generators and functions print as Python prints them, so the call rebuilds the object up
to the printed precision). A subclass that keeps an argument under another name prints as
``nn.Module`` does, unless it overrides :meth:`ConstructorRepr.constructor_arguments`. ``str`` of an
aggregator is the short name TorchJD prints (``UPGrad``, ``UPGrad([1., 2.])``, ``Krum1-2``); a
weighting has no short name, its ``str`` is its ``repr``. Neither prints ``nn.Module``'s tree.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn

_UNNAMED = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


class ConstructorRepr(nn.Module):
    """Prints as the call of its class that builds it (see :meth:`constructor_arguments`)."""

    def constructor_arguments(self) -> dict[str, Any]:
        """Returns the arguments of ``__init__`` that build this object, by name, in order.

        Each parameter of ``__init__`` is read from the attribute of the same name, on the
        object or, for a shell around a weighting, on its ``weighting``. A subclass that keeps
        an argument under another name overrides this method.

        Raises:
            AttributeError: if an argument is kept under no such attribute.
        """
        parameters = inspect.signature(type(self).__init__).parameters
        names = [n for n, p in list(parameters.items())[1:] if p.kind not in _UNNAMED]
        return {name: _find(self, name) for name in names}

    def __repr__(self) -> str:
        try:
            found = self.constructor_arguments()
        except AttributeError:  # e.g. a user's subclass that renames its arguments
            return super().__repr__()
        arguments = ", ".join(f"{k}={v!r}" for k, v in found.items())
        return f"{type(self).__name__}({arguments})"


def _find(module: nn.Module, name: str) -> Any:
    for owner in (module, getattr(module, "weighting", None)):
        if isinstance(owner, nn.Module) and hasattr(owner, name):
            return getattr(owner, name)
    raise AttributeError(
        f"{type(module).__name__} keeps its argument `{name}` under no attribute of that name "
        "(on itself or on its `weighting`). Store it as such, or override "
        "`constructor_arguments`."
    )


def vector_str(vector: Tensor) -> str:
    """``[1., 0.33, 2.5]``: each entry to two decimals, trailing zeros dropped (as TorchJD)."""
    return "[" + ", ".join(f"{float(value):.2f}".rstrip("0") for value in vector) + "]"


def vector_suffix(vector: Tensor | None) -> str:
    """``([1., 2.])`` after a short name, or nothing for ``None``."""
    return "" if vector is None else f"({vector_str(vector)})"


def number_str(value: float) -> str:
    """``0.5``, ``1.`` (for ``1.0``), ``2`` (for ``2``): as TorchJD writes a hyperparameter in a
    short name (trailing zeros of the decimals dropped)."""
    text = str(value)
    return text.rstrip("0") if "." in text else text
