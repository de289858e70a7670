"""The recurrences of ``nn.RNN``, ``nn.GRU`` and ``nn.LSTM``, unrolled forward and back by hand.

PyTorch's documented equations, per direction of a layer, with ``gi = W_ih x_t + b_ih`` and
``gh = W_hh h_{t-1} + b_hh``:

- RNN: ``h_t = act(gi + gh)`` (``tanh`` or ``relu``);
- GRU: ``r, z = σ(gi_r + gh_r), σ(gi_z + gh_z)``, ``n = tanh(gi_n + r ⊙ gh_n)``,
  ``h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}``;
- LSTM: ``i, f, g, o = σ, σ, tanh, σ (gi + gh)``, ``c_t = f ⊙ c_{t-1} + i ⊙ g``,
  ``h_t = o ⊙ tanh(c_t)``.

Everything is time-major and in position order (a reverse direction runs from the last
position to the first): inputs ``[T, B, i]``, states ``[B, H]``, gradients ``[S, T, B, ·]``
with ``S`` slices. Given a layer's outputs (the module's own, for its last layer), its gates
come at all positions at once; otherwise step by step. The backward pass carries the state's
gradient from step to step; what does not depend on the carry is computed for all positions
at once, so a step costs a few small kernels and no autograd node.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

Columns = list[Tensor]  # what a direction saves, [T, ...] each, the outputs last
Step = tuple[list[Tensor], list[Tensor]]  # (the carried state, what the position saves)


@dataclass
class Direction:
    """One direction of one layer, recomputed: the factors' inputs and what its backward pass
    needs (``coefficients``: the gate gradients per unit of the carried gradients)."""

    mode: str
    inputs: Tensor  # [T, B, i]: what W_ih multiplies
    previous: Tensor  # [T, B, H]: what W_hh multiplies
    coefficients: dict[str, Tensor]
    w_hh: Tensor
    reverse: bool

    def order(self) -> range:
        """The backward pass's order of positions."""
        steps = self.inputs.shape[0]
        return range(steps) if self.reverse else range(steps - 1, -1, -1)


def forward(
    mode: str,
    x: Tensor,
    weights: list[Tensor | None],
    start: list[Tensor],
    reverse: bool,
    out: Tensor | None = None,
) -> tuple[Tensor, list[Tensor], Direction]:
    """The outputs ``[T, B, H]``, the final states and the saved ``Direction``. Given the
    outputs ``out`` (the module's own), the gates come from them at all positions at once;
    otherwise step by step."""
    w_ih, w_hh, b_ih, b_hh = weights
    if b_hh is not None and mode != "GRU":  # the two biases add up
        b_ih = b_hh if b_ih is None else b_ih + b_hh
    gi = F.linear(x, w_ih, b_ih)
    order = range(len(gi) - 1, -1, -1) if reverse else range(len(gi))
    h0 = start[0].unsqueeze(0)
    given = out is not None
    if not given:
        columns = _loop(mode, gi, start, w_hh, b_hh, order)
        out = columns[-1]
    previous = torch.cat([out[1:], h0]) if reverse else torch.cat([h0, out[:-1]])
    if given:
        columns = _from_outputs(mode, gi, previous, out, start, weights, order)
    last = 0 if reverse else -1
    final = [out[last], columns[2][last]] if mode == "LSTM" else [out[last]]
    coefficients = _COEFFICIENTS[mode](mode, columns, previous, start, reverse)
    return out, final, Direction(mode, x, previous, coefficients, w_hh, reverse)


def _loop(
    mode: str, gi: Tensor, start: list[Tensor], w_hh: Tensor, b_hh: Tensor | None, order: range
) -> Columns:
    """Step by step."""
    step = {"GRU": _gru_step, "LSTM": _lstm_step}.get(mode, _rnn_step)
    steps, state, w = gi.unbind(0), list(start), w_hh.t()
    saved: list[list[Tensor]] = [[] for _ in steps]
    for t in order:
        state, saved[t] = step(mode, steps[t], state, w, b_hh)
    return [torch.stack(column) for column in zip(*saved, strict=True)]


def _from_outputs(
    mode: str,
    gi: Tensor,
    previous: Tensor,
    out: Tensor,
    start: list[Tensor],
    weights: list[Tensor | None],
    order: range,
) -> Columns:
    """From the outputs: one product for every position's ``W_hh h_{t-1}``;
    only the LSTM's cell state still needs a (one-kernel) step per position."""
    _, w_hh, _, b_hh = weights
    if mode in ("RNN_TANH", "RNN_RELU"):
        return [out]
    size = out.shape[-1]
    if mode == "GRU":
        gh = F.linear(previous, w_hh, b_hh)
        rz = torch.sigmoid(gi[..., : 2 * size] + gh[..., : 2 * size])
        gh_n = gh[..., 2 * size :]
        n = torch.tanh(torch.addcmul(gi[..., 2 * size :], rz[..., :size], gh_n))
        return [rz, n, gh_n, out]
    pre = torch.addmm(gi.flatten(0, 1), previous.flatten(0, 1), w_hh.t()).view(gi.shape)
    gates = torch.sigmoid(pre)
    cell = torch.tanh(pre[..., 2 * size : 3 * size])
    inflow, f = (gates[..., :size] * cell).unbind(0), gates[..., size : 2 * size].unbind(0)
    c, cs = start[1], [None] * len(inflow)
    for t in order:
        c = cs[t] = torch.addcmul(inflow[t], f[t], c)
    c = torch.stack(cs)
    return [gates, cell, c, torch.tanh(c), out]


def _rnn_step(mode: str, g: Tensor, state: list[Tensor], w: Tensor, b_hh: Tensor | None) -> Step:
    pre = torch.addmm(g, state[0], w)
    h = torch.tanh(pre) if mode == "RNN_TANH" else torch.relu(pre)
    return [h], [h]


def _gru_step(mode: str, g: Tensor, state: list[Tensor], w: Tensor, b_hh: Tensor | None) -> Step:
    (h,) = state
    size = h.shape[-1]
    gh = torch.mm(h, w) if b_hh is None else torch.addmm(b_hh, h, w)
    rz = torch.sigmoid(g[:, : 2 * size] + gh[:, : 2 * size])
    gh_n = gh[:, 2 * size :]
    n = torch.tanh(torch.addcmul(g[:, 2 * size :], rz[:, :size], gh_n))
    h = torch.addcmul(n, rz[:, size:], h - n)
    return [h], [rz, n, gh_n, h]


def _lstm_step(mode: str, g: Tensor, state: list[Tensor], w: Tensor, b_hh: Tensor | None) -> Step:
    h, c = state
    size = h.shape[-1]
    pre = torch.addmm(g, h, w)
    gates = torch.sigmoid(pre)
    cell = torch.tanh(pre[:, 2 * size : 3 * size])
    c = torch.addcmul(gates[:, size : 2 * size] * c, gates[:, :size], cell)
    tanh_c = torch.tanh(c)
    h = gates[:, 3 * size :] * tanh_c
    return [h, c], [gates, cell, c, tanh_c, h]


def _rnn_coefficients(
    mode: str, columns: Columns, previous: Tensor, start: list[Tensor], reverse: bool
) -> dict[str, Tensor]:
    (h,) = columns
    return {"pre": 1 - h * h if mode == "RNN_TANH" else (h > 0).to(h.dtype)}


def _gru_coefficients(
    mode: str, columns: Columns, previous: Tensor, start: list[Tensor], reverse: bool
) -> dict[str, Tensor]:
    rz, n, gh_n, _ = columns
    size = n.shape[-1]
    r, z = rz[..., :size], rz[..., size:]
    dn = (1 - z) * (1 - n * n)  # ∂h_t / ∂(gi_n + r ⊙ gh_n)
    dr = dn * gh_n * r * (1 - r)
    dz = (previous - n) * z * (1 - z)
    return {
        "input": torch.cat([dr, dz, dn], dim=-1),
        "hidden": torch.cat([dr, dz, dn * r], dim=-1),
        "z": z,
    }


def _lstm_coefficients(
    mode: str, columns: Columns, previous: Tensor, start: list[Tensor], reverse: bool
) -> dict[str, Tensor]:
    gates, cell, c, tanh_c, _ = columns
    size = c.shape[-1]
    i, f, o = gates[..., :size], gates[..., size : 2 * size], gates[..., 3 * size :]
    c0 = start[1].unsqueeze(0)
    c_prev = torch.cat([c[1:], c0]) if reverse else torch.cat([c0, c[:-1]])
    pre = [cell * i * (1 - i), c_prev * f * (1 - f), i * (1 - cell * cell), tanh_c * o * (1 - o)]
    return {"pre": torch.cat(pre, dim=-1), "cell": o * (1 - tanh_c * tanh_c), "f": f}


_COEFFICIENTS = {
    "RNN_TANH": _rnn_coefficients,
    "RNN_RELU": _rnn_coefficients,
    "GRU": _gru_coefficients,
    "LSTM": _lstm_coefficients,
}


def backward(
    direction: Direction, dout: Tensor, dfinal: list[Tensor | None]
) -> tuple[Tensor, Tensor]:
    """The gradients ``[S, T, B, G·H]`` at ``gi`` and at ``gh``, from those of the outputs
    ``dout [S, T, B, H]`` and of the final states (``None``: zero)."""
    carry = [dout.new_zeros(dout.shape[0], *dout.shape[2:]) if d is None else d for d in dfinal]
    step = {"GRU": _gru_back, "LSTM": _lstm_back}.get(direction.mode, _rnn_back)
    coefficients = {k: v.unbind(0) for k, v in direction.coefficients.items()}
    douts, w = dout.unbind(1), direction.w_hh
    saved: list[Tensor] = [None] * len(douts)  # type: ignore[list-item]
    for t in direction.order():
        carry, saved[t] = step(douts[t], carry, {k: v[t] for k, v in coefficients.items()}, w)
    grads = torch.stack(saved, dim=1)
    if direction.mode != "GRU":
        return grads, grads
    dh = torch.cat([grads, grads, grads], dim=-1)  # GRU: saved the gradients of h_t
    return dh * direction.coefficients["input"], dh * direction.coefficients["hidden"]


def _rnn_back(dout: Tensor, carry: list[Tensor], k: dict[str, Tensor], w: Tensor) -> Step:
    dpre = (dout + carry[0]) * k["pre"]
    return [dpre @ w], dpre


def _gru_back(dout: Tensor, carry: list[Tensor], k: dict[str, Tensor], w: Tensor) -> Step:
    dh = dout + carry[0]
    dgh = torch.cat([dh, dh, dh], dim=-1) * k["hidden"]
    return [(dgh @ w).addcmul_(dh, k["z"])], dh


def _lstm_back(dout: Tensor, carry: list[Tensor], k: dict[str, Tensor], w: Tensor) -> Step:
    dh = dout + carry[0]
    dc = torch.addcmul(carry[1], dh, k["cell"])
    dpre = torch.cat([dc, dc, dc, dh], dim=-1) * k["pre"]
    return [dpre @ w, dc * k["f"]], dpre
