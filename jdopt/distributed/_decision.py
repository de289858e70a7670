"""One decision for every process: rank 0 decides a step, and every process acts on it.

A process that skipped or raised on its own while the others waited in a collective would hang
them (NCCL waits forever), and a method that draws at random would give each process its own
weights. So only rank 0 decides — the weights or the update, a skip, or an error — and sends
its outcome with its values in one all-reduce of bytes, in which each other process may veto
the step (its own Gramian is not finite, say). Every process then returns the same values, or
skips, or raises the same error. Rank 0's error message follows in a second collective, only
when there is one.

The all-reduce sums bytes: rank 0 writes the header and the values, every process its own veto
byte, the rest is zeros, so the sum holds each part exactly.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from ._collectives import count_sent, rank, world_size

SOLVED, SKIPPED, FAILED = 0, 1, 2
_NONE = -1  # a value rank 0 does not have (e.g. no weights for a method that is not weighted)
# The dtypes a value may come back in (its code is its index): the values' own dtypes.
_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_AS_SENT = -2  # any other dtype comes back in the dtype it travelled in
_MESSAGE_LIMIT = 16_384  # bytes of rank 0's error message that travel


@dataclass(frozen=True)
class Slot:
    """A value rank 0 may send: ``numel`` entries, travelling as ``dtype`` (every process must
    give the same slots)."""

    numel: int
    dtype: torch.dtype


class Outcome(NamedTuple):
    """What every process learned: rank 0's values (``None`` when rank 0 skipped the step), or
    that some process vetoed the step (``vetoed``; ``values`` is then ``None``)."""

    values: list[Tensor | None] | None
    vetoed: bool


Decide = Callable[[], Sequence[Tensor | None] | None]


def decide_once(
    decide: Decide, slots: Sequence[Slot], *, veto: Tensor | None, device: torch.device
) -> Outcome:
    """Runs ``decide`` on rank 0 and gives its outcome to every process.

    Args:
        decide: rank 0's decision: one tensor per slot (``None`` for a value it does not
            have), or ``None`` to skip the step. It may raise: every process then raises the
            same error (rank 0 its own, the others one of the same type and message).
        slots: the values' sizes and how they travel.
        veto: a boolean scalar, on ``device``: this process cannot go on with the step. Read
            on the host only after the collective.
        device: where the collective runs (a CUDA device under NCCL).

    Returns:
        The values, rank 0's, identical on every process (rank 0 included), each flat and in
        the dtype rank 0 gave it; or ``vetoed`` when some process vetoed (whatever rank 0
        decided, and without raising its error).
    """
    status, error, values = _on_rank0(decide, slots) if rank() == 0 else (SOLVED, None, None)
    values = values or [None] * len(slots)
    message = b"" if error is None else _describe(error)
    header = [status, len(message), *(_code(v) for v in values)]
    buffer = _packed(header, veto, values, slots, device)
    dist.all_reduce(buffer)
    count_sent(buffer)
    start = len(header) * 8 + _padded(world_size())
    known = buffer[:start].cpu()  # the one read on the host
    status, length, *codes = known[: len(header) * 8].view(torch.int64).tolist()
    if bool(known[len(header) * 8 :].any()):
        return Outcome(None, True)
    if status == FAILED:
        text = _message(message, length, device)
        if error is not None:
            raise error
        raise _rebuilt(text)
    if status == SKIPPED:
        return Outcome(None, False)
    return Outcome(_values(buffer, start, slots, codes), False)


def _on_rank0(
    decide: Decide, slots: Sequence[Slot]
) -> tuple[int, Exception | None, list[Tensor | None] | None]:
    """Rank 0's status, error and values."""
    try:
        decided = decide()
        if decided is None:
            return SKIPPED, None, None
        return SOLVED, None, _checked(decided, slots)
    except Exception as error:
        return FAILED, error, None


def _packed(
    header: list[int],
    veto: Tensor | None,
    values: list[Tensor | None],
    slots: Sequence[Slot],
    device: torch.device,
) -> Tensor:
    """The bytes this process adds: its header (rank 0's; zeros elsewhere), its veto byte, its
    values (rank 0's), each part padded to 8 bytes."""
    me = rank()
    head = torch.tensor(header if me == 0 else [0] * len(header), dtype=torch.int64)
    flags = torch.zeros(_padded(world_size()), dtype=torch.uint8, device=device)
    if veto is not None:
        flags[me] = veto.to(device=device, dtype=torch.uint8)
    parts = [head.to(device).view(torch.uint8), flags]
    for slot, value in zip(slots, values, strict=True):
        size = slot.numel * slot.dtype.itemsize
        part = torch.zeros(_padded(size), dtype=torch.uint8, device=device)
        if value is not None:
            part[:size] = _bytes(value, slot, device)
        parts.append(part)
    return torch.cat(parts)


def _checked(decided: Sequence[Tensor | None], slots: Sequence[Slot]) -> list[Tensor | None]:
    if len(decided) != len(slots):
        raise ValueError(f"Decided {len(decided)} values for {len(slots)} slots.")
    for value, slot in zip(decided, slots, strict=True):
        if value is not None and value.numel() != slot.numel:
            raise ValueError(
                f"A decided value has {value.numel()} entries where {slot.numel} were expected."
            )
    return list(decided)


def _code(value: Tensor | None) -> int:
    if value is None:
        return _NONE
    return _DTYPES.index(value.dtype) if value.dtype in _DTYPES else _AS_SENT


def _padded(size: int) -> int:
    """``size`` up to a multiple of 8 bytes: every part starts aligned for any dtype."""
    return -(-size // 8) * 8


def _bytes(value: Tensor, slot: Slot, device: torch.device) -> Tensor:
    flat = value.detach().reshape(-1).to(device=device, dtype=slot.dtype).contiguous()
    return flat.view(torch.uint8)


def _values(
    buffer: Tensor, start: int, slots: Sequence[Slot], codes: list[int]
) -> list[Tensor | None]:
    values: list[Tensor | None] = []
    for slot, code in zip(slots, codes, strict=True):
        size = slot.numel * slot.dtype.itemsize
        if code == _NONE:
            values.append(None)
        else:
            value = buffer[start : start + size].view(slot.dtype)
            values.append(value if code == _AS_SENT else value.to(_DTYPES[code]))
        start += _padded(size)
    return values


def _describe(error: Exception) -> bytes:
    """``"<type name>\\n<message>"``, in UTF-8, cut to ``_MESSAGE_LIMIT`` bytes."""
    text = f"{type(error).__name__}\n{error}".encode()
    return text[:_MESSAGE_LIMIT]


def _message(message: bytes, length: int, device: torch.device) -> str:
    """Rank 0's error message, on every process (one broadcast of its bytes)."""
    data = torch.zeros(length, dtype=torch.uint8, device=device)
    if rank() == 0:
        data.copy_(torch.tensor(list(message), dtype=torch.uint8))
        count_sent(data)
    dist.broadcast(data, 0)
    return bytes(data.cpu().tolist()).decode(errors="replace")


def _rebuilt(text: str) -> Exception:
    """An error of rank 0's type (a built-in one; others become a RuntimeError that names it)
    with rank 0's message."""
    name, _, message = text.partition("\n")
    kind = getattr(builtins, name, None)
    error: Exception
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            error = kind(message)
        except Exception:  # a built-in error that takes other arguments
            error = RuntimeError(f"{name}: {message}")
    else:
        error = RuntimeError(f"{name}: {message}")
    if hasattr(error, "add_note"):  # Python 3.11+
        error.add_note(f"Raised on rank 0; process {rank()} raises it too (one decision).")
    return error
