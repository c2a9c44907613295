"""Sana's training objective (spec §7.1-7.3) with per-sample randomness keyed by (seed, step, sample).

Every random draw of a training sample (its noise, its time, whether its caption is dropped) comes from a
generator seeded by `(seed, optimizer step, micro-batch, global sample index)`. So a run is a pure function of
its config and data order: a resumed run reproduces the uninterrupted one step for step, and N processes with
batch b draw exactly what one process with batch N*b draws.

Shapes: B batch, C_z latent channels, h, w latent size, L text tokens, D_txt text width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flow_dpm import add_noise, flow_matching_loss, sample_t

_STREAM_NOISE, _STREAM_TIME, _STREAM_DROP = 0, 1, 2  # independent streams per sample


@dataclass(frozen=True)
class ObjectiveSettings:
    """Time sampling and conditioning dropout (defaults: Sana's YAMLs)."""

    flow_shift: float = 3.0  # scheduler.flow_shift
    weighting: str = "logit_normal"  # scheduler.weighting_scheme: "logit_normal" or "uniform" (timestep sampling)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    caption_dropout: float = 0.1  # model.class_dropout_prob


def sample_generator(seed: int, step: int, micro: int, index: int, stream: int) -> torch.Generator:
    """A CPU generator for one sample's draws; `index` is the sample's position in the global batch."""
    key = (((seed * 1_000_003 + step) * 1_009 + micro) * 100_003 + index) * 7 + stream
    return torch.Generator().manual_seed(key % (2**63 - 1))


def draw(
    shape: tuple[int, ...], settings: ObjectiveSettings, *, seed: int, step: int, micro: int, indices: list[int]
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample noise (B, *shape), times t (B,) and caption-dropout flags (B,) bool, all on the CPU."""
    noise, times, drops = [], [], []
    distribution = "uniform" if settings.weighting in ("uniform", "none", None) else "logit_normal"
    for i in indices:
        g = sample_generator(seed, step, micro, i, _STREAM_NOISE)
        noise.append(torch.randn((1, *shape), generator=g))
        g = sample_generator(seed, step, micro, i, _STREAM_TIME)
        times.append(sample_t(1, distribution=distribution, mean=settings.logit_mean, std=settings.logit_std,
                              shift=settings.flow_shift, generator=g))  # fmt: skip
        g = sample_generator(seed, step, micro, i, _STREAM_DROP)
        drops.append(bool(torch.rand(1, generator=g) < settings.caption_dropout))
    return torch.cat(noise), torch.cat(times), torch.tensor(drops, dtype=torch.bool)


def drop_captions(text: Tensor, mask: Tensor, null: Tensor, drop: Tensor) -> tuple[Tensor, Tensor]:
    """CFG dropout (spec §3.6): dropped rows take the null caption's features but keep their own mask.

    text (B, L, D_txt), mask (B, L), null (L, D_txt), drop (B,) bool -> (text, mask).
    """
    if null.shape != text.shape[1:]:
        raise ValueError(f"null embedding {tuple(null.shape)} does not match text features {tuple(text.shape[1:])}")
    keep = (~drop.to(text.device)).view(-1, 1, 1)  # (B, 1, 1)
    return torch.where(keep, text, null.to(text)), mask


def loss_fn(model, x0: Tensor, text: Tensor, mask: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) x0 + t eps, v target = eps - x0, plain MSE (spec §7.1)."""
    x_t = add_noise(x0, noise, t)  # (B, C_z, h, w)
    v = model(x_t, t, text, mask)
    return flow_matching_loss(v, x0, noise)
