"""Every tunable number of the native dual-cone solver, in one place."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SolverOptions:
    """The tunables of the native solver, and the switches that force a plan.

    Measured on CPU only (2 to 16 threads, MKL, torch 2.3–2.13), on UPGrad's Gramians: random
    Jacobians of every rank with ridges 1e-4 to 1e-8 and per-sample Gramians of MLPs, CNNs and
    Transformers, m = 2 to 4096 (``benchmarks/dual_cone.py``, ``benchmarks/iwrm.py``). A GPU,
    where each small operation costs a launch and float32 products are much faster, will want
    its own values. None changes the answer beyond the solver's tolerance: they choose which
    stages run (the plan, :func:`._plan.plan`) and how long each takes. A fraction is of m,
    and refers to the participation ratio ``trace²/‖G‖²_F`` of the unit-diagonal ``G``: small
    when ``G`` is close to low-rank plus a ridge, where the dual's free sets lie in the flat
    part of ``G⁻¹``.
    """

    # The plan. With check_once (the default on accelerators: see for_device), a first
    # attempt of fixed length reads nothing on the host but the final check: ADMM's
    # once_admm_steps (float32, float64) or, below admm_sizes, FISTA's guess and
    # once_pivoting_steps masked pivoting steps. Rows that fail the check go on with the plan.
    check_once: bool = False
    once_admm_steps: tuple[int, int] = (40, 20)
    once_pivoting_steps: int = 4
    admm_sizes: tuple[int, int] = (32, 4096)  # m where ADMM goes first; (1, 0): never
    small_size: int = 24  # up to it: float64 guess, masked full-size pivoting solves
    dual_fraction: float = 0.4  # the dual below it; 0: never
    primal_admm_fraction: float = 0.3  # from it to dual_fraction: the primal's ADMM may give up
    dual_max_condition: float = 1e8  # no dual if G's condition number may exceed it
    long_guess_size: int = 384  # up to it: restarted float32 guess; beyond: float32 pivoting
    # Tolerances: guaranteed relative KKT residual, float64 and float32 stages' (relative to
    # the scaled problems; the float32 one also makes a start's coordinates active).
    kkt_tolerance: float = 1e-7
    tolerance: float = 1e-8
    rough_tolerance: float = 1e-5
    # Singular G (squared Cholesky pivot below `singular`): a ridge of `ridge` diag(G) (at
    # least `ridge_floor` max diag(G)), up to 10**escalations times more for an indefinite one,
    # CG solves of at most `singular_cg_steps`, then `refinements` proximal-point steps.
    singular: float = 1e-9
    ridge: float = 1e-9
    ridge_floor: float = 1e-6
    escalations: int = 5
    singular_cg_steps: int = 30
    refinements: int = 2
    # ADMM (see ._admm): penalties, over-relaxation, float32 steps (half as many float64).
    dual_penalty: float = 0.5
    penalty_range: tuple[float, float] = (0.1, 1.0)  # the primal's: mean squared pivot
    relaxation: float = 1.8
    admm_steps: int = 80
    # ... its checks (one costs about two steps at m = 64): the first (later below
    # fast_penalty, sooner from a warm start or in float64), then at the measured rate (or
    # `rate` per step), at most `check_period` steps apart.
    first_check: int = 20
    slow_first_check: int = 30
    fast_penalty: float = 0.8
    check_period: int = 10
    float64_first_check: int = 3
    rate: float = 0.75
    float32_tolerance: float = 1e-6  # the float32 phase's; float64 follows if it solved
    enough: float = 0.5  # this fraction of the rows
    few: int = 8  # once one row in `few` is left, `patience` more checks
    patience: int = 2
    diagonal_size: int = 128  # from this m, diagonal bounds scale M's rows (fewer products)
    # FISTA (see ._fista): (largest m, steps) in float64; float32 (steps, restart period) up
    # to long_guess_size, then short; settled when one coordinate per `settled` rows changes.
    small_guess_steps: tuple[tuple[int, int], ...] = ((12, 10), (24, 30))
    long_guess_steps: tuple[int, int] = (100, 20)
    short_guess_steps: int = 10
    settled: int = 32
    squaring_size: int = 256  # up to it, the step from ‖M⁸‖^(1/8); beyond, power iteration
    # Pivoting (see ._pivoting): steps (+ m/2; float32 + m/4), swaps without progress allowed,
    # gathered Cholesky up to `direct_size` free coordinates (m ≤ `padded_size`), else CG;
    # the active-set method's steps (× m).
    pivoting_steps: int = 30
    rough_pivoting_steps: int = 20
    backup_chances: int = 3
    direct_size: int = 64
    padded_size: int = 192
    active_set_steps: int = 4
    # CG (see ._linear): tight solves' iterations (+ … · m), then Cholesky; float64 solves by
    # float32 corrections: rounds, their reduction, the progress below which they stop.
    cg_steps: int = 50
    cg_steps_per_size: int = 2
    cg_max_iter: int | None = None  # overrides the two above (singular G)
    refinement_rounds: int = 6
    refinement_reduction: float = 1e-3
    stalled: float = 0.1

    def most_cg_steps(self, m: int) -> int:
        """The most iterations of a tight CG solve of size ``m``."""
        if self.cg_max_iter is not None:
            return self.cg_max_iter
        return self.cg_steps + self.cg_steps_per_size * m


DEFAULT = SolverOptions()
ON_ACCELERATORS = SolverOptions(check_once=True)


def for_device(device: torch.device) -> SolverOptions:
    """The default options on ``device``: :data:`DEFAULT` on CPUs; on accelerators, where
    each read of a device value on the host waits for the work queued before it, the same
    with ``check_once``."""
    return DEFAULT if device.type == "cpu" else ON_ACCELERATORS
