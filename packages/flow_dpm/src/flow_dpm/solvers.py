"""Stateless ODE samplers for flow-matching models: Flow-DPM-Solver (DPM-Solver++ multistep), Euler and Heun.

Each sampler integrates dx/dt = v(x, t) over a decreasing time grid from `noise` (at t_0 ≈ 1) to t_N = 0 and
returns x0. The state and all coefficients are kept in fp32 (fp64 for fp64 noise) whatever the model dtype;
the velocity function receives `x` in the noise's dtype (spec §4.3: only network inputs take the model dtype).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, Protocol

import torch
from torch import Tensor

SolverType = Literal["midpoint", "heun"]
SOLVER_TYPES: tuple[SolverType, ...] = ("midpoint", "heun")
FinalStep = Literal["data", "adams2"]
FINAL_STEPS: tuple[FinalStep, ...] = ("data", "adams2")


class VelocityField(Protocol):
    """v(x, t): x shaped like the noise (B, ...), t a float tensor (B,) in [0, 1] -> v shaped like x."""

    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...


StepCallback = Callable[[int, Tensor, Tensor, Tensor], None]  # (step, t (B,), x, x0_pred)


def _compute_dtype(noise: Tensor) -> torch.dtype:
    # fp32 state for half-precision noise: the multistep differences (D0 - D1) / r0 lose all precision in bf16.
    return torch.float64 if noise.dtype == torch.float64 else torch.float32


def check_noise(noise: Tensor) -> None:
    if not isinstance(noise, Tensor) or not noise.is_floating_point():
        raise ValueError(f"noise must be a floating-point tensor, got {type(noise).__name__}")
    if noise.ndim < 1 or noise.shape[0] < 1:
        raise ValueError(f"noise must have a batch dimension (B, ...), got shape {tuple(noise.shape)}")
    if not torch.isfinite(noise).all():
        raise ValueError("noise must be finite (it contains NaN or inf)")


def check_timesteps(timesteps: Tensor) -> None:
    if not isinstance(timesteps, Tensor) or timesteps.ndim != 1 or timesteps.numel() < 2:
        raise ValueError("timesteps must be a 1-D tensor with at least 2 values (num_steps + 1)")
    if not torch.isfinite(timesteps).all() or timesteps.min() < 0 or timesteps.max() > 1:
        raise ValueError(f"timesteps must lie in [0, 1], got range [{timesteps.min()}, {timesteps.max()}]")
    if not (timesteps[1:] < timesteps[:-1]).all():
        raise ValueError("timesteps must be strictly decreasing (from noise at ~1 to data at 0)")


def evaluate(velocity: VelocityField, x: Tensor, t: float, step: int, model_dtype: torch.dtype) -> Tensor:
    """Call the velocity field at a scalar time broadcast to the batch, and check what it returns."""
    t_batch = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)  # (B,)
    v = velocity(x.to(model_dtype), t_batch)
    if not isinstance(v, Tensor) or v.shape != x.shape:
        got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"velocity returned {got} at step {step} (t={t:.6g}); expected shape {tuple(x.shape)}")
    if not torch.isfinite(v).all():
        raise FloatingPointError(f"velocity returned non-finite values at step {step} (t={t:.6g})")
    return v.to(x.dtype)  # back to the fp32 state dtype before it enters the update


def _half_log_snr(t: float) -> float:
    return math.log1p(-t) - math.log(t) if 0 < t < 1 else (math.inf if t == 0 else -math.inf)


def _dpm_update(x: Tensor, ts: list[float], D: list[Tensor], t: float, order: int, solver_type: SolverType) -> Tensor:
    """One DPM-Solver++ multistep update from ts[-1] to t in data prediction (Lu et al. 2022, DPM-Solver++ Alg. 2).

    ts/D hold the last `order` times (increasingly recent) and their x0 predictions. With α_t = 1 - t, σ_t = t
    the first-order update is exactly one Euler step of the flow ODE.
    """
    s0, D0 = ts[-1], D[-1]
    if t == 0:  # σ_t = 0, λ = +inf, e^{-h} = 0: the update returns the last x0 prediction exactly
        return D0
    alpha_t, h = 1 - t, _half_log_snr(t) - _half_log_snr(s0)
    phi = math.expm1(-h)  # e^{-h} - 1, accurate for small h
    x_t = (t / s0) * x - alpha_t * phi * D0
    if order == 1:
        return x_t
    r0 = (_half_log_snr(s0) - _half_log_snr(ts[-2])) / h
    D1_0 = (D0 - D[-2]) / r0
    if order == 2:
        if solver_type == "midpoint":
            return x_t - 0.5 * alpha_t * phi * D1_0
        return x_t + alpha_t * (phi / h + 1) * D1_0
    r1 = (_half_log_snr(ts[-2]) - _half_log_snr(ts[-3])) / h
    D1_1 = (D[-2] - D[-3]) / r1
    D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)  # ≈ h D'(λ_s0)
    D2 = (D1_0 - D1_1) / (r0 + r1)  # ≈ h² D''(λ_s0) / 2
    # ∫_0^h e^{u-h} u²/2 du = (h² - 2h + 2 - 2e^{-h}) / 2 = h² * 2 * ((φ + h)/h² - 1/2) / 2: the factor 2 below is
    # the Taylor-exact weight of D2. NVlabs' DPM-Solver and diffusers use half of it, which makes their "3M"
    # second order (test_third_order_is_third_order shows both).
    return x_t + alpha_t * (phi / h + 1) * D1 - 2 * alpha_t * ((phi + h) / h**2 - 0.5) * D2


def step_order(step: int, num_steps: int, order: int, lower_order_final: bool, t_next: float) -> int:
    """Order of the update from t_step to t_{step+1}: warm-up from 1, lower orders at the end (native rule)."""
    if t_next == 0:
        return 1  # λ(0) = inf makes the higher-order corrections 0 * inf: the step into data is first order
    k = min(order, step + 1)
    return min(k, num_steps - step) if lower_order_final else k


def sample_flow_dpm(
    velocity: VelocityField,
    noise: Tensor,
    timesteps: Tensor,
    *,
    order: int = 2,
    solver_type: SolverType = "midpoint",
    lower_order_final: bool = True,
    final_step: FinalStep = "data",
    callback: StepCallback | None = None,
) -> Tensor:
    """Flow-DPM-Solver: DPM-Solver++(1M/2M/3M) in the flow data-prediction parametrization (Sana §4.3).

    Exactly N = len(timesteps) - 1 velocity evaluations, at t_0 ... t_{N-1}; no evaluation at t_N = 0.

    Args:
        velocity: v(x, t), see `VelocityField`.
        noise: (B, ...) initial state at t_0, finite.
        timesteps: (N + 1,) strictly decreasing in [0, 1], e.g. from `flow_timesteps`.
        order: 1, 2 or 3.
        solver_type: second-order formula, `"midpoint"` (Sana, diffusers default) or `"heun"`.
        lower_order_final: lower the order on the last steps (stabler at few steps).
        final_step: the step into t = 0. `"data"` (Sana, diffusers): x0 = the last data prediction, which is
            first order. `"adams2"`: second-order Adams–Bashforth in t on the last two velocities; same NFE,
            lower error (benchmarks/sampler_convergence.py). Ignored when the grid does not end at 0.
        callback: called after each evaluation as callback(step, t (B,), x, x0_pred).

    Returns:
        x0 with noise's shape and dtype.
    """
    check_solver_args(order, solver_type)
    if final_step not in FINAL_STEPS:
        raise ValueError(f"final_step must be one of {FINAL_STEPS}, got {final_step!r}")
    check_noise(noise)
    check_timesteps(timesteps)
    x = noise.to(_compute_dtype(noise))
    ts = timesteps.tolist()
    N = len(ts) - 1
    hist_t: list[float] = []
    hist_D: list[Tensor] = []
    v_prev: Tensor | None = None
    for k in range(N):
        v = evaluate(velocity, x, ts[k], k, noise.dtype)
        x0 = x - ts[k] * v  # data prediction from velocity
        if callback is not None:
            callback(k, torch.full((x.shape[0],), ts[k], dtype=x.dtype, device=x.device), x, x0)
        if ts[k + 1] == 0 and final_step == "adams2" and v_prev is not None:
            return _adams2_to_zero(x, v, v_prev, ts[k], ts[k - 1]).to(noise.dtype)
        hist_t, hist_D = [*hist_t, ts[k]][-order:], [*hist_D, x0][-order:]
        o = step_order(k, N, order, lower_order_final, ts[k + 1])
        x = _dpm_update(x, hist_t, hist_D, ts[k + 1], o, solver_type)
        v_prev = v
    return x.to(noise.dtype)


def _adams2_to_zero(x: Tensor, v: Tensor, v_prev: Tensor, t: float, t_prev: float) -> Tensor:
    """x(0) = x(t) - ∫_0^t v: v linear through (t_prev, v_prev), (t, v), integrated exactly (Adams–Bashforth 2)."""
    slope = (v - v_prev) / (t - t_prev)
    return x - t * v + 0.5 * t**2 * slope


def check_solver_args(order: int, solver_type: str) -> None:
    if not isinstance(order, int) or isinstance(order, bool) or order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}")


def sample_euler(
    velocity: VelocityField, noise: Tensor, timesteps: Tensor, *, callback: StepCallback | None = None
) -> Tensor:
    """Flow-Euler: x_{k+1} = x_k + (t_{k+1} - t_k) v(x_k, t_k); N evaluations (the FlowMatchEuler reference)."""
    check_noise(noise)
    check_timesteps(timesteps)
    x = noise.to(_compute_dtype(noise))
    ts = timesteps.tolist()
    for k in range(len(ts) - 1):
        v = evaluate(velocity, x, ts[k], k, noise.dtype)
        if callback is not None:
            callback(k, torch.full((x.shape[0],), ts[k], dtype=x.dtype, device=x.device), x, x - ts[k] * v)
        x = x + (ts[k + 1] - ts[k]) * v
    return x.to(noise.dtype)


def sample_heun(
    velocity: VelocityField, noise: Tensor, timesteps: Tensor, *, callback: StepCallback | None = None
) -> Tensor:
    """Heun's second-order method (EDM Alg. 1) on the flow ODE; the step into t = 0 is Euler: 2N - 1 evaluations."""
    check_noise(noise)
    check_timesteps(timesteps)
    x = noise.to(_compute_dtype(noise))
    ts = timesteps.tolist()
    for k in range(len(ts) - 1):
        dt = ts[k + 1] - ts[k]
        v = evaluate(velocity, x, ts[k], k, noise.dtype)
        if callback is not None:
            callback(k, torch.full((x.shape[0],), ts[k], dtype=x.dtype, device=x.device), x, x - ts[k] * v)
        x_euler = x + dt * v
        if ts[k + 1] == 0:  # noqa: SIM108 (k-diffusion/EDM end with Euler: v at t = 0 is often ill-conditioned)
            x = x_euler
        else:
            x = x + dt * 0.5 * (v + evaluate(velocity, x_euler, ts[k + 1], k, noise.dtype))
    return x.to(noise.dtype)
