"""A diffusers-compatible scheduler around Flow-DPM-Solver, for diffusers users only (never used internally).

Duck-typed to diffusers' scheduler interface (`set_timesteps`, `timesteps`, `step(...).prev_sample`,
`init_noise_sigma`, `scale_model_input`, `order`), so diffusers is not a dependency. Like every diffusers
scheduler it is stateful between `set_timesteps` and the last `step`; our own samplers are not.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

import torch
from torch import Tensor

from flow_dpm.samplers import FlowDPMSolver
from flow_dpm.solvers import _dpm_update, step_order


class SchedulerOutput(NamedTuple):
    """Supports both `out.prev_sample` and `out[0]`, like diffusers' output classes."""

    prev_sample: Tensor


class FlowDPMScheduler:
    """Drop-in for `DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, ...)`.

    The model output passed to `step` is the velocity v = eps - x0 at `timestep` = 1000 * t.
    """

    order = 1  # one model call per step, as diffusers' multistep schedulers report
    init_noise_sigma = 1.0

    def __init__(self, solver: FlowDPMSolver | None = None, num_train_timesteps: int = 1000) -> None:
        self.solver = solver or FlowDPMSolver()
        self.num_train_timesteps = num_train_timesteps
        self.config = SimpleNamespace(
            num_train_timesteps=num_train_timesteps,
            solver_order=self.solver.order,
            flow_shift=self.solver.flow_shift,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
        )
        self.sigmas: Tensor | None = None
        self.timesteps: Tensor | None = None
        self._reset()

    def _reset(self) -> None:
        self._step_index = 0
        self._hist_t: list[float] = []
        self._hist_D: list[Tensor] = []

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Build the grid; `sigmas` (N + 1,) ends in 0, `timesteps` (N,) = 1000 * sigmas[:-1]."""
        grid = self.solver.timesteps(num_inference_steps)
        self.sigmas = grid.to(device=device, dtype=torch.float32)
        self.timesteps = (grid[:-1] * self.num_train_timesteps).to(device=device, dtype=torch.float32)
        self._grid = grid.tolist()  # float64 coefficients, as in our own samplers
        self._reset()

    @property
    def step_index(self) -> int:
        return self._step_index

    def scale_model_input(self, sample: Tensor, timestep: Tensor | float | None = None) -> Tensor:
        return sample  # the flow ODE needs no input scaling

    def scale_noise(self, sample: Tensor, timestep: Tensor | float, noise: Tensor) -> Tensor:
        """img2img start: x_t = (1 - t) sample + t noise at t = timestep / 1000."""
        t = torch.as_tensor(timestep, dtype=sample.dtype, device=sample.device).reshape(-1)
        t = (t / self.num_train_timesteps).view(-1, *([1] * (sample.ndim - 1)))
        return (1 - t) * sample + t * noise

    def step(
        self,
        model_output: Tensor,
        timestep: Tensor | float,
        sample: Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[Tensor]:
        """Advance `sample` from the current grid point to the next one given the velocity `model_output`."""
        if self.sigmas is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) before step()")
        k, N = self._step_index, len(self._grid) - 1
        if k >= N:
            raise RuntimeError(f"step() called {k + 1} times for {N} inference steps; call set_timesteps again")
        expected = self._grid[k] * self.num_train_timesteps
        if abs(float(torch.as_tensor(timestep).reshape(-1)[0]) - expected) > 1e-3 * self.num_train_timesteps:
            raise ValueError(f"timestep {float(torch.as_tensor(timestep).reshape(-1)[0])} != expected {expected}")
        # Upcast like diffusers: the multistep differences need more than half precision.
        dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
        x, t = sample.to(dtype), self._grid[k]
        x0 = x - t * model_output.to(dtype)
        order = self.solver.order
        self._hist_t, self._hist_D = [*self._hist_t, t][-order:], [*self._hist_D, x0][-order:]
        o = step_order(k, N, order, self.solver.lower_order_final, self._grid[k + 1])
        prev = _dpm_update(x, self._hist_t, self._hist_D, self._grid[k + 1], o, self.solver.solver_type)
        self._step_index += 1
        prev = prev.to(model_output.dtype)
        return SchedulerOutput(prev) if return_dict else (prev,)

    def __len__(self) -> int:
        return self.num_train_timesteps
