"""Counting the reads of device values on the host, on any device (a CPU included).

On a GPU, each such read waits for the work queued before it. PyTorch's own sync debug mode
(``torch.cuda.set_sync_debug_mode``) needs CUDA; :class:`HostReads` counts, on any device, the
operations that need a device value on the host: ``.item()`` and what calls it (``bool``,
``float``, ``int`` of a tensor), ``.tolist()`` and ``.numpy()``, and the operations whose output
size depends on the data (``nonzero``, ``masked_select``, boolean indexing, ``unique``, …).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# Operators that read a device value on the host: scalars, and outputs sized by the data.
# Under inference mode, ``item`` and ``is_nonzero`` reach the dispatcher themselves; outside,
# their ``_local_scalar_dense``.
READING_OPERATORS = {
    "aten._local_scalar_dense",
    "aten.item",
    "aten.is_nonzero",
    "aten.equal",
    "aten.nonzero",
    "aten.masked_select",
    "aten.masked_scatter",
    "aten._unique2",
    "aten.unique_dim",
    "aten.unique_consecutive",
    "aten.repeat_interleave",
    "aten._linalg_check_errors",
}
INDEXING = {"aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"}
READING_METHODS = {"tolist", "numpy"}  # read on the host without an operator on the CPU


def _is_reading(name: str, args: tuple[Any, ...]) -> bool:
    if name in READING_OPERATORS:
        return True
    if name in INDEXING:  # a boolean mask is turned into indices: nonzero
        return any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None
        )
    return False


class _Operators(TorchDispatchMode):
    def __init__(self, counts: Counter) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if _is_reading(name, args):
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


class _Methods(TorchFunctionMode):
    def __init__(self, counts: Counter) -> None:
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READING_METHODS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


class HostReads:
    """A context manager that counts the host reads inside it: ``total`` and ``counts`` by
    operator or method."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self._modes = (_Methods(self.counts), _Operators(self.counts))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __enter__(self) -> HostReads:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
