"""The collectives the engines use, over the default process group of ``torch.distributed``.

Every call counts the bytes it sends from this process (``bytes_sent``), which the
distributed benchmark reports next to DDP's own all-reduce. Tensors stay on their device (NCCL
communicates CUDA tensors only); sizes are read on the host only where a caller does not know
them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

_sent = [0]


def bytes_sent() -> int:
    """Bytes this process has sent through these collectives since the last reset."""
    return _sent[0]


def reset_bytes_sent() -> None:
    """Sets the count of :func:`bytes_sent` back to 0 (e.g. before measuring one step)."""
    _sent[0] = 0


def count_sent(tensor: Tensor) -> None:
    """Counts ``tensor`` as sent by this process."""
    _sent[0] += tensor.numel() * tensor.element_size()


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group of more than one process is running (the
    steps are then exact Jacobian descent over the global batch)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of processes (1 outside ``torch.distributed``)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 outside ``torch.distributed``)."""
    return dist.get_rank() if is_distributed() else 0


def all_gather_cat(tensor: Tensor, dim: int, sizes: Sequence[int] | None = None) -> Tensor:
    """Concatenates every process's ``tensor`` along ``dim``, in rank order.

    The sizes along ``dim`` may differ between processes (e.g. a smaller last batch); the other
    dimensions must match.

    Args:
        tensor: this process's part.
        dim: the dimension to concatenate along.
        sizes: every process's size along ``dim``, in rank order, when the caller knows them
            (e.g. from :func:`gather_sizes`, once for many calls): this call then neither
            gathers them nor reads them on the host. ``None``: gathered here.
    """
    world = world_size()
    if sizes is None:
        sizes = gather_sizes([tensor.shape[dim]], tensor.device)[0]
    elif len(sizes) != world or sizes[rank()] != tensor.shape[dim]:
        raise ValueError(
            f"`sizes` {list(sizes)} should give each of the {world} processes' size along "
            f"dimension {dim}, this process's being {tensor.shape[dim]}."
        )
    rows = tensor.movedim(dim, 0)
    largest = max(sizes)
    if largest == 0:
        return tensor.new_empty(tensor.shape)
    if rows.shape[0] < largest:  # padded to the largest, cut after
        rows = torch.cat([rows, rows.new_zeros(largest - rows.shape[0], *rows.shape[1:])])
    rows = rows.contiguous()
    # One buffer; each process's rows land in their own view of it.
    gathered = rows.new_empty(world * largest, *rows.shape[1:])
    dist.all_gather(list(gathered.split(largest)), rows)
    count_sent(rows)
    if any(size != largest for size in sizes):
        gathered = torch.cat(
            [gathered.narrow(0, r * largest, size) for r, size in enumerate(sizes)]
        )
    return gathered if dim == 0 else gathered.movedim(0, dim).contiguous()


def gather_sizes(counts: Sequence[int], device: torch.device) -> list[list[int]]:
    """Every process's ``counts``, in one collective and one read on the host: entry ``i`` of
    the result lists ``counts[i]`` of every process, in rank order.

    Every process must give as many counts.
    """
    if not counts:
        return []
    local = torch.tensor(list(counts), dtype=torch.int64, device=device)
    gathered = local.new_empty(world_size(), len(counts))
    dist.all_gather(list(gathered.unbind(0)), local)
    count_sent(local)
    return gathered.T.tolist()


def all_reduce_(tensors: list[Tensor], *, mean: bool) -> None:
    """Sums (or averages) ``tensors`` over the processes, in place, in one flat buffer."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    count_sent(flat)
    if mean:
        flat /= world_size()
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        t.copy_(part.reshape(t.shape))
