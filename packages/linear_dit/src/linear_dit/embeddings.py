"""Input embeddings: patches, timesteps, captions (with the null caption buffer) and the 2D sin-cos table."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linear_dit.ops import Linear

TIME_FREQ_DIM = 256  # width of the timestep sinusoid fed to the timestep MLP
MAX_PERIOD = 10000.0


class PatchEmbed(nn.Module):
    """Conv2d(C_z → D, kernel = stride = p) then row-major flatten: (B, C_z, h, w) → (B, N, D)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        if self.patch_size == 1:  # a per-token linear map; skips the NCHW round trip of a 1x1 conv
            w = self.proj.weight.flatten(1)  # (D, C_z)
            return F.linear(x.flatten(2).transpose(1, 2), w, self.proj.bias)  # (B, N, D)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


def timestep_embedding(t: Tensor, dim: int = TIME_FREQ_DIM) -> Tensor:
    """Sinusoid [cos(t·f), sin(t·f)] with f_i = exp(-ln(10000)·i/(dim/2)); t (B,) in network units → (B, dim) fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)


class TimestepEmbedder(nn.Module):
    """Timestep sinusoid → Linear → SiLU → Linear (keys `t_embedder.mlp.0/2`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(TIME_FREQ_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        """t (B,) in network units (1000·flow time) → (B, D) fp32.

        Computed in fp32 whatever the weights' dtype: it is B rows (negligible cost), and it drives every
        block's scale, shift and gate, so its rounding would reach every token.
        """
        lin1, lin2 = self.mlp[0], self.mlp[2]
        h = F.silu(F.linear(timestep_embedding(t), lin1.weight.float(), lin1.bias.float()))  # (B, D)
        return F.linear(h, lin2.weight.float(), lin2.bias.float())  # (B, D)


class CaptionMlp(nn.Module):
    """timm-style Mlp: fc1 → GELU(tanh) → fc2 (keys `y_embedder.y_proj.fc1/fc2`)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.fc1 = Linear(in_dim, dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CaptionEmbedder(nn.Module):
    """Caption projection plus the null caption `y_embedding` (L, D_txt) used for CFG dropout in training.

    `y_embedding` is a buffer, not a parameter: the official loader overwrites it with the text encoder's
    encoding of "" (spec §3.6), so it is stored with the weights but never trained.
    """

    def __init__(self, in_dim: int, dim: int, length: int) -> None:
        super().__init__()
        self.y_proj = CaptionMlp(in_dim, dim)
        self.register_buffer("y_embedding", torch.randn(length, in_dim) / in_dim**0.5)

    def forward(self, text: Tensor) -> Tensor:
        return self.y_proj(text)  # (B, L, D)


@functools.lru_cache(maxsize=16)
def _sincos_table(dim: int, h: int, w: int, base_size: int, interpolation: float) -> Tensor:
    # float64 like the reference (numpy in Sana, float64 torch in diffusers), rounded once to fp32.
    grid_h = torch.arange(h, dtype=torch.float64) / (h / base_size) / interpolation  # (h,)
    grid_w = torch.arange(w, dtype=torch.float64) / (w / base_size) / interpolation  # (w,)
    pos_w = grid_w[None, :].expand(h, w).reshape(-1)  # (N,) row-major tokens, w fastest
    pos_h = grid_h[:, None].expand(h, w).reshape(-1)  # (N,)
    omega = 1.0 / MAX_PERIOD ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))  # (D/4,)

    def axis(pos: Tensor) -> Tensor:
        out = pos[:, None] * omega[None]  # (N, D/4)
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (N, D/2)

    return torch.cat([axis(pos_w), axis(pos_h)], dim=1).float()  # (N, D): first half encodes w (as upstream)


def sincos_pos_embed(dim: int, h: int, w: int, base_size: int, interpolation: float) -> Tensor:
    """2D sin-cos table for an (h, w) token grid (spec §3.4): (h·w, D) fp32, rows in row-major token order.

    Each axis is squashed onto [0, base_size) / interpolation whatever its length, so non-square grids are
    stretched per axis, not cropped. The first D/2 channels encode the w coordinate, the last D/2 the h one.
    """
    return _sincos_table(dim, h, w, base_size, float(interpolation))
