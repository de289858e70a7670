"""ADMM's batch of rows and its schedule of KKT checks (see :mod:`._admm`)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ._options import SolverOptions as Options
from ._problem import violation


class Step(NamedTuple):
    """What an ADMM step and a check need: ``M``, the step's matrix and bias, the gradient
    ``ℓM − b`` at the bounds, and the ``[k]`` absolute tolerances of the check."""

    matrix: Tensor
    weight: Tensor
    bias: Tensor
    gradient_at_lower: Tensor
    slack: Tensor | None

    def rows(self, keep: Tensor) -> Step:
        """The step of the rows ``keep`` (the matrices are shared)."""
        slack = None if self.slack is None else self.slack[keep]
        return Step(self.matrix, self.weight, self.bias[keep], self.gradient_at_lower[keep], slack)


class Batch:
    """The rows ADMM still steps: ``t`` in place, until solved rows leave (:meth:`drop`)."""

    def __init__(self, t: Tensor, step: Step) -> None:
        self.out, self.t, self.step = t, t, step
        self.rows: Tensor | None = None  # of ``out``, once rows have left
        self.done = t  # set by every check, the last of which comes before the result
        self.magnitude = torch.empty_like(t)
        self.size = t.shape[0]

    def check(self) -> tuple[Tensor, Tensor]:
        """``([k] solved, [k] residual in tolerances)`` at ``z`` (:func:`._problem.violation`)."""
        excess = torch.clamp_min(self.t, 0, out=self.magnitude)  # z − ℓ
        gradient = torch.clone(self.step.gradient_at_lower).addmm_(excess, self.step.matrix)
        residual = violation(excess, gradient)
        self.done = residual <= self.step.slack
        return self.done, residual.div_(self.step.slack)

    def drop(self, done: Tensor) -> None:
        """The solved rows leave the batch (their values stay in the result)."""
        if self.rows is not None:
            self.out[self.rows[done]] = self.t[done]
        keep = (~done).nonzero().squeeze(1)
        self.rows = keep if self.rows is None else self.rows[keep]
        self.t, self.step, self.done = self.t[keep], self.step.rows(keep), self.done[keep]
        self.magnitude = torch.empty_like(self.t)

    def result(self) -> tuple[Tensor, Tensor]:
        """``(t, [k] solved)`` of every row."""
        if self.rows is None:
            return self.out, self.done
        self.out[self.rows] = self.t
        solved = torch.ones(self.size, dtype=torch.bool, device=self.t.device)
        solved[self.rows] = self.done
        return self.out, solved


class Schedule:
    """When ADMM checks its rows, and when it stops before its last step.

    Each check after the first comes when the slowest row should meet the tolerance, at most
    ``check_period`` steps on: its violation falls linearly at the rate measured between the
    last two checks, or at ``rate`` per step where that is faster or unknown. Once one row in
    ``few`` at most is left, ``patience`` more checks; with ``give_up``, the run stops when
    fewer than half the rows are solved and the middle one would not be in the steps left.
    """

    def __init__(self, first_check: int, options: Options, give_up: bool) -> None:
        self.next_check, self.options, self.give_up = first_check, options, give_up
        self.last, self.worst, self.middle = 0, math.inf, math.inf
        self.patience = options.patience

    def stop(
        self, iteration: int, level: Tensor, counts: tuple[int, int], max_iter: int, size: int
    ) -> bool:
        """After a check at ``iteration`` (``level``: each row's residual in tolerances) that
        found ``counts = (solved, rows)`` in a batch of the ``size`` rows: whether to stop, and
        when to check next."""
        options, steps = self.options, iteration - self.last
        solved, rows = counts
        worst = float(level.amax())
        gap = _gap(self.worst, worst, steps, options)
        if self.give_up and rows == size and 2 * solved < size:
            middle = float(level.median())
            if _too_slow(self.middle, middle, steps, max_iter - iteration):
                return True
            self.middle = middle
        self.worst, self.last, self.next_check = worst, iteration, iteration + gap
        if rows * options.few <= size:
            self.patience -= 1
            return self.patience < 0  # the last few rows converge slowly: leave them
        return False


def _gap(previous: float, worst: float, steps: int, options: Options) -> int:
    """Steps until a violation of ``worst`` tolerances (``previous`` at the check ``steps``
    before, infinite at the first) falls to 1, at the measured rate or ``rate``, whichever is
    slower; at most ``check_period``, also without progress (or NaN)."""
    decay = -math.log(options.rate)
    if not math.isinf(previous):
        measured = _decay(previous, worst, steps)
        if measured == 0:
            return options.check_period
        decay = min(decay, measured)
    steps_left = math.log(worst) / decay
    if not steps_left < options.check_period:
        return options.check_period
    return max(1, math.ceil(steps_left))


def _too_slow(previous: float, level: float, steps: int, steps_left: int) -> bool:
    """Whether a violation that went from ``previous`` to ``level`` (in tolerances) over
    ``steps`` steps would still be above 1 after ``steps_left`` more at that rate."""
    if math.isinf(previous):
        return False
    decay = _decay(previous, level, steps)
    return decay == 0 or math.log(level) / decay > steps_left


def _decay(previous: float, level: float, steps: int) -> float:
    """The linear rate, in nats per step, from ``previous`` to ``level`` over ``steps`` steps;
    0 without progress (NaN too)."""
    decay = math.log(previous / level) / steps
    return decay if decay > 0 else 0.0
