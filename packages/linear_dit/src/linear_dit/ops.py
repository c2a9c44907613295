"""`linear`: F.linear, routed through oneDNN's 1×1 convolution where that is the faster CPU GEMM.

On an AVX-512 CPU (AMD EPYC Zen 4 with AVX512-BF16, torch 2.13, 2 threads) oneDNN's fp32 1×1 convolution ran the
Linear DiT's token GEMMs at 170–208 GFLOP/s where `F.linear` (MKL sgemm) reached 130–175, for 512 to 2048 rows,
and in bf16 at 409–436 against 376–413 GFLOP/s from 1024 rows on (`F.linear` is oneDNN's matmul there; below 1024
rows it was as fast or faster). The convolution reads the (B, N, K) activations as a channels-last (B, K, 1, N)
view and writes (B, N, K') memory, so no layout copies are made. On AVX2 CPUs MKL was the faster fp32 one (the
earlier measurements in docs/performance.md) and bf16 is emulated, so everything else stays on `F.linear`.
Inference only: under autograd `F.linear` is kept, so training numerics and speed do not depend on this route.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Fewest (B·N) rows for the oneDNN route, per dtype: below these the two kernels were within noise or MKL won.
ONEDNN_MIN_ROWS = {torch.float32: 256, torch.bfloat16: 1024}


@functools.cache
def native_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@functools.cache
def _onednn_faster(dtype: torch.dtype) -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.float32:
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    return dtype == torch.bfloat16 and native_bf16()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear(x, weight, bias)` for x (B, N, K) with K contiguous; same maths, possibly another kernel."""
    if (
        x.device.type == "cpu"
        and x.ndim == 3
        and x.shape[0] * x.shape[1] >= ONEDNN_MIN_ROWS.get(x.dtype, 1 << 62)
        and x.is_contiguous()
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and _onednn_faster(x.dtype)
    ):
        B, N, _ = x.shape
        out = F.conv2d(x.unsqueeze(1).permute(0, 3, 1, 2), weight[:, :, None, None], bias)  # (B, K', 1, N)
        return out.permute(0, 2, 3, 1).reshape(B, N, -1)  # channels-last output: a free view
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear whose forward is `linear` (still an nn.Linear: initialisation and peft's LoRA treat it as one)."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
