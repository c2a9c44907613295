"""Channel norms, activations and the pointwise conv shared by the blocks."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

RMS_NORM_EPS = 1e-5  # the nn.LayerNorm default that efficientvit's "trms2d" inherits


def rms_norm_2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = RMS_NORM_EPS) -> torch.Tensor:
    """y = x / sqrt(mean_c(x²) + eps) · weight + bias, per pixel over the channel axis of (B, C, H, W)."""
    # fp32 island: the mean of squares overflows fp16 and loses precision in bf16 (efficientvit#142).
    x32 = x.float()
    inv_rms = torch.rsqrt(x32.pow(2).mean(dim=1, keepdim=True) + eps)  # (B, 1, H, W)
    y = torch.addcmul(bias.float()[:, None, None], x32 * inv_rms, weight.float()[:, None, None])
    return y.to(x.dtype)


class RMSNorm2d(nn.Module):
    """RMSNorm over the channels of a (B, C, H, W) map, with an affine weight and a bias ("trms2d")."""

    def __init__(self, channels: int, eps: float = RMS_NORM_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm_2d(x, self.weight, self.bias, self.eps)


@functools.cache
def _onednn_fp32_faster() -> bool:
    return torch.backends.mkldnn.is_available() and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


class PointwiseConv(nn.Conv2d):
    """A 1×1 conv computed as a matmul over pixels; same parameters (and state-dict shapes) as nn.Conv2d.

    On AVX2 CPUs PyTorch's CPU backend ran these 1×1 convs about 2× slower than the matmul. On AVX-512 CPUs
    oneDNN's fp32 1×1 convolution is the faster one (a 512² encode: the matmuls took 1.9 s where diffusers' 1×1
    convs took 1.1 s, Zen 4), so fp32 inference there uses it; bf16 stays on the matmul (oneDNN's bf16 matmul
    ran 10–40% faster than its bf16 1×1 convolution at the DC-AE's shapes).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fp32_inference = x.dtype == torch.float32 and not torch.is_grad_enabled()
        if fp32_inference and x.device.type == "cpu" and _onednn_fp32_faster():
            return F.conv2d(x, self.weight, self.bias)
        B, C, H, W = x.shape
        y = torch.matmul(self.weight.view(self.out_channels, C), x.reshape(B, C, H * W))  # (B, C_out, N)
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y.view(B, -1, H, W)  # (B, C_out, H, W)


def make_norm(kind: str, channels: int) -> nn.Module:
    """`"rms"` → RMSNorm2d, `"batch"` → BatchNorm2d (eps 1e-5, the in/mix decoders' ResBlocks)."""
    norms = {"rms": RMSNorm2d, "batch": nn.BatchNorm2d}
    if kind not in norms:
        raise KeyError(f"unknown norm {kind!r}; valid norms: {sorted(norms)}")
    return norms[kind](channels)


def make_act(kind: str) -> nn.Module:
    """`"silu"` or `"relu"`."""
    acts = {"silu": nn.SiLU, "relu": nn.ReLU}
    if kind not in acts:
        raise KeyError(f"unknown activation {kind!r}; valid activations: {sorted(acts)}")
    return acts[kind]()
