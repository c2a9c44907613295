"""Training-side helpers with the same convention as the samplers (Sana spec §7.1-7.2)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from flow_dpm.timesteps import shift_time

TimeDistribution = Literal["logit_normal", "uniform"]
NUM_TRAIN_TIMESTEPS = 1000  # Sana's discrete training table: σ_i = i / 1000 before the shift


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    return t.view(-1, *([1] * (x.ndim - 1)))  # (B, 1, ..., 1)


def add_noise(x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) x0 + t eps with t (B,) in [0, 1] broadcast over the other dims of x0 (B, ...)."""
    if x0.shape != eps.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and eps {tuple(eps.shape)} must have the same shape")
    if t.shape != (x0.shape[0],):
        raise ValueError(f"t must have shape (B,) = ({x0.shape[0]},), got {tuple(t.shape)}")
    if bool(((t < 0) | (t > 1)).any()):
        raise ValueError("t must lie in [0, 1]")
    t = _bcast(t, x0).to(x0.dtype)
    return (1 - t) * x0 + t * eps


def velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    """The flow-matching regression target v = eps - x0."""
    return eps - x0


def flow_matching_loss(v_pred: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
    """Sana's loss: plain MSE, mean over all non-batch dims then over the batch; no timestep weighting."""
    # fp32 reduction: a bf16 mean over C*h*w elements loses about 3 significant digits.
    err = (v_pred.float() - velocity_target(x0, eps).float()).pow(2)
    return err.flatten(1).mean(1).mean()


def sample_t(
    batch_size: int,
    *,
    distribution: TimeDistribution = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 3.0,
    discrete: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Training times t (B,) as Sana draws them (spec §7.2).

    u = sigmoid(n), n ~ N(mean, std) (`"logit_normal"`, SD3/Sana) or u ~ U[0, 1) (`"uniform"`); with `discrete`
    u is snapped to Sana's table i / 1000, i = floor(1000 u); then t = S(u) with the flow shift `shift`.
    The network input time is then 1000 * t (Sana floors it; this makes no measurable difference).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if std <= 0:
        raise ValueError(f"std must be > 0, got {std}")
    if distribution == "logit_normal":
        n = torch.randn(batch_size, generator=generator, device=device, dtype=torch.float64)
        u = torch.sigmoid(mean + std * n)
    elif distribution == "uniform":
        u = torch.rand(batch_size, generator=generator, device=device, dtype=torch.float64)
    else:
        raise ValueError(f"distribution must be 'logit_normal' or 'uniform', got {distribution!r}")
    if discrete:
        u = torch.floor(u * NUM_TRAIN_TIMESTEPS).clamp(max=NUM_TRAIN_TIMESTEPS - 1) / NUM_TRAIN_TIMESTEPS
    return shift_time(u, shift).float()
