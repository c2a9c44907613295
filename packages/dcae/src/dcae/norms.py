"""Channel norms, activations and the pointwise conv shared by the blocks."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

RMS_NORM_EPS = 1e-5  # the nn.LayerNorm default that efficientvit's "trms2d" inherits


def rms_norm_2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = RMS_NORM_EPS) -> torch.Tensor:
    """y = x / sqrt(mean_c(x²) + eps) · weight + bias, per pixel over the channel axis of (B, C, H, W)."""
    if not torch.is_grad_enabled():
        return _rms_norm_2d_inference(x, weight, bias, eps)
    # fp32 island: the mean of squares overflows fp16 and loses precision in bf16 (efficientvit#142).
    x32 = x.float()
    inv_rms = torch.rsqrt(x32.pow(2).mean(dim=1, keepdim=True) + eps)  # (B, 1, H, W)
    y = torch.addcmul(bias.float()[:, None, None], x32 * inv_rms, weight.float()[:, None, None])
    return y.to(x.dtype)


def _rms_norm_2d_inference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """The same norm in three passes over x instead of six, without an fp32 copy of a half-precision x.

    The mean of squares is still accumulated in fp32 (`vector_norm(dtype=float32)` upcasts element by element), so
    fp16 cannot overflow and bf16 keeps its precision there. In fp32 the result equals the autograd path's up to
    rounding order. In bf16/fp16 the per-pixel 1/rms, the weight and the bias are applied in that dtype: diffusers
    applies the weight and bias in bf16 too, and the extra rounding of 1/rms adds one bf16 rounding (0.2% at
    most) per pixel. An fp32 copy of x was 40% of a bf16 decode's norm time; at 512² the norms were 10% of it.
    """
    C = x.shape[1]
    rms = torch.linalg.vector_norm(x, 2, dim=1, keepdim=True, dtype=torch.float32)  # (B, 1, H, W), sqrt(Σ x²)
    inv_rms = rms.square_().div_(C).add_(eps).rsqrt_()  # (B, 1, H, W) fp32
    y = x * inv_rms.to(x.dtype)  # (B, C, H, W), x's dtype and memory format
    return torch.addcmul(bias.to(x.dtype)[:, None, None], y, weight.to(x.dtype)[:, None, None], out=y)


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


def act_(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`act(x)`, computed in place when autograd is off: for activations applied to a fresh temporary."""
    if torch.is_grad_enabled():
        return act(x)
    if isinstance(act, nn.SiLU):
        return F.silu(x, inplace=True)
    if isinstance(act, nn.ReLU):
        return F.relu_(x)
    return act(x)


def make_act(kind: str) -> nn.Module:
    """`"silu"` or `"relu"`."""
    acts = {"silu": nn.SiLU, "relu": nn.ReLU}
    if kind not in acts:
        raise KeyError(f"unknown activation {kind!r}; valid activations: {sorted(acts)}")
    return acts[kind]()
