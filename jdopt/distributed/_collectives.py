"""The collectives the engines use, over the default process group of ``torch.distributed``.

Every call counts the bytes it sends from this process (``bytes_sent``), which the
distributed benchmark reports next to DDP's own all-reduce.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

_sent = [0]


def bytes_sent() -> int:
    """Bytes this process has sent through these collectives since the last reset."""
    return _sent[0]


def reset_bytes_sent() -> None:
    _sent[0] = 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_gather_cat(tensor: Tensor, dim: int) -> Tensor:
    """Concatenates every process's ``tensor`` along ``dim``, in rank order.

    The sizes along ``dim`` may differ between processes (e.g. a smaller last batch); the other
    dimensions must match.
    """
    tensor = tensor.contiguous()
    size = torch.tensor([tensor.shape[dim]], device=tensor.device)
    sizes = [torch.empty_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    largest = max(counts)
    if tensor.shape[dim] < largest:
        pad = list(tensor.shape)
        pad[dim] = largest - tensor.shape[dim]
        tensor = torch.cat([tensor, tensor.new_zeros(pad)], dim=dim)
    parts = [torch.empty_like(tensor) for _ in counts]
    dist.all_gather(parts, tensor)
    _sent[0] += tensor.numel() * tensor.element_size() + size.numel() * size.element_size()
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, counts, strict=True)], dim=dim)


def local_sizes(count: int, device: torch.device) -> list[int]:
    """Every process's ``count``, in rank order."""
    size = torch.tensor([count], device=device)
    sizes = [torch.empty_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    _sent[0] += size.numel() * size.element_size()
    return [int(s) for s in sizes]


def all_reduce_(tensors: list[Tensor], *, mean: bool) -> None:
    """Sums (or averages) ``tensors`` over the processes, in place, in one flat buffer."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    _sent[0] += flat.numel() * flat.element_size()
    if mean:
        flat /= world_size()
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        t.copy_(part.reshape(t.shape))


def broadcast_(tensor: Tensor, src: int = 0) -> Tensor:
    """Makes every process hold rank ``src``'s ``tensor`` (in place)."""
    dist.broadcast(tensor, src)
    _sent[0] += tensor.numel() * tensor.element_size() if rank() == src else 0
    return tensor
