"""Adapters that turn other models into flow velocity fields (k-diffusion's `external.py` idea).

Convention: x_t = (1 - t) x0 + t eps, v = eps - x0 (see the package docstring).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from flow_dpm.solvers import VelocityField

TimeModel = Callable[[Tensor, Tensor], Tensor]


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    return t.view(-1, *([1] * (x.ndim - 1)))  # (B, 1, ..., 1)


def scale_time(model: TimeModel, factor: float = 1000.0) -> TimeModel:
    """For models that take time as `factor * t` (Sana and diffusers' flow transformers: 1000 * t).

    A model that takes the flow sigma itself needs no adapter: in this parametrization σ = t.
    """
    if not factor > 0:
        raise ValueError(f"time factor must be > 0, got {factor!r}")
    return lambda x, t: model(x, t * factor)


def from_x0_model(model: TimeModel) -> VelocityField:
    """Velocity from a data predictor x0(x, t): v = (x - x0) / t. Undefined at t = 0 (never evaluated by solvers)."""

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        if bool((t <= 0).any()):
            raise ValueError("an x0-prediction model cannot give a velocity at t = 0")
        return (x - model(x, t)) / _bcast(t, x)

    return velocity


def from_eps_model(model: TimeModel) -> VelocityField:
    """Velocity from a noise predictor eps(x, t): v = (eps - x) / (1 - t). Undefined at t = 1: use t_end > 0."""

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        if bool((t >= 1).any()):
            raise ValueError("an eps-prediction model cannot give a velocity at t = 1; start the grid below 1")
        return (model(x, t) - x) / (1 - _bcast(t, x))

    return velocity


def from_edm_denoiser(denoiser: TimeModel) -> VelocityField:
    """Velocity from an EDM/k-diffusion denoiser D(x_ve, σ) for the VE process x_ve = x0 + σ n.

    The flow state maps to it by x_ve = x_t / (1 - t), σ = t / (1 - t). Undefined at t = 1.
    """

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        if bool((t >= 1).any()):
            raise ValueError("an EDM denoiser cannot give a velocity at t = 1 (sigma = inf); start the grid below 1")
        x0 = denoiser(x / (1 - _bcast(t, x)), t / (1 - t))
        return (x - x0) / _bcast(t, x)

    return velocity
