"""Frozen sampler objects: `FlowDPMSolver(order=2, flow_shift=3.0).sample(velocity, noise, num_steps=20)`.

They hold options only; `sample` is a pure function of its arguments (no `set_timesteps`, no step index).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from flow_dpm.solvers import (
    FinalStep,
    SolverType,
    StepCallback,
    VelocityField,
    check_solver_args,
    sample_euler,
    sample_flow_dpm,
)
from flow_dpm.solvers import sample_heun as _sample_heun
from flow_dpm.timesteps import T_END, Discretization, check_shift, flow_timesteps


@dataclass(frozen=True)
class FlowDPMSolver:
    """Flow-DPM-Solver (DPM-Solver++ multistep on the flow ODE). Defaults are Sana's official settings.

    Attributes:
        order: 1, 2 or 3 (Sana: 2).
        flow_shift: time shift s > 0 (Sana: 3.0; 4.0 for 0.6B-1024; 6.0 for 4K).
        solver_type: `"midpoint"` (Sana, diffusers) or `"heun"` second-order formula.
        lower_order_final: lower the order on the last steps (Sana: True).
        discretization: `"time_uniform_flow"` (Sana-exact), `"logsnr_uniform"`, `"uniform"` or `"flow_match_euler"`.
        t_end: unshifted distance of the first grid point from t = 1 (Sana: 1e-3).
        final_step: `"data"` (Sana-exact: the last x0 prediction) or `"adams2"` (second order, same NFE).
    """

    order: int = 2
    flow_shift: float = 3.0
    solver_type: SolverType = "midpoint"
    lower_order_final: bool = True
    discretization: Discretization = "time_uniform_flow"
    t_end: float = T_END
    final_step: FinalStep = "data"

    def __post_init__(self) -> None:
        check_solver_args(self.order, self.solver_type)
        flow_timesteps(1, self.flow_shift, discretization=self.discretization, t_end=self.t_end)  # validates

    def timesteps(self, num_steps: int) -> Tensor:
        """(num_steps + 1,) float64 grid from ~1 down to exactly 0."""
        return flow_timesteps(num_steps, self.flow_shift, discretization=self.discretization, t_end=self.t_end)

    def sample(
        self, velocity: VelocityField, noise: Tensor, num_steps: int = 20, *, callback: StepCallback | None = None
    ) -> Tensor:
        """Integrate from `noise` (B, ...) at t ≈ 1 to t = 0 with exactly `num_steps` velocity evaluations."""
        return sample_flow_dpm(
            velocity,
            noise,
            self.timesteps(num_steps),
            order=self.order,
            solver_type=self.solver_type,
            lower_order_final=self.lower_order_final,
            final_step=self.final_step,
            callback=callback,
        )


# The most accurate setting at 14-20 NFE in benchmarks/sampler_convergence.py (docs/flow_dpm.md): Taylor-exact
# third order and a second-order step into t = 0, on Sana's grid, same NFE as the default. Not Sana-exact.
RECOMMENDED = FlowDPMSolver(order=3, final_step="adams2")


@dataclass(frozen=True)
class _OneStepSampler:
    """Options shared by the single-step reference samplers: a shift and a grid."""

    flow_shift: float = 3.0
    discretization: Discretization = "uniform"

    def __post_init__(self) -> None:
        check_shift(self.flow_shift)
        flow_timesteps(1, self.flow_shift, discretization=self.discretization)  # validates

    def timesteps(self, num_steps: int) -> Tensor:
        """(num_steps + 1,) float64 grid from 1 down to exactly 0."""
        return flow_timesteps(num_steps, self.flow_shift, discretization=self.discretization)


@dataclass(frozen=True)
class FlowEuler(_OneStepSampler):
    """Flow-Euler, as native Sana runs it: diffusers' FlowMatchEuler update on its grid ("flow_match_euler");
    N evaluations for N steps."""

    discretization: Discretization = "flow_match_euler"

    def sample(
        self, velocity: VelocityField, noise: Tensor, num_steps: int = 28, *, callback: StepCallback | None = None
    ) -> Tensor:
        return sample_euler(velocity, noise, self.timesteps(num_steps), callback=callback)


@dataclass(frozen=True)
class FlowHeun(_OneStepSampler):
    """Heun (second order, 2 evaluations per step, Euler into t = 0): 2N - 1 evaluations for N steps."""

    def sample(
        self, velocity: VelocityField, noise: Tensor, num_steps: int = 14, *, callback: StepCallback | None = None
    ) -> Tensor:
        return _sample_heun(velocity, noise, self.timesteps(num_steps), callback=callback)
