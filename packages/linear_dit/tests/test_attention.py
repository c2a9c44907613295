"""The ReLU linear-attention kernel against its definition and against Sana's padded-V formulation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from linear_dit import relu_linear_attention
from linear_dit.attention import BATCHED_MAX_TOKENS


def _quadratic(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """The definition with the N×M map spelled out, in float64."""
    q, k, v = F.relu(q.double()), F.relu(k.double()), v.double()
    scores = q @ k.transpose(-1, -2)  # (B, nh, N, M)
    return (scores @ v) / (scores.sum(-1, keepdim=True) + eps)


def _padded_v(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """Sana's LiteLA: V padded with a row of ones, (V' φ(K)ᵀ) φ(Q), then numerator / (last row + eps)."""
    q, k, v = (t.transpose(-1, -2).float() for t in (F.relu(q), F.relu(k), v))  # (B, nh, hd, ·)
    v = F.pad(v, (0, 0, 0, 1), value=1.0)  # (B, nh, hd + 1, M)
    out = (v @ k.transpose(-1, -2)) @ q  # (B, nh, hd + 1, N)
    return (out[:, :, :-1] / (out[:, :, -1:] + eps)).transpose(-1, -2)


def test_matches_the_definition_and_sanas_formulation() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 32, generator=g) for n in (7, 11, 11))  # N != M
    out = relu_linear_attention(q, k, v, eps=1e-8)
    assert out.shape == (2, 3, 7, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _quadratic(q, k, v, 1e-8), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, _padded_v(q, k, v, 1e-8), rtol=1e-5, atol=1e-6)


def test_accepts_strided_head_views_and_lays_out_tokens_first() -> None:
    B, N, nh, hd = 2, BATCHED_MAX_TOKENS + 9, 4, 8  # above the threshold: the per-sample loop
    qkv = torch.randn(B, N, 3 * nh * hd)
    q, k, v = (t.view(B, N, nh, hd).transpose(1, 2) for t in qkv.chunk(3, dim=-1))  # strided (B, nh, N, hd)
    out = relu_linear_attention(q, k, v)
    torch.testing.assert_close(out, relu_linear_attention(q.contiguous(), k.contiguous(), v.contiguous()))
    assert out.transpose(1, 2).is_contiguous()  # (B, N, nh, hd) memory: merging heads is free


def test_batched_and_per_sample_paths_agree_in_value_and_gradient() -> None:
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(3, 2, BATCHED_MAX_TOKENS + 5, 16, generator=g) for _ in range(3))
    looped = relu_linear_attention(q, k, v)  # no grad needed, many tokens: the per-sample loop
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    batched = relu_linear_attention(*leaves)  # gradients flow: the batched product
    torch.testing.assert_close(batched.detach(), looped, rtol=1e-5, atol=1e-6)
    few = [t[:, :, :BATCHED_MAX_TOKENS] for t in (q, k, v)]  # few tokens: batched even without grad
    torch.testing.assert_close(relu_linear_attention(*few).double(), _quadratic(*few, 1e-8), rtol=1e-5, atol=1e-6)
    weights = torch.randn(batched.shape, generator=g)
    (batched * weights).sum().backward()
    exact = [t.double().requires_grad_() for t in (q, k, v)]
    (_quadratic(*exact, 1e-8) * weights.double()).sum().backward()
    for mine, ref in zip(leaves, exact, strict=True):
        torch.testing.assert_close(mine.grad.double(), ref.grad, rtol=1e-4, atol=1e-5)


def test_eps_only_matters_when_a_query_sees_no_key() -> None:
    q = torch.randn(1, 1, 4, 8)
    q[0, 0, 0] = -q[0, 0, 0].abs()  # φ(q) = 0: numerator and normaliser are both 0
    k, v = torch.rand(1, 1, 6, 8), torch.randn(1, 1, 6, 8)
    a, b = relu_linear_attention(q, k, v, eps=1e-15), relu_linear_attention(q, k, v, eps=1e-8)
    assert torch.equal(a[0, 0, 0], torch.zeros(8)) and torch.equal(b[0, 0, 0], torch.zeros(8))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_half_inputs_are_computed_in_fp32() -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = (10 * torch.randn(1, 2, 300, 32, generator=g) for _ in range(3))
    exact = relu_linear_attention(q, k, v)
    half = relu_linear_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert ((half - exact).norm() / exact.norm()) < 1e-2  # only the bf16 rounding of the inputs remains
