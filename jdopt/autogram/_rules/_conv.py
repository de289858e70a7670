from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

from ..._linalg import product_with_transpose
from .._layout import Layout
from ._base import Rule, Use
from ._factors import inner_gramian, inner_workspace, per_objective_factors

Grads = Callable[[Use, Layout], Tensor]  # one call's per-objective weight gradients [R, numel]


class ConvRule(Rule):
    """``nn.Conv1d`` / ``nn.Conv2d`` (Conv1d is a Conv2d on a height-1 image).

    The weight's part of the Gramian has four exact ways (see ``_methods``), measured per
    shape because their speeds depend on the device's kernels more than on their operation
    counts: per-objective gradients from one grouped-convolution weight gradient (the rows and
    slices acting as groups, ``"grouped"``), from one weight gradient per row (``"looped"``),
    or from unfolded patches and a batched product (``"per_sample"``); or inner products of the
    unfolded patches and the output gradients (``"inner"``, offered when its kernels are no
    bigger than the gradients it avoids: layers with few positions). Materialised gradients
    are kept for the weighted gradient when they are no bigger than the output gradients;
    otherwise the weighted gradient is one ordinary convolution weight gradient. Stride,
    padding (including ``'same'`` and padding modes), dilation and groups are those of the
    forward pass.
    """

    gatherable = True
    computes_with = frozenset({"weight", "bias"})

    def __init__(self, module: nn.Module, names: Sequence[str]) -> None:
        super().__init__(module, names)
        self.two_d = isinstance(module, nn.Conv2d)
        m = module
        self.kernel, self.dilation, self.stride = (
            _two(v, 1) for v in (m.kernel_size, m.dilation, m.stride)
        )
        self._settings = (self.kernel, self.dilation, self.stride, m.padding, m.groups)

    def exact_for(self, uses: Sequence[Use]) -> bool:
        # Unbatched inputs ([C, *spatial], legal in PyTorch) have no batch dimension to use.
        spatial = 2 if self.two_d else 1
        return all(use.args[0].ndim == spatial + 2 for use in uses)

    def _prepared(self, use: Use, layout: Layout) -> tuple[Tensor, tuple[int, int], Tensor]:
        """The padded input ``[B·N, C, H, W]``, the padding left to apply, and the output
        gradients ``[S, B, N, O, H', W']``."""
        if "conv" in use.cache:
            return use.cache["conv"]
        m = self.module
        dtype = m.weight.dtype
        x = layout.rows(use.args[0]).to(dtype)  # [B, N, C, *spatial]
        x = x.reshape(-1, *x.shape[2:])
        padding = m.padding
        if m.padding_mode != "zeros" or m.padding == "same":
            # Pad exactly as the forward pass did (for 'same', the extra pixel goes last).
            mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
            x = F.pad(x, m._reversed_padding_repeated_twice, mode=mode)
            padding = (0,) * len(m.kernel_size)
        elif m.padding == "valid":
            padding = (0,) * len(m.kernel_size)
        dy = layout.grad_rows(use.grads[0]).to(dtype)  # [S, B, N, O, *spatial]
        if not self.two_d:
            x, dy = x.unsqueeze(2), dy.unsqueeze(4)
        use.cache["conv"] = (x, _two(padding, 0), dy)
        return use.cache["conv"]

    # ------------------------------------------------------------------ the quantities
    def gramian(self, uses: Sequence[Use], names: Sequence[str], layout: Layout) -> Tensor:
        total = None
        if "weight" in names:
            total, grads = self._weight_gramian(uses, layout)
            dy_size = sum(self._prepared(use, layout)[2].numel() for use in uses)
            if grads is not None and grads.numel() <= dy_size:
                uses[0].kept["weight"] = grads
        if "bias" in names:
            sums = self._bias_grads(uses, layout)
            part = sums @ sums.T
            total = part if total is None else total + part
        return total

    def consume(self, use: Use, names: Sequence[str], layout: Layout) -> tuple[Tensor, bool] | None:
        part = self.gramian([use], names, layout)
        done = "weight" not in self.names or "weight" in use.kept
        if done:  # the weighted gradient comes from kept per-objective gradients
            if "bias" in self.names:
                use.kept["bias"] = self._bias_grads([use], layout)
            del use.cache["conv"]
        return part, done

    def per_objective(self, uses: Sequence[Use], name: str, layout: Layout) -> Tensor:
        if name in uses[0].kept:
            return uses[0].kept[name]
        if name == "bias":
            return self._bias_grads(uses, layout)
        methods = {
            method: (lambda grads=grads: self._summed(uses, layout, grads))
            for method, grads in self._materialising().items()
        }
        return self.choose(("conv grads", *self._key(uses, layout)), self._device, methods)

    def weighted(self, uses: Sequence[Use], weights: Tensor, layout: Layout) -> dict[str, Tensor]:
        m = self.module
        # From kept per-objective gradients where there are some, else from the factors.
        grads = {
            name: (weights.to(kept.dtype) @ kept).reshape(self.param(name).shape)
            for name, kept in uses[0].kept.items()
            if name in self.names
        }
        missing = [name for name in self.names if name not in grads]
        for use in uses if missing else []:
            x, padding, dy = self._prepared(use, layout)
            combined = torch.einsum(
                "sb,sbn...->bn...", weights.reshape(dy.shape[:2]).to(dy.dtype), dy
            )
            combined = combined.reshape(-1, *combined.shape[2:])
            found = {}
            if "weight" in missing:
                shape = (m.out_channels, m.in_channels // m.groups, *self.kernel)
                found["weight"] = conv2d_weight(
                    x, shape, combined, self.stride, padding, self.dilation, m.groups
                ).reshape(m.weight.shape)
            if "bias" in missing:
                found["bias"] = combined.sum(dim=(0, 2, 3))
            for name, grad in found.items():
                grads[name] = grads[name] + grad if name in grads else grad
        return grads

    # ------------------------------------------------------------------ the weight's ways
    def _weight_gramian(self, uses: Sequence[Use], layout: Layout) -> tuple[Tensor, Tensor | None]:
        """The weight's Gramian, with the per-objective gradients when they were materialised."""
        methods: dict[str, Callable[[], tuple[Tensor, Tensor | None]]] = {}
        for name, grads in self._materialising().items():

            def materialised(grads: Grads = grads) -> tuple[Tensor, Tensor]:
                summed = self._summed(uses, layout, grads)
                return product_with_transpose(summed), summed

            methods[name] = materialised
        methods["per_sample"] = lambda: self._unfolded_gramian(uses, layout)
        dys = [self._prepared(use, layout)[2] for use in uses]
        s, b, n, o = dys[0].shape[:4]
        positions = n * sum(dy.shape[4:].numel() for dy in dys)
        g = self.module.groups
        workspace = g * inner_workspace(s, b, positions, o // g)
        if workspace <= s * b * self.module.weight.numel():

            def inner() -> tuple[Tensor, None]:
                parts = [inner_gramian(x, dy) for x, dy in self._patches(uses, layout)]
                return (parts[0] if len(parts) == 1 else torch.stack(parts).sum(dim=0)), None

            methods["inner"] = inner
        return self.choose(("conv", *self._key(uses, layout)), self._device, methods)

    @property
    def _device(self) -> torch.device:
        return self.module.weight.device

    def _key(self, uses: Sequence[Use], layout: Layout) -> tuple:
        shapes = [tuple(t.shape) for use in uses for t in self._prepared(use, layout)[::2]]
        return (*self._settings, *shapes, self.module.weight.dtype)

    def _materialising(self) -> dict[str, Grads]:
        return {"grouped": self._grouped, "looped": self._looped, "per_sample": self._unfolded}

    def _summed(self, uses: Sequence[Use], layout: Layout, grads: Grads) -> Tensor:
        """Per-objective weight gradients ``[R, numel]``, summed over the calls."""
        total = grads(uses[0], layout)
        for use in uses[1:]:
            total = total + grads(use, layout)
        return total

    def _grouped(self, use: Use, layout: Layout) -> Tensor:
        """One grouped weight gradient, a group per (row, group, slice)."""
        x, padding, dy = self._prepared(use, layout)
        s, b, n, o = dy.shape[:4]
        g = self.module.groups
        x = x.reshape(b, n, *x.shape[1:]).transpose(0, 1).reshape(n, -1, *x.shape[2:])
        dy = dy.reshape(s, b, n, g, o // g, *dy.shape[4:]).permute(2, 1, 3, 0, 4, 5, 6)
        dy = dy.reshape(n, -1, *dy.shape[-2:])
        shape = (b * g * s * (o // g), x.shape[1] // (b * g), *self.kernel)
        grads = conv2d_weight(x, shape, dy, self.stride, padding, self.dilation, b * g)
        grads = grads.reshape(b, g, s, o // g, -1).permute(2, 0, 1, 3, 4)
        return grads.reshape(s * b, -1)

    def _looped(self, use: Use, layout: Layout) -> Tensor:
        """One weight gradient per row, the slices acting as extra output channels."""
        x, padding, dy = self._prepared(use, layout)
        s, b, n, o = dy.shape[:4]
        g = self.module.groups
        grads = dy.new_empty(s, b, self.module.weight.numel())
        shape = (g * s * (o // g), x.shape[1] // g, *self.kernel)
        for row in range(b):
            # Output channels ordered (group, slice, channel): each group keeps its inputs.
            d = dy[:, row].reshape(s, n, g, o // g, *dy.shape[4:]).permute(1, 2, 0, 3, 4, 5)
            d = d.reshape(n, -1, *dy.shape[4:])
            part = conv2d_weight(
                x[row * n : (row + 1) * n], shape, d, self.stride, padding, self.dilation, g
            )
            grads[:, row] = part.reshape(g, s, o // g, -1).transpose(0, 1).reshape(s, -1)
        return grads.reshape(s * b, -1)

    def _unfolded_gramian(
        self, uses: Sequence[Use], layout: Layout
    ) -> tuple[Tensor, Tensor | None]:
        """The weight's Gramian from unfolded patches, the per-objective gradients made a few
        output channels at a time so that none is bigger than the patches they come from
        (returned only when made at once)."""
        factors = self._patches(uses, layout)  # per group: [B, P, c·k], [S, B, P, o/g]
        s, _, positions, width = factors[0][1].shape
        pieces = min(width, -(-(s * width) // positions))
        total, parts = None, []
        for x, dy in factors:
            for d in dy.chunk(pieces, dim=-1):
                grads = per_objective_factors(x, d)  # [R, o'·c·k]
                part = product_with_transpose(grads)
                total = part if total is None else total + part
                if pieces == 1:
                    parts.append(grads)
        if pieces > 1:
            return total, None
        return total, (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))

    def _unfolded(self, use: Use, layout: Layout) -> Tensor:
        """The Linear formula on unfolded patches, group by group."""
        parts = [per_objective_factors(x, dy) for x, dy in self._patches([use], layout)]
        if len(parts) == 1:
            return parts[0]
        r = parts[0].shape[0]
        return torch.cat([p.reshape(r, -1) for p in parts], dim=1)

    def _patches(self, uses: Sequence[Use], layout: Layout) -> list[tuple[Tensor, Tensor]]:
        """Per group: patches ``[B, N·T, c·k]`` and output gradients ``[S, B, N·T, o/g]``, the
        calls stacked along the positions."""
        xs, dys = [], []
        for use in uses:
            x, padding, dy = self._prepared(use, layout)
            s, b, n, o = dy.shape[:4]
            patches = F.unfold(x, self.kernel, self.dilation, padding, self.stride)
            xs.append(patches.transpose(1, 2).reshape(b, -1, patches.shape[1]))
            dys.append(dy.reshape(s, b, n, o, -1).transpose(3, 4).reshape(s, b, -1, o))
        x = xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)
        dy = dys[0] if len(dys) == 1 else torch.cat(dys, dim=2)
        g = self.module.groups
        return list(zip(x.chunk(g, dim=2), dy.chunk(g, dim=3), strict=True))

    def _bias_grads(self, uses: Sequence[Use], layout: Layout) -> Tensor:
        total = None
        for use in uses:
            dy = self._prepared(use, layout)[2]
            s, b, _n, o = dy.shape[:4]
            part = dy.sum(dim=(2, 4, 5)).reshape(s * b, o)
            total = part if total is None else total + part
        return total


def _two(value: tuple[int, ...] | int, fill: int) -> tuple[int, int]:
    """A Conv1d setting as the Conv2d setting of a height-1 image (``fill`` for the height)."""
    value = tuple(value) if isinstance(value, tuple) else (value,)
    return value if len(value) == 2 else (fill, value[0])  # type: ignore[return-value]
