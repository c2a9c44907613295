"""Style §4.2: the ReLU linear attention is duplicated on purpose in dcae and linear_dit; this test keeps the
two kernels numerically equal (same maths, different tensor layouts and default eps)."""

from __future__ import annotations

import pytest
import torch

from dcae.attention import relu_linear_attention as dcae_attention
from linear_dit.attention import relu_linear_attention as dit_attention


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """The N×N definition in float64, (B, nh, N, hd) layout."""
    q, k, v = q.double().relu(), k.double().relu(), v.double()
    scores = q @ k.transpose(-1, -2)  # (B, nh, N, M)
    return (scores @ v) / (scores.sum(-1, keepdim=True) + eps)


@pytest.mark.parametrize("eps", [1e-15, 1e-8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dcae_and_linear_dit_kernels_agree(eps: float, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 50, 8, generator=g).to(dtype) for _ in range(3))  # (B, nh, N, hd)
    ours_dit = dit_attention(q, k, v, eps=eps).float()  # (B, nh, N, hd)
    ours_dcae = dcae_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2), eps=eps)
    ours_dcae = ours_dcae.transpose(-1, -2).float()  # (B, nh, hd, N) -> (B, nh, N, hd)
    ref = _reference(q, k, v, eps).float()
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: dcae casts its output back to bf16
    assert torch.allclose(ours_dit, ref, atol=1e-5)
    assert torch.allclose(ours_dcae, ref, atol=tol, rtol=tol)
    assert torch.allclose(ours_dit, ours_dcae, atol=tol, rtol=tol)


def test_all_zero_keys_give_zero_not_nan() -> None:
    """A row whose ReLU kernel is all zero has normaliser 0: eps keeps the output finite in both kernels."""
    q, k, v = torch.randn(1, 1, 4, 8), -torch.rand(1, 1, 4, 8), torch.randn(1, 1, 4, 8)
    a = dit_attention(q, k, v, eps=1e-15)
    b = dcae_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2), eps=1e-15).transpose(-1, -2)
    assert torch.isfinite(a).all() and torch.isfinite(b).all() and a.abs().max() == 0 and b.abs().max() == 0
