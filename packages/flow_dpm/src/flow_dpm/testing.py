"""Exact velocity fields for testing samplers (style §4.15.1), usable by downstream packages and users.

For data x0 ~ N(mu, s² I) and x_t = (1 - t) x0 + t eps, the marginal is N((1 - t) mu, σ_t² I) with
σ_t² = (1 - t)² s² + t², the optimal velocity is E[eps - x0 | x_t], and the probability-flow ODE maps the noise
eps at t = 1 to x0 = mu + s * eps exactly. A mixture's velocity is the posterior-weighted sum of its
components' velocities.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

from flow_dpm.solvers import VelocityField


def _gaussian_velocity(x: Tensor, t: Tensor, mu: Tensor, s: Tensor) -> Tensor:
    var = (1 - t) ** 2 * s**2 + t**2  # σ_t², broadcast (B, 1, ...)
    return -mu + (t - (1 - t) * s**2) / var * (x - (1 - t) * mu)


def gaussian_velocity_field(mu: Tensor | float, s: float) -> VelocityField:
    """The exact velocity for data N(mu, s² I); the exact ODE solution from eps at t = 1 is mu + s * eps."""
    if s <= 0:
        raise ValueError(f"s must be > 0, got {s}")

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        tb = t.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        m = torch.as_tensor(mu, dtype=x.dtype, device=x.device)
        return _gaussian_velocity(x, tb, m, torch.as_tensor(s, dtype=x.dtype))

    return velocity


class GaussianMixture:
    """Data distribution Σ_k π_k N(mu_k, s_k² I) on R^d with a closed-form flow velocity."""

    def __init__(self, means: Tensor, stds: Sequence[float], weights: Sequence[float]) -> None:
        self.means = means.double()  # (K, d)
        self.stds = torch.tensor(stds, dtype=torch.float64)  # (K,)
        w = torch.tensor(weights, dtype=torch.float64)
        if self.means.ndim != 2 or len(self.stds) != len(w) != self.means.shape[0] or (self.stds <= 0).any():
            raise ValueError("means (K, d), stds (K,) > 0 and weights (K,) must agree")
        self.log_weights = (w / w.sum()).log()

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """x (B, d), t (B,) -> v (B, d), computed in float64 and returned in x's dtype."""
        xd, td = x.double(), t.double().view(-1, 1, 1)  # (B, 1, 1)
        mu, s = self.means[None], self.stds.view(1, -1, 1)  # (1, K, d), (1, K, 1)
        var = (1 - td) ** 2 * s**2 + td**2  # (B, K, 1)
        diff = xd[:, None] - (1 - td) * mu  # (B, K, d)
        d = x.shape[1]
        log_p = self.log_weights - 0.5 * (diff**2).sum(-1) / var[..., 0] - 0.5 * d * var[..., 0].log()  # (B, K)
        resp = log_p.softmax(-1)[..., None]  # (B, K, 1)
        v_k = -mu + (td - (1 - td) * s**2) / var * diff  # (B, K, d)
        return (resp * v_k).sum(1).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * noise


def reference_solution(velocity: VelocityField, x: Tensor, t_start: float, num_steps: int = 4000) -> Tensor:
    """High-accuracy ODE solution from t_start to 0 by classical RK4 in float64 on a uniform grid."""
    x = x.double()
    ts = torch.linspace(t_start, 0.0, num_steps + 1, dtype=torch.float64).tolist()
    B = x.shape[0]

    def f(y: Tensor, t: float) -> Tensor:
        return velocity(y, torch.full((B,), t, dtype=torch.float64))

    for t0, t1 in itertools.pairwise(ts):
        h = t1 - t0
        k1 = f(x, t0)
        k2 = f(x + 0.5 * h * k1, t0 + 0.5 * h)
        k3 = f(x + 0.5 * h * k2, t0 + 0.5 * h)
        k4 = f(x + h * k3, t1)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x
