"""``nn.RNN`` (tanh, relu), ``nn.GRU`` and ``nn.LSTM``: every weight is a linear map.

In each layer and direction, the input-to-hidden weight ``W_ih`` maps every position's input
``x_t`` (the sequence, or the layer below's outputs) and the hidden-to-hidden weight ``W_hh``
the previous hidden state ``h_{t-1}`` to gate pre-activations: the per-sample gradient of each
is ``Σ_t dgate_t ⊗ input_t``, and the Linear formulas of ``_factors`` apply to (inputs,
gradients at the gate pre-activations), biases included.

The fused kernel hides the gates, so the rule recomputes them from the recorded inputs
(``x``, ``h_0``, ``c_0``), the module's weights and its output sequence (see
``_recurrence``), and back-propagates the recorded gradients of ``output``, ``h_n`` and
``c_n`` through the recurrence by hand, every slice at once: samples are independent, so one
pass gives every sample's gate gradients. Costs: the gates of the last layer at all positions
at once, a few small kernels per position and direction for the backward pass (and for the
forward pass of the layers below the last), and the Gramian of each weight from its factors.

The exact fallback handles the rest: unbatched inputs ``[T, I]``, ``PackedSequence`` inputs,
LSTM with ``proj_size > 0``, parametrised or extra parameters, and dropout between layers in
training mode (its random mask cannot be replayed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..._linalg import at_least_float32
from .._layout import Layout
from ._base import Rule, Use
from ._factors import (
    factor_gramian,
    per_objective_factors,
    position_sums,
    weight_gramian,
    weighted_dy,
    weighted_factors,
)
from ._fallback import LossesRule
from ._recurrence import Direction, backward, forward

_MODES = ("RNN_TANH", "RNN_RELU", "GRU", "LSTM")
Factors = dict[str, tuple[Tensor, Tensor]]  # "ih_l0" ↦ (inputs [B, T, i], grads [S, B, T, o])


class RecurrentRule(Rule):
    """The rule of one ``nn.RNN``, ``nn.GRU`` or ``nn.LSTM`` (see the module's docstring)."""

    def __init__(self, module: nn.RNNBase, names: Sequence[str]) -> None:
        super().__init__(module, names)
        self.batch_axis = 0 if module.batch_first else 1
        directions = ["", "_reverse"] if module.bidirectional else [""]
        self.cells = [f"_l{layer}{d}" for layer in range(module.num_layers) for d in directions]

    def exact_for(self, uses: Sequence[Use]) -> bool:
        m = self.module
        if m.dropout > 0 and m.training and m.num_layers > 1:
            return False
        outputs = 3 if m.mode == "LSTM" else 2
        return all(use.args[0].ndim == 3 and len(use.outputs) == outputs for use in uses)

    def graph_references(self, uses: Sequence[Use], name: str) -> int:
        # Unrolled on some backends: the hidden-to-hidden weights once per step.
        if "_hh_" in name:
            return sum(use.args[0].shape[1 - self.batch_axis] for use in uses)
        return len(uses)

    def gramian(self, uses: Sequence[Use], names: Sequence[str], layout: Layout) -> Tensor:
        total = None
        for key, (x, dy) in self._factors(uses, layout).items():
            weight, bias = f"weight_{key}" in names, f"bias_{key}" in names
            if not (weight or bias):
                continue
            if weight and dy.shape[2] > 1:
                part, grads = weight_gramian(x, dy, self.choose)
                if grads is not None:  # kept for `weighted`: far cheaper than (w ⊙ dY)ᵀ X
                    uses[0].kept[f"weight_{key}"] = grads
                if bias:
                    sums = position_sums(dy)
                    part = part + sums @ sums.T
            else:
                part = factor_gramian(x, dy, weight=weight, bias=bias, choose=self.choose)
            total = part if total is None else total + part
        return total

    def per_objective(self, uses: Sequence[Use], name: str, layout: Layout) -> Tensor:
        kind, key = name.split("_", 1)
        if kind == "weight":
            return self._weight_grads(uses, key, layout)
        return position_sums(self._factors(uses, layout)[key][1])

    def weighted(self, uses: Sequence[Use], weights: Tensor, layout: Layout) -> dict[str, Tensor]:
        grads = {}
        materialised = uses[0].kept
        for key, (x, dy) in self._factors(uses, layout).items():
            w = weights.reshape(dy.shape[:2]).to(dy.dtype)
            combined = weighted_dy(dy, w)
            name = f"weight_{key}"
            if name in materialised:  # [R, o·i]: far cheaper than (w ⊙ dY)ᵀ X again
                grads[name] = (w.reshape(-1) @ materialised[name]).reshape(self.param(name).shape)
            elif name in self.names:
                grads[name] = weighted_factors(x, combined)
            if f"bias_{key}" in self.names:
                grads[f"bias_{key}"] = combined.sum(dim=(0, 1))
        return grads

    def _weight_grads(self, uses: Sequence[Use], key: str, layout: Layout) -> Tensor:
        """The per-objective gradients ``[R, o·i]`` of ``weight_{key}``, kept for ``weighted``
        once materialised (their size is what the Gramian's cost model traded for time)."""
        kept = uses[0].kept
        name = f"weight_{key}"
        if name not in kept:
            kept[name] = per_objective_factors(*self._factors(uses, layout)[key])
        return kept[name]

    def _factors(self, uses: Sequence[Use], layout: Layout) -> Factors:
        """Every cell's factors, the calls stacked along the positions."""
        per_use = [self._use_factors(use, layout) for use in uses]
        if len(per_use) == 1:
            return per_use[0]
        return {
            key: tuple(torch.cat([f[key][i] for f in per_use], dim=1 + i) for i in range(2))
            for key in per_use[0]
        }

    def _use_factors(self, use: Use, layout: Layout) -> Factors:
        if "recurrent" not in use.cache:
            use.cache["recurrent"] = self._recompute(use, layout)
        return use.cache["recurrent"]

    def _recompute(self, use: Use, layout: Layout) -> Factors:
        """One call's factors: its recurrence recomputed, then back-propagated."""
        m = self.module
        dtype = at_least_float32(getattr(m, f"weight_ih{self.cells[0]}").dtype)
        x = use.args[0].to(dtype)
        x = x.transpose(0, 1).contiguous() if m.batch_first else x  # [T, B, I]
        count = m.num_layers * (2 if m.bidirectional else 1)
        states = [a.to(dtype) for a in use.args[1:]]
        while len(states) < (2 if m.mode == "LSTM" else 1):
            states.append(x.new_zeros(count, x.shape[1], m.hidden_size))
        grads = [None if g is None else g.to(dtype) for g in use.grads]
        if grads[0] is not None and m.batch_first:
            grads[0] = grads[0].transpose(1, 2)  # [S, T, B, D·H], time-major as recomputed
        # The module's own output sequence, unless modified in place since: the last layer's
        # gates then come without a step-by-step recurrence.
        output = None if use.outputs_modified()[0] else use.outputs[0].detach().to(dtype)
        if output is not None and m.batch_first:
            output = output.transpose(0, 1)
        with torch.no_grad():
            _, directions = recompute(m, x, states, self.cells, output)
            return self._back(directions, grads, layout)

    def _back(self, directions: list[Direction], grads: list, layout: Layout) -> Factors:
        """Back-propagates the outputs' gradients through the layers, last layer first."""
        m, size = self.module, self.module.hidden_size
        per_layer = 2 if m.bidirectional else 1
        first = next(g for g in grads if g is not None)
        x = directions[-1].inputs
        dout = grads[0]
        if dout is None:
            dout = x.new_zeros(first.shape[0], x.shape[0], x.shape[1], per_layer * size)
        factors = {}
        for layer in reversed(range(m.num_layers)):
            below = None
            for d in range(per_layer):
                index = layer * per_layer + d
                cell, direction = self.cells[index], directions[index]
                dfinal = [None if g is None else g[:, index] for g in grads[1:]]
                own = dout[..., d * size : (d + 1) * size]
                dgi, dgh = backward(direction, own, dfinal)
                factors[f"ih{cell}"] = _rows(direction.inputs, dgi, layout)
                factors[f"hh{cell}"] = _rows(direction.previous, dgh, layout)
                if layer > 0:
                    w_ih = getattr(m, f"weight_ih{cell}").detach().to(dgi.dtype)
                    part = dgi @ w_ih  # [S, T, B, I]: the gradient at the layer's inputs
                    below = part if below is None else below + part
            dout = below
        return factors


def recompute(
    m: nn.RNNBase,
    x: Tensor,
    states: list[Tensor],
    cells: list[str],
    output: Tensor | None = None,
) -> tuple[list[Tensor], list[Direction]]:
    """The module's outputs ``[output, h_n(, c_n)]`` (time-major) and every direction's saved
    recurrence, from the inputs ``x [T, B, I]``, the initial states ``[L·D, B, H]`` and, if
    known, the module's output sequence ``[T, B, D·H]``."""
    per_layer = 2 if m.bidirectional else 1
    finals: list[list[Tensor]] = [[] for _ in states]
    directions = []
    for layer in range(m.num_layers):
        outs = []
        for d in range(per_layer):
            index = layer * per_layer + d
            weights = [_weight(m, f"{p}{cells[index]}", x.dtype) for p in _PARTS]
            start = [s[index] for s in states]
            known = None
            if output is not None and layer == m.num_layers - 1:
                known = output[..., d * m.hidden_size : (d + 1) * m.hidden_size]
            out, last, direction = forward(m.mode, x, weights, start, d == 1, known)
            for final, value in zip(finals, last, strict=True):
                final.append(value)
            directions.append(direction)
            outs.append(out)
        x = outs[0] if per_layer == 1 else torch.cat(outs, dim=-1)
    return [x, *(torch.stack(f) for f in finals)], directions


_PARTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _weight(m: nn.RNNBase, name: str, dtype: torch.dtype) -> Tensor | None:
    weight = getattr(m, name, None)
    return None if weight is None else weight.detach().to(dtype)


def _rows(inputs: Tensor, grads: Tensor, layout: Layout) -> tuple[Tensor, Tensor]:
    """Time-major ``[T, B, i]`` and ``[S, T, B, o]`` as ``[B', N·T, i]`` and ``[S, B', N·T, o]``."""
    x = layout.rows(inputs, axis=1)
    dy = layout.grad_rows(grads, axis=1)
    return x.reshape(x.shape[0], -1, x.shape[-1]), dy.reshape(*dy.shape[:2], -1, dy.shape[-1])


def make_recurrent_rule(module: nn.RNNBase, names: Sequence[str]) -> Rule:
    """The closed form, or the losses' fallback for LSTM projections or unknown parameters
    (the final states have the batch second: the local fallback cannot split them)."""
    if getattr(module, "proj_size", 0) > 0 or module.mode not in _MODES:
        return LossesRule(module, names)
    directions = ["", "_reverse"] if module.bidirectional else [""]
    parts = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if module.bias else [])
    expected = {
        f"{p}_l{layer}{d}" for p in parts for layer in range(module.num_layers) for d in directions
    }
    direct = {name for name, param in module._parameters.items() if param is not None}
    return RecurrentRule(module, names) if direct == expected else LossesRule(module, names)
