"""DC-AE building blocks: ResBlock, GLU MBConv, EfficientViT block, residual down/upsampling (spec §2.2).

The resampling blocks are "residual autoencoding": a learned conv plus a parameter-free shortcut that moves
space into channels (averaging groups) or channels into space (duplicating channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dcae.attention import LiteMLA
from dcae.norms import PointwiseConv, RMSNorm2d, act_, make_act, make_norm


class ResBlock(nn.Module):
    """x + norm(conv2(act(conv1(x)))): 3×3 convs, the second without bias."""

    def __init__(self, channels: int, norm: str = "rms", act: str = "silu") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = make_act(act)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = make_norm(norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv2(act_(self.act, self.conv1(x))))
        return x + y if torch.is_grad_enabled() else y.add_(x)


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
        inplace = not torch.is_grad_enabled()  # the temporaries below are the activations' only users
        h = self.depthwise(F.silu(self.inverted(x), inplace=inplace))  # (B, 8C, H, W)
        a, gate = h.chunk(2, dim=1)  # each (B, 4C, H, W)
        return self.norm(self.point(a * F.silu(gate, inplace=inplace)))  # (B, C, H, W)


class EfficientViTBlock(nn.Module):
    """x + LiteMLA(x), then + GLUMBConv: global context, then local mixing."""

    def __init__(self, channels: int, head_dim: int, scales: tuple[int, ...], norm: str = "rms") -> None:
        super().__init__()
        self.attn = LiteMLA(channels, head_dim, scales, norm)
        self.mlp = GLUMBConv(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            x = x + self.attn(x)
            return x + self.mlp(x)
        x = self.attn(x).add_(x)  # inference: add into the fresh branch outputs, same sums
        return self.mlp(x).add_(x)


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


def add_space_to_channel_average_(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y += space_to_channel_average(x, y.shape[1]), in place and without the pixel-unshuffled copy of x.

    For inference: with 4C/out = G channels of the unshuffled map per output channel, G = 4 is a 2×2 average
    pool, G = 4m a pool then a mean over m channels, and G = 2 averages the two columns of each 2×2 cell, with
    the cell's top and bottom rows going to channels 2c and 2c+1. In channels-last memory the generic form's
    group mean was the encoder's slowest non-conv op.
    """
    C, H = x.shape[1:3]
    out = y.shape[1]
    G = 4 * C // out
    if G % 4 == 0:
        pooled = F.avg_pool2d(x, 2)  # (B, C, H/2, W/2)
        return y.add_(pooled if G == 4 else pooled.unflatten(1, (out, G // 4)).mean(dim=2))
    if G == 2:
        pooled = F.avg_pool2d(x, (1, 2))  # (B, C, H, W/2)
        y.unflatten(1, (C, 2)).add_(pooled.unflatten(2, (H // 2, 2)).transpose(2, 3))  # (B, C, 2, H/2, W/2)
        return y
    return y.add_(space_to_channel_average(x, out))


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
            if torch.is_grad_enabled():
                return y + space_to_channel_average(x, self.out_channels)
            return add_space_to_channel_average_(y, x)
        return y


def _phase_kernels(weight: torch.Tensor) -> list[torch.Tensor]:
    """The four (O, I, 2, 2) kernels of conv3x3∘nearest-×2, for output phases (a, b) = (0,0), (0,1), (1,0), (1,1).

    Each output phase (2i+a, 2j+b) sees only a 2×2 window of the input: phase 0 reads input rows (i-1, i) with the
    3×3 kernel's rows (0, 1+2), phase 1 reads rows (i, i+1) with rows (0+1, 2); likewise for columns.
    """
    rows = [
        torch.cat([weight[:, :, :1], weight[:, :, 1:].sum(2, keepdim=True)], dim=2),  # (O, I, 2, 3)
        torch.cat([weight[:, :, :2].sum(2, keepdim=True), weight[:, :, 2:]], dim=2),  # (O, I, 2, 3)
    ]
    return [
        torch.cat([k[..., :1], k[..., 1:].sum(3, keepdim=True)], dim=3)  # (O, I, 2, 2)
        if b == 0
        else torch.cat([k[..., :2].sum(3, keepdim=True), k[..., 2:]], dim=3)
        for k in rows
        for b in (0, 1)
    ]


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """`torch.channels_last` for an NHWC-strided 4-D tensor, else `torch.contiguous_format`."""
    nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if nhwc else torch.contiguous_format


def duplicate_phase(x: torch.Tensor, out_channels: int, phase: int) -> torch.Tensor:
    """Output phase `phase` (= 2a + b) of `channel_to_space_duplicate(x, out_channels)`: (B, out, h, w).

    Channel o of that phase is x's channel (4o + phase) // r with r = 4·out/C; a strided view when r divides 4.
    """
    repeats = 4 * out_channels // x.shape[1]
    if 4 % repeats == 0:
        return x[:, phase // repeats :: 4 // repeats]
    index = torch.div(torch.arange(out_channels, device=x.device) * 4 + phase, repeats, rounding_mode="floor")
    return x.index_select(1, index)


def nearest_up_conv3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, shortcut_channels: int | None = None
) -> torch.Tensor:
    """conv3x3(nearest_upsample_x2(x)), padding 1, computed at the input resolution; optionally plus the
    residual shortcut `channel_to_space_duplicate(x, shortcut_channels)`.

    That is 4/9 of the MACs of the upsampled conv and never materialises the upsampled input (at 4K the
    256-channel one alone is 17 GB in fp32); the result equals the upsampled conv up to float rounding of the tap
    sums. At inference the four phase kernels run as one convolution with 4·O output channels over the padded
    input (one larger GEMM, no copies of shifted input windows), and each phase is written into the interleaved
    output together with its shortcut in one pass, in x's memory format.
    """
    B, _, h, w = x.shape
    O = weight.shape[0]
    kernels = _phase_kernels(weight)
    x_pad = F.pad(x, (1, 1, 1, 1))  # (B, I, h+2, w+2)
    out = torch.empty(B, O, 2 * h, 2 * w, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))
    if torch.is_grad_enabled():
        for p, k in enumerate(kernels):
            a, b = divmod(p, 2)
            out[:, :, a::2, b::2] = F.conv2d(x_pad[:, :, a : a + h + 1, b : b + w + 1], k, bias)  # (B, O, h, w)
        return out if shortcut_channels is None else out + channel_to_space_duplicate(x, shortcut_channels)
    # (B, 4O, h+1, w+1): phase p's result at (i, j) is at channels [pO, (p+1)O), pixel (i+a, j+b)
    y = F.conv2d(x_pad, torch.cat(kernels), None if bias is None else bias.repeat(4))
    for p in range(4):
        a, b = divmod(p, 2)
        phase = y[:, p * O : (p + 1) * O, a : a + h, b : b + w]  # (B, O, h, w)
        if shortcut_channels is None:
            out[:, :, a::2, b::2] = phase
        else:
            torch.add(phase, duplicate_phase(x, shortcut_channels, p), out=out[:, :, a::2, b::2])
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
        if self.interpolate:  # the shortcut is added inside, phase by phase
            shortcut = self.out_channels if self.shortcut else None
            return nearest_up_conv3x3(x, self.conv.weight, self.conv.bias, shortcut)  # (B, out, 2h, 2w)
        y = F.pixel_shuffle(self.conv(x), 2)  # (B, out, 2h, 2w)
        if self.shortcut:
            shortcut = channel_to_space_duplicate(x, self.out_channels)
            y = y + shortcut if torch.is_grad_enabled() else y.add_(shortcut)
        return y
