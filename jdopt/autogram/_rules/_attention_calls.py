"""How ``MultiheadAttention``'s projections are recorded (see ``_attention``).

A forward pre-hook enters a ``TorchFunctionMode`` that receives the module's call of
``F.multi_head_attention_forward`` and runs torch's own code for it, re-linked so that its
``linear`` (and that of its in-projection helpers) records each call: its input, its output and
the rows of the parameters it used. The forward hook (run even when the forward raises) leaves
the mode. Nothing of the module or of ``torch`` is modified, and the attention runs as it is.

A mode cannot simply watch ``F.linear`` inside the function: torch hands the whole call of
``F.multi_head_attention_forward`` to the mode, and runs its body with the mode switched off.

The modes below ours (``torch.set_default_device``'s, always at the bottom of the stack, or the
user's) see the call too: torch's function hands it on to them, and the one that runs it runs
torch's own code, unrecorded. So the mode passes the call on down the stack unchanged, over a
second mode put under them all, which runs the re-linked code where torch's own would have run.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._C import _len_torch_function_stack
from torch.autograd.graph import get_gradient_edge
from torch.overrides import TorchFunctionMode, _pop_mode, _push_mode
from torch.utils.hooks import RemovableHandle

from ._base import Use

Rows = tuple[str, int]  # a parameter's name and the first of the rows a call used


@dataclass(frozen=True)
class Projection:
    """One linear call: the rows of the weight and of the bias it used (``None``: no bias)."""

    weight: Rows
    bias: Rows | None
    width: int  # the number of rows (output features)


@dataclass
class AttentionUse(Use):
    """One call of the module: its projections' inputs ``[T, B, i]`` (``args``), their outputs,
    and the rows each used."""

    projections: list[Projection] = field(default_factory=list)
    complete: bool = True  # False: the rule could not record every projection of the call


class ProjectionRecorder:
    """Records the projections of one ``MultiheadAttention``'s calls into a list of uses."""

    def __init__(self, module: nn.MultiheadAttention) -> None:
        self.module = module
        # Every parameter, trainable or not, by the name the engine gives it (its first).
        self._owner = {id(p): n for n, p in module.named_parameters()}
        self._forward = _relinked_attention(self._linear)
        self._recording: list[_Recording] = []  # the call being run (one, or none)

    def register(self, uses: list[Use]) -> list[RemovableHandle]:
        modes: list[TorchFunctionMode] = []

        def enter(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if torch.is_grad_enabled():
                self._recording.append(_Recording())
                modes.append(_Intercept(self._forward))
                modes[-1].__enter__()

        def leave(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            if modes:
                modes.pop().__exit__(None, None, None)
                use = self._recording.pop().use()
                if use.outputs or not use.complete:
                    uses.append(use)

        return [
            self.module.register_forward_pre_hook(enter, with_kwargs=True),
            self.module.register_forward_hook(
                leave, with_kwargs=True, prepend=True, always_call=True
            ),
        ]

    def _linear(self, input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        output = F.linear(input, weight, bias)
        if self._recording:
            recording = self._recording[-1]
            recording.seen = True
            rows, bias_rows = self._rows(weight), None if bias is None else self._rows(bias)
            if rows is None or (bias is not None and bias_rows is None):
                recording.complete = False
            elif output.requires_grad:
                recording.add(Projection(rows, bias_rows, weight.shape[0]), input, output)
        return output

    def _rows(self, tensor: Tensor) -> Rows | None:
        """The parameter that ``tensor`` is, or whose block of rows it is, and the first row."""
        base = tensor._base if tensor._is_view() else tensor
        name = self._owner.get(id(base))
        if name is None or tensor.shape[1:] != base.shape[1:]:
            return None
        offset = tensor.storage_offset() - base.storage_offset()
        if tensor.stride() != base.stride() or offset % base.stride(0):
            return None
        return name, offset // base.stride(0)


@dataclass
class _Recording:
    """What one call's projections recorded so far."""

    projections: list[Projection] = field(default_factory=list)
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)
    versions: list[tuple[int, int]] = field(default_factory=list)
    complete: bool = True  # False: a linear call used a weight the rule could not place
    seen: bool = False  # whether torch's attention function ran recorded at all

    def add(self, projection: Projection, x: Tensor, y: Tensor) -> None:
        # Detached: the Gramian must not hold on to the forward graph. The out-projection's
        # input is [T·B, E], the in-projections' [T, B, E].
        inputs = x.detach()
        if x.ndim == 2 and self.inputs:
            inputs = inputs.reshape(-1, self.inputs[0].shape[1], x.shape[-1])
        self.projections.append(projection)
        self.inputs.append(inputs)
        self.outputs.append(y)
        self.versions.append((x._version, y._version))

    def use(self) -> AttentionUse:
        # An output modified in place (the module's own output is a view of the
        # out-projection's) is read at its edge; the projections' outputs are never views.
        edges = [None if y._is_view() else get_gradient_edge(y) for y in self.outputs]
        versions = [v for v, _ in self.versions] + [v for _, v in self.versions]
        return AttentionUse(
            tuple(self.inputs),
            self.outputs,
            versions,
            edges=edges,
            projections=self.projections,
            complete=self.complete and self.seen,
        )


class _Intercept(TorchFunctionMode):
    """Sends ``F.multi_head_attention_forward`` on to the modes below it, with ``_Run`` under
    them all."""

    def __init__(self, forward: Callable) -> None:
        super().__init__()
        self.forward = forward

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.multi_head_attention_forward:
            with _at_the_bottom(_Run(self.forward)):
                return func(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


class _Run(TorchFunctionMode):
    """Runs ``F.multi_head_attention_forward`` as ``forward`` (torch's code, re-linked), when
    every other mode has let the call through."""

    def __init__(self, forward: Callable) -> None:
        super().__init__()
        self.forward = forward

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.multi_head_attention_forward:
            return self.forward(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


@contextmanager
def _at_the_bottom(mode: TorchFunctionMode) -> Iterator[None]:
    """``mode`` under the modes on torch's stack, then removed."""
    above = [_pop_mode() for _ in range(_len_torch_function_stack())]
    _push_mode(mode)
    for other in reversed(above):
        _push_mode(other)
    try:
        yield
    finally:  # the stack without `mode`, found by identity
        stack = [_pop_mode() for _ in range(_len_torch_function_stack())]
        for other in reversed(stack):
            if other is not mode:
                _push_mode(other)


def _relinked_attention(linear: Callable) -> Callable:
    """``F.multi_head_attention_forward`` whose projections call ``linear``: torch's own
    function, with a copy of its globals where ``linear`` and the in-projection helpers that
    call it are replaced. (The copy's name for itself stays torch's function: an override
    that another mode or a tensor subclass makes of the call sees torch's function and runs
    it unrecorded, and the call goes to the fallback.)"""
    namespace = dict(vars(F))
    namespace["linear"] = linear
    for name in ("_in_projection_packed", "_in_projection"):
        helper = getattr(F, name, None)  # another torch may not have it: then unrecorded
        if isinstance(helper, types.FunctionType):
            namespace[name] = _with_globals(helper, namespace)
    return _with_globals(F.multi_head_attention_forward, namespace)


def _with_globals(function: types.FunctionType, namespace: dict) -> types.FunctionType:
    copy = types.FunctionType(
        function.__code__, namespace, function.__name__, function.__defaults__, function.__closure__
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    return copy
