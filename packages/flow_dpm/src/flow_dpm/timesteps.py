"""Time grids for flow-matching samplers: decreasing from (about) 1 to exactly 0.

Every grid is a float64 tensor of shape (K,) = (num_steps + 1,), strictly decreasing, ending in exactly 0.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Discretization = Literal["time_uniform_flow", "logsnr_uniform", "uniform", "flow_match_euler"]
DISCRETIZATIONS: tuple[Discretization, ...] = ("time_uniform_flow", "logsnr_uniform", "uniform", "flow_match_euler")

T_END = 1e-3  # Sana's t_end: the grid starts at 1 - t_end before the shift (spec §4.2)


def shift_time(t: Tensor, shift: float) -> Tensor:
    """Sana/SD3 time shift S(t) = s t / (1 + (s - 1) t); S(0) = 0, S(1) = 1, s > 1 moves time toward noise."""
    check_shift(shift)
    return shift * t / (1 + (shift - 1) * t)


def check_shift(shift: float) -> None:
    if not (isinstance(shift, int | float) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"flow_shift must be a finite number > 0, got {shift!r}")


def check_num_steps(num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")


def flow_timesteps(
    num_steps: int,
    shift: float = 3.0,
    *,
    discretization: Discretization = "time_uniform_flow",
    t_end: float = T_END,
) -> Tensor:
    """The sampling grid t_0 > t_1 > ... > t_N = 0 for `num_steps` = N solver steps.

    Args:
        num_steps: N >= 1, the number of solver steps (one velocity evaluation each for multistep solvers).
        shift: the flow shift s > 0 applied as `shift_time` (Sana: 3.0; 4.0 for 0.6B-1024; 6.0 for 4K).
        discretization:
            `"time_uniform_flow"` — Sana's (spec §4.2): linspace(1, t_end, N + 1) reversed to 1 - ·, shifted,
            and the last point replaced by exactly 0 (identical to diffusers' `use_flow_sigmas=True` grid);
            `"logsnr_uniform"` — uniform in the half log-SNR λ = ln((1 - t) / t) between the first and the
            last non-zero points of Sana's grid, then 0;
            `"uniform"` — shift(linspace(1, 0, N + 1)) (starts at exactly t = 1);
            `"flow_match_euler"` — diffusers' `FlowMatchEulerDiscreteScheduler(shift=s)` grid, which native Sana's
            Flow-Euler sampler uses: shift(linspace(1, shift(t_end), N)), then 0 (the lower end is shifted twice,
            so the last step is a short one from about 3 t_end to 0).
        t_end: the unshifted distance from 1 of the first point (Sana: 1e-3); must lie in (0, 1).

    Returns:
        (N + 1,) float64, strictly decreasing, last value exactly 0.
    """
    check_num_steps(num_steps)
    check_shift(shift)
    if not 0 < t_end < 1:
        raise ValueError(f"t_end must lie in (0, 1), got {t_end!r}")
    if discretization == "time_uniform_flow":
        a = 1 - torch.linspace(1, t_end, num_steps + 1, dtype=torch.float64)  # 0 -> 1 - t_end
        t = shift_time(a, shift).flip(0)
    elif discretization == "logsnr_uniform":
        t = _logsnr_uniform(num_steps, shift, t_end)
    elif discretization == "uniform":
        t = shift_time(torch.linspace(1, 0, num_steps + 1, dtype=torch.float64), shift)
    elif discretization == "flow_match_euler":
        low = float(shift_time(torch.tensor(t_end, dtype=torch.float64), shift))
        t = torch.cat([shift_time(torch.linspace(1, low, num_steps, dtype=torch.float64), shift), torch.zeros(1)])
    else:
        raise ValueError(f"discretization must be one of {DISCRETIZATIONS}, got {discretization!r}")
    t[-1] = 0.0  # exactly zero: the last step lands on data, with no log(0) downstream
    return t


def _logsnr_uniform(num_steps: int, shift: float, t_end: float) -> Tensor:
    sana = flow_timesteps(num_steps, shift, discretization="time_uniform_flow", t_end=t_end)
    if num_steps == 1:
        return sana
    t_first, t_last = sana[0], sana[-2]
    lam = torch.linspace(float(half_log_snr(t_first)), float(half_log_snr(t_last)), num_steps, dtype=torch.float64)
    return torch.cat([torch.sigmoid(-lam), lam.new_zeros(1)])  # t = 1 / (1 + e^λ)


def half_log_snr(t: Tensor) -> Tensor:
    """λ(t) = ln(α_t / σ_t) = ln((1 - t) / t) for the flow path α_t = 1 - t, σ_t = t; +inf at t = 0."""
    return torch.log1p(-t) - torch.log(t)
