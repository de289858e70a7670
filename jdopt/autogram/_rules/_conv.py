"""The closed form of ``nn.Conv1d`` and ``nn.Conv2d``: which way runs, on which factors.

The kernels that make per-objective weight gradients are in ``_conv_grads``; inner products of
unfolded patches, in ``_factors``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._linalg import at_least_float32, product_with_transpose
from .._layout import Layout
from . import _conv_grads as kernels
from ._base import Rule, Use
from ._conv_grads import Geometry, Prepared
from ._factors import inner_gramian, inner_workspace

Grads = Callable[[Prepared], Tensor]  # one call's per-objective weight gradients [R, numel]
Way = Callable[[], tuple[Tensor, Tensor | None]]  # the weight's Gramian, and its gradients


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
        kernel, dilation, stride = (_two(v, 1) for v in (m.kernel_size, m.dilation, m.stride))
        self.geometry = Geometry(kernel, dilation, stride, m.groups)
        self._settings = (kernel, dilation, stride, m.padding, m.groups)

    def exact_for(self, uses: Sequence[Use]) -> bool:
        # Unbatched inputs ([C, *spatial], legal in PyTorch) have no batch dimension to use.
        spatial = 2 if self.two_d else 1
        return all(use.args[0].ndim == spatial + 2 for use in uses)

    def _prepared(self, use: Use, layout: Layout) -> Prepared:
        """The padded input ``[B·N, C, H, W]``, the padding left to apply, and the output
        gradients ``[S, B, N, O, H', W']``."""
        if "conv" in use.cache:
            return use.cache["conv"]
        m = self.module
        dtype = at_least_float32(m.weight.dtype)
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

    def _all_prepared(self, uses: Sequence[Use], layout: Layout) -> list[Prepared]:
        return [self._prepared(use, layout) for use in uses]

    # ------------------------------------------------------------------ the quantities
    def gramian(self, uses: Sequence[Use], names: Sequence[str], layout: Layout) -> Tensor:
        total = None
        if "weight" in names:
            total, grads = self._weight_gramian(uses, layout)
            dy_size = sum(dy.numel() for _, _, dy in self._all_prepared(uses, layout))
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
        # From kept per-objective gradients where there are some, else from the factors.
        grads = {
            name: (weights.to(kept.dtype) @ kept).reshape(self.param(name).shape)
            for name, kept in uses[0].kept.items()
            if name in self.names
        }
        missing = [name for name in self.names if name not in grads]
        for use in uses if missing else []:
            for name, grad in self._weighted_call(use, weights, layout, missing).items():
                grads[name] = grads[name] + grad if name in grads else grad
        return grads

    def _weighted_call(
        self, use: Use, weights: Tensor, layout: Layout, names: list[str]
    ) -> dict[str, Tensor]:
        """One call's weighted gradients of ``names``: an ordinary weight gradient of the
        weighted output gradients."""
        m = self.module
        x, padding, dy = self._prepared(use, layout)
        combined = torch.einsum("sb,sbn...->bn...", weights.reshape(dy.shape[:2]).to(dy.dtype), dy)
        combined = combined.reshape(-1, *combined.shape[2:])
        found = {}
        if "weight" in names:
            shape = (m.out_channels, m.in_channels // m.groups, *self.geometry.kernel)
            grad = self.geometry.weight_grad(x, shape, combined, padding, m.groups)
            found["weight"] = grad.reshape(m.weight.shape)
        if "bias" in names:
            found["bias"] = combined.sum(dim=(0, 2, 3))
        return found

    # ------------------------------------------------------------------ the weight's ways
    def _weight_gramian(self, uses: Sequence[Use], layout: Layout) -> tuple[Tensor, Tensor | None]:
        """The weight's Gramian, with the per-objective gradients when they were materialised."""
        methods: dict[str, Way] = {}
        for name, grads in self._materialising().items():

            def materialised(grads: Grads = grads) -> tuple[Tensor, Tensor]:
                summed = self._summed(uses, layout, grads)
                return product_with_transpose(summed), summed

            methods[name] = materialised
        calls = self._all_prepared(uses, layout)
        methods["per_sample"] = lambda: kernels.unfolded_gramian(self.geometry, calls)
        if self._inner_affordable(calls):
            methods["inner"] = lambda: (self._inner_gramian(calls), None)
        return self.choose(("conv", *self._key(uses, layout)), self._device, methods)

    def _inner_affordable(self, calls: Sequence[Prepared]) -> bool:
        """Whether the inner products' kernels are no bigger than the gradients they avoid."""
        s, b, n, o = calls[0][2].shape[:4]
        positions = n * sum(dy.shape[4:].numel() for _, _, dy in calls)
        g = self.geometry.groups
        workspace = g * inner_workspace(s, b, positions, o // g)
        return workspace <= s * b * self.module.weight.numel()

    def _inner_gramian(self, calls: Sequence[Prepared]) -> Tensor:
        parts = [inner_gramian(x, dy) for x, dy in kernels.patches(self.geometry, calls)]
        return parts[0] if len(parts) == 1 else torch.stack(parts).sum(dim=0)

    @property
    def _device(self) -> torch.device:
        return self.module.weight.device

    def _key(self, uses: Sequence[Use], layout: Layout) -> tuple:
        shapes = [tuple(t.shape) for use in uses for t in self._prepared(use, layout)[::2]]
        return (*self._settings, *shapes, self.module.weight.dtype)

    def _materialising(self) -> dict[str, Grads]:
        geometry, numel = self.geometry, self.module.weight.numel()
        return {
            "grouped": lambda call: kernels.grouped(geometry, call),
            "looped": lambda call: kernels.looped(geometry, call, numel),
            "per_sample": lambda call: kernels.unfolded(geometry, call),
        }

    def _summed(self, uses: Sequence[Use], layout: Layout, grads: Grads) -> Tensor:
        """Per-objective weight gradients ``[R, numel]``, summed over the calls."""
        total = grads(self._prepared(uses[0], layout))
        for use in uses[1:]:
            total = total + grads(self._prepared(use, layout))
        return total

    def _bias_grads(self, uses: Sequence[Use], layout: Layout) -> Tensor:
        return kernels.bias_grads([dy for _, _, dy in self._all_prepared(uses, layout)])


def _two(value: tuple[int, ...] | int, fill: int) -> tuple[int, int]:
    """A Conv1d setting as the Conv2d setting of a height-1 image (``fill`` for the height)."""
    value = tuple(value) if isinstance(value, tuple) else (value,)
    return value if len(value) == 2 else (fill, value[0])  # type: ignore[return-value]
