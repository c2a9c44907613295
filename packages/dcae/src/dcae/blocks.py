"""DC-AE building blocks: ResBlock, GLU MBConv, EfficientViT block, residual down/upsampling (spec §2.2).

The resampling blocks are "residual autoencoding": a learned conv plus a parameter-free shortcut that moves
space into channels (averaging groups) or channels into space (duplicating channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dcae.attention import LiteMLA
from dcae.norms import PointwiseConv, RMSNorm2d, make_act, make_norm


class ResBlock(nn.Module):
    """x + norm(conv2(act(conv1(x)))): 3×3 convs, the second without bias."""

    def __init__(self, channels: int, norm: str = "rms", act: str = "silu") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = make_act(act)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = make_norm(norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.conv2(self.act(self.conv1(x))))


class GLUMBConv(nn.Module):
    """Gated inverted bottleneck: 1×1 to 8C, depthwise 3×3, a·SiLU(g) down to 4C, 1×1 back to C, RMSNorm."""

    def __init__(self, channels: int, expand_ratio: int = 4) -> None:
        super().__init__()
        hidden = expand_ratio * channels
        self.inverted = PointwiseConv(channels, 2 * hidden)
        self.depthwise = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.point = PointwiseConv(hidden, channels, bias=False)
        self.norm = RMSNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.depthwise(F.silu(self.inverted(x)))  # (B, 8C, H, W)
        a, gate = h.chunk(2, dim=1)  # each (B, 4C, H, W)
        return self.norm(self.point(a * F.silu(gate)))  # (B, C, H, W)


class EfficientViTBlock(nn.Module):
    """x + LiteMLA(x), then + GLUMBConv: global context, then local mixing."""

    def __init__(self, channels: int, head_dim: int, scales: tuple[int, ...], norm: str = "rms") -> None:
        super().__init__()
        self.attn = LiteMLA(channels, head_dim, scales, norm)
        self.mlp = GLUMBConv(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


def make_block(kind: str, channels: int, head_dim: int, scales: tuple[int, ...], norm: str, act: str) -> nn.Module:
    """`"res"` → ResBlock(norm, act); `"evit"` → EfficientViTBlock (its MBConv is always RMSNorm + SiLU)."""
    if kind == "res":
        return ResBlock(channels, norm, act)
    if kind == "evit":
        return EfficientViTBlock(channels, head_dim, scales, norm)
    raise KeyError(f"unknown block type {kind!r}; valid block types: ['evit', 'res']")


def space_to_channel_average(x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """(B, C, H, W) → (B, out_channels, H/2, W/2): pixel-unshuffle by 2, then average groups of channels."""
    x = F.pixel_unshuffle(x, 2)  # (B, 4C, H/2, W/2)
    return x.unflatten(1, (out_channels, -1)).mean(dim=2)  # (B, out, H/2, W/2)


def channel_to_space_duplicate(x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """(B, C, h, w) → (B, out_channels, 2h, 2w): repeat each channel 4·out/C times, then pixel-shuffle by 2."""
    repeats = 4 * out_channels // x.shape[1]
    x = x.repeat_interleave(repeats, dim=1)  # (B, 4·out, h, w)
    return F.pixel_shuffle(x, 2)  # (B, out, 2h, 2w)


class DownsampleBlock(nn.Module):
    """Halves the resolution: 3×3 stride-2 conv ("conv") or 3×3 conv + pixel-unshuffle, plus the shortcut."""

    def __init__(self, in_channels: int, out_channels: int, kind: str, shortcut: bool = True) -> None:
        super().__init__()
        if kind not in ("conv", "pixel_unshuffle"):
            raise KeyError(f"unknown downsample {kind!r}; valid: ['conv', 'pixel_unshuffle']")
        self.unshuffle = kind == "pixel_unshuffle"
        self.out_channels = out_channels
        self.shortcut = shortcut
        conv_out, stride = (out_channels // 4, 1) if self.unshuffle else (out_channels, 2)
        self.conv = nn.Conv2d(in_channels, conv_out, 3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.unshuffle:
            y = F.pixel_unshuffle(y, 2)  # (B, out, H/2, W/2)
        if self.shortcut:
            y = y + space_to_channel_average(x, self.out_channels)
        return y


def nearest_up_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv3x3(nearest_upsample_x2(x)), padding 1, computed at the input resolution.

    Each of the four output phases (2i+a, 2j+b) sees only a 2×2 window of x, with the 3×3 taps that land on the
    same input pixel summed. That is 4/9 of the MACs of the upsampled conv and never materialises the
    upsampled input (at 4K the 256-channel one alone is 17 GB in fp32); the result equals the upsampled conv up
    to float rounding of the tap sums.
    """
    B, _, h, w = x.shape
    # Rows (and likewise columns) of the 3×3 kernel seen by phase 0 and phase 1: phase 0 reads input rows
    # (i-1, i) with taps (0, 1+2), phase 1 reads rows (i, i+1) with taps (0+1, 2).
    rows = [
        torch.cat([weight[:, :, :1], weight[:, :, 1:].sum(2, keepdim=True)], dim=2),  # (O, I, 2, 3)
        torch.cat([weight[:, :, :2].sum(2, keepdim=True), weight[:, :, 2:]], dim=2),  # (O, I, 2, 3)
    ]
    x = F.pad(x, (1, 1, 1, 1))  # (B, I, h+2, w+2)
    out = x.new_empty(B, weight.shape[0], 2 * h, 2 * w)  # (B, O, 2h, 2w)
    for a, k_rows in enumerate(rows):
        for b in (0, 1):
            if b == 0:
                k = torch.cat([k_rows[..., :1], k_rows[..., 1:].sum(3, keepdim=True)], dim=3)  # (O, I, 2, 2)
            else:
                k = torch.cat([k_rows[..., :2].sum(3, keepdim=True), k_rows[..., 2:]], dim=3)  # (O, I, 2, 2)
            out[:, :, a::2, b::2] = F.conv2d(x[:, :, a : a + h + 1, b : b + w + 1], k, bias)  # (B, O, h, w)
    return out


class UpsampleBlock(nn.Module):
    """Doubles the resolution: nearest ×2 + 3×3 conv ("interpolate") or 3×3 conv + pixel-shuffle, plus shortcut."""

    def __init__(self, in_channels: int, out_channels: int, kind: str, shortcut: bool = True) -> None:
        super().__init__()
        if kind not in ("interpolate", "pixel_shuffle"):
            raise KeyError(f"unknown upsample {kind!r}; valid: ['interpolate', 'pixel_shuffle']")
        self.interpolate = kind == "interpolate"
        self.out_channels = out_channels
        self.shortcut = shortcut
        conv_out = out_channels if self.interpolate else 4 * out_channels
        self.conv = nn.Conv2d(in_channels, conv_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.interpolate:
            y = nearest_up_conv3x3(x, self.conv.weight, self.conv.bias)  # (B, out, 2h, 2w)
        else:
            y = F.pixel_shuffle(self.conv(x), 2)  # (B, out, 2h, 2w)
        if self.shortcut:
            y = y + channel_to_space_duplicate(x, self.out_channels)
        return y
