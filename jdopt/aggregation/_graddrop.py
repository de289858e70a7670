from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._bases import Aggregator
from ._checks import check_length, check_vector
from ._generator import GeneratorMixin
from ._repr import vector_suffix


class GradDrop(GeneratorMixin, Aggregator):
    """Gradient Sign Dropout (GradDrop): per coordinate, keep only one sign at random.

    For each column ``k`` (parameter), the sign purity ``P = ½(1 + Σᵢ Jᵢₖ / Σᵢ |Jᵢₖ|)`` is the
    share of positive mass (``½`` for an all-zero column). With ``U ~ Uniform(0, 1)`` drawn per
    coordinate, the positive entries of the column are kept when ``f(P) > U`` and the negative
    ones when ``f(P) < U``; the others are dropped. Row ``i`` lets the fraction ``leak[i]`` of
    itself through unmasked: ``update = Σᵢ (leakᵢ + (1 − leakᵢ) Mᵢ) ⊙ J[i]``.

    From Chen et al., *Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign
    Dropout*, NeurIPS 2020 (https://arxiv.org/abs/2010.06808).

    Properties: random (one uniform draw per column at every call); not weighted, not
    non-conflicting, not linear under scaling.

    Args:
        f: a function mapping the purities ``P`` (``[n]``, in ``[0, 1]``) to keep-positive
            probabilities of the same shape. ``None`` (default) means the identity, as in the
            paper.
        leak: ``[m]`` values in ``[0, 1]``, the unmasked fraction of each row. ``None``
            (default) means zeros (pure GradDrop). Empty ``leak`` fits a Jacobian with no
            rows (as in TorchJD); ``GradDrop`` with the default or an empty ``leak`` maps such a
            Jacobian to a zero update.
        generator: the ``torch.Generator`` to draw ``U`` from; its state is saved in
            ``state_dict``. ``None`` (default) uses PyTorch's global generator.
    """

    accepts_no_objectives = True

    def __init__(
        self,
        f: Callable[[Tensor], Tensor] | None = None,
        leak: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        if f is not None and not callable(f):
            raise TypeError(f"`f` should be a callable or None. Found {type(f).__name__}.")
        self.f = f
        self.register_buffer("leak", _check_leak(leak))

    def forward(self, jacobian: Tensor, /) -> Tensor:
        keep_positive = self._keep_positive(_purity(jacobian))
        device = self.draw_device(jacobian.device)
        shape = keep_positive.shape
        draw = torch.rand(shape, generator=self.generator, device=device, dtype=jacobian.dtype)
        draw = draw.to(jacobian.device)
        mask = ((keep_positive > draw) & (jacobian > 0)) | ((keep_positive < draw) & (jacobian < 0))
        leak = self._leak(jacobian).unsqueeze(1)
        return ((leak + (1 - leak) * mask) * jacobian).sum(dim=0)

    def _keep_positive(self, purity: Tensor) -> Tensor:
        if self.f is None:
            return purity
        result = self.f(purity)
        if not isinstance(result, Tensor) or result.shape != purity.shape:
            found = tuple(result.shape) if isinstance(result, Tensor) else type(result).__name__
            raise ValueError(
                f"`f` should map the purities (shape {tuple(purity.shape)}) to a tensor of the "
                f"same shape. Found {found}."
            )
        return result

    def _leak(self, jacobian: Tensor) -> Tensor:
        if self.leak is None:
            return jacobian.new_zeros(jacobian.shape[0])
        check_length(self.leak, "leak", jacobian.shape[0])
        return self.leak.to(dtype=jacobian.dtype, device=jacobian.device)

    def __str__(self) -> str:
        return f"GradDrop{vector_suffix(self.leak)}"


def _purity(jacobian: Tensor) -> Tensor:
    """``½(1 + Σᵢ Jᵢₖ / Σᵢ |Jᵢₖ|)`` per column, ``½`` for all-zero columns."""
    total = jacobian.sum(dim=0)
    mass = jacobian.abs().sum(dim=0)
    return 0.5 * (1 + total / torch.where(mass > 0, mass, 1.0))


def _check_leak(leak: Tensor | None) -> Tensor | None:
    if leak is None:
        return None
    leak = check_vector(leak, "leak", allow_empty=True)
    if leak.is_complex():
        raise TypeError(f"`leak` should be a real tensor. Found dtype {leak.dtype}.")
    if not leak.is_floating_point():
        leak = leak.to(torch.get_default_dtype())
    if ((leak < 0) | (leak > 1)).any():
        raise ValueError(
            f"`leak` should contain values in [0, 1] (the unmasked fraction of each row). Found "
            f"leak={leak.tolist()}."
        )
    return leak.detach().clone()
