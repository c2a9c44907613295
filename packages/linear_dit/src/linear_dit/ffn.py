"""Mix-FFN (Sana's GLUMBConv): 1×1 conv → SiLU → depthwise 3×3 → GLU → 1×1 conv, on the token grid.

Parameters keep the official names and shapes (`mlp.inverted_conv.conv.weight` is (2h, D, 1, 1)), but the work is
done in the token layout: the 1×1 convolutions are matmuls on (B, N, ·) and the depthwise convolution reads the
same memory as a channels-last (B, 2h, h, w) view, so no NCHW transposes are made.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linear_dit.ops import linear, native_bf16


class ConvLayer(nn.Module):
    """Holds one conv's parameters under the official `…_conv.conv` key; the FFN applies it."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, groups=groups, bias=bias)


class MixFFN(nn.Module):
    """GLUMBConv with acts (SiLU, SiLU-gate, none) and biases (True, True, False), Sana spec §3.9."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.inverted_conv = ConvLayer(dim, 2 * hidden, 1)
        self.depth_conv = ConvLayer(2 * hidden, 2 * hidden, 3, groups=2 * hidden)
        self.point_conv = ConvLayer(hidden, dim, 1, bias=False)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """x (B, N, D) tokens of an (h, w) grid in row-major order → (B, N, D)."""
        B, N, _ = x.shape
        h, w = hw
        inv, dw, pt = self.inverted_conv.conv, self.depth_conv.conv, self.point_conv.conv
        inplace = not torch.is_grad_enabled()  # inference: reuse the (B, N, 2h) buffers, the largest in the model
        u = F.silu(linear(x, inv.weight.flatten(1), inv.bias), inplace=inplace)  # (B, N, 2h)
        u = u.view(B, h, w, -1).permute(0, 3, 1, 2)  # (B, 2h, h, w) channels-last view, no copy
        if u.device.type == "cpu" and u.dtype != torch.float32 and not (u.dtype == torch.bfloat16 and native_bf16()):
            # Half-precision depthwise convs have no vectorised CPU kernel without AVX512-BF16 (~40x slower
            # than fp32 on AVX2); the fp32 round trip costs two elementwise passes and accumulates in fp32.
            # With native bf16 the bf16 kernel (fp32 accumulation) is 2.7-6x faster than the round trip.
            u = F.conv2d(u.float(), dw.weight.float(), dw.bias.float(), padding=1, groups=dw.groups).to(x.dtype)
        else:
            u = F.conv2d(u, dw.weight, dw.bias, padding=1, groups=dw.groups)  # (B, 2h, h, w), channels-last
        value, gate = u.permute(0, 2, 3, 1).reshape(B, N, -1).chunk(2, dim=-1)  # (B, N, h) each
        glu = value * F.silu(gate, inplace=inplace)  # (B, N, h), contiguous (what `linear`'s oneDNN path reads)
        return linear(glu, pt.weight.flatten(1))  # (B, N, D)
