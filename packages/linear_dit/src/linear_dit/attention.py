"""Attention for the Linear DiT: ReLU linear self-attention (Sana's LiteLA) and softmax cross-attention.

Module and parameter names follow the official Sana checkpoint (`attn.qkv`, `attn.proj`, `cross_attn.q_linear`,
`cross_attn.kv_linear`, `cross_attn.proj`), so the `.pth` keys load by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linear_dit.ops import Linear

SANA_LINEAR_ATTENTION_EPS = 1e-8  # what Sana's blocks pass to LiteLA (its class default and diffusers: 1e-15)
FP16_MAX = 65504.0  # largest finite fp16; fp16-trained Sana-1.0 weights depend on clamping to it
MASKED_BIAS = -10000.0  # additive cross-attention bias of padding tokens, as in Sana's and diffusers' SDPA path
# Up to this many tokens (and whenever gradients flow) linear attention runs as one batched product; above it, at
# inference, a per-sample loop of strided bmms avoids layout copies. Kernel timings on 2 AVX2 cores, 2 threads:
# B=32 N=64 fwd+bwd 28 -> 11 ms; B=32 N=64 fwd 4.7 -> 3.1 ms; B=2 N=1024 fwd 16 ms looped vs 20 ms batched.
BATCHED_MAX_TOKENS = 128


def relu_linear_attention(q: Tensor, k: Tensor, v: Tensor, eps: float = SANA_LINEAR_ATTENTION_EPS) -> Tensor:
    """ReLU linear attention: `out_i = Σ_j v_j φ(k_j)ᵀφ(q_i) / (Σ_j φ(k_j)ᵀφ(q_i) + eps)` with `φ = ReLU`.

    Sana spec §3.7. Costs O(N·hd²) per head: the (hd, hd) key-value summary is formed first, never the N×N map.
    The whole computation is an fp32 island: under bf16/fp16 the sums over N tokens overflow or lose the
    normaliser, so q, k, v are upcast and the division happens in fp32 (as Sana's `fp32_attention` and
    diffusers do). The normaliser `φ(q)·Σ_j φ(k_j)` is written explicitly rather than through Sana's
    "pad V with a row of ones" trick; both give the same sums.

    Args:
        q: (B, nh, N, hd) queries, any float dtype and strides (a head view of a fused qkv projection is fine).
        k: (B, nh, M, hd) keys.
        v: (B, nh, M, hd) values.
        eps: added to the normaliser; Sana's blocks use 1e-8, diffusers and DC-AE 1e-15.

    Returns:
        (B, nh, N, hd) float32. At inference with more than `BATCHED_MAX_TOKENS` tokens its memory is laid out as
        (B, N, nh, hd), so `out.transpose(1, 2).reshape(B, N, nh * hd)` is free.
    """
    B, N, hd = q.shape[0], q.shape[2], q.shape[-1]
    q, k, v = F.relu(q.float()), F.relu(k.float()), v.float()  # fp32 island (see docstring)
    if N <= BATCHED_MAX_TOKENS or (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        # few tokens, or autograd: one batched product over (B, nh). The per-sample loop below would cost B
        # slice + select-backward round trips (this kernel's fwd+bwd at B=32, N=64: 2.5x slower)
        kv = torch.matmul(k.transpose(-2, -1), v)  # (B, nh, hd, hd)
        k_sum = k.sum(dim=-2).unsqueeze(-1)  # (B, nh, hd, 1)
        o = torch.matmul(q, torch.cat([kv, k_sum], dim=-1))  # (B, nh, N, hd + 1)
        return o[..., :hd] / (o[..., hd:] + eps)
    outs = []
    for b in range(B):  # per sample: (nh, ·, ·) strided batched matmuls need no layout copies
        kv = torch.bmm(k[b].transpose(1, 2), v[b])  # (nh, hd, hd) = Σ_j φ(k_j) v_jᵀ
        k_sum = k[b].sum(dim=1).unsqueeze(-1)  # (nh, hd, 1) = Σ_j φ(k_j)
        o = torch.bmm(q[b], torch.cat([kv, k_sum], dim=-1))  # (nh, N, hd + 1): numerator | normaliser
        outs.append((o[..., :hd] / (o[..., hd:] + eps)).transpose(0, 1))  # (N, nh, hd)
    return torch.stack(outs).transpose(1, 2)  # (B, nh, N, hd), stored as (B, N, nh, hd)


class RMSNorm(nn.Module):
    """RMSNorm over the last axis, computed in fp32 (mean of squares underflows in half precision)."""

    def __init__(self, dim: int, eps: float, init: float = 1.0) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


class LinearSelfAttention(nn.Module):
    """Sana's LiteLA: fused qkv (no bias), ReLU linear attention over heads of width hd, output projection.

    `identity_rows` implements perturbed-attention guidance (spec §4.4): those batch rows use the identity
    attention map, i.e. their output is `proj(V)`.
    """

    def __init__(self, dim: int, head_dim: int, eps: float, qk_norm: bool, clamp_fp16: bool) -> None:
        super().__init__()
        self.heads, self.eps, self.clamp_fp16 = dim // head_dim, eps, clamp_fp16
        self.qkv = Linear(dim, 3 * dim, bias=False)
        self.proj = Linear(dim, dim)
        self.q_norm = RMSNorm(dim, eps=1e-5) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(dim, eps=1e-5) if qk_norm else nn.Identity()

    def forward(self, x: Tensor, identity_rows: Tensor | None = None) -> Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # (B, N, D) each, views of one buffer
        q, k = self.q_norm(q), self.k_norm(k)
        heads = (B, N, self.heads, D // self.heads)
        o = relu_linear_attention(*(t.view(heads).transpose(1, 2) for t in (q, k, v)), eps=self.eps)
        o = o.transpose(1, 2).reshape(B, N, D).to(x.dtype)  # (B, N, D)
        if identity_rows is not None:  # PAG: identity attention map for these rows
            o = torch.where(identity_rows[:, None, None], v, o)
        out = self.proj(o)
        if self.clamp_fp16:  # a checkpoint property (fp16-trained weights), not a compute-dtype decision
            out = out.clamp(-FP16_MAX, FP16_MAX)
        return out


class CrossAttention(nn.Module):
    """Softmax cross-attention from image tokens to text tokens (PixArt style, no norm or modulation)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.heads = heads
        self.q_linear = Linear(dim, dim)
        self.kv_linear = Linear(dim, 2 * dim)
        self.proj = Linear(dim, dim)
        self.q_norm = RMSNorm(dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(dim, eps=1e-6) if qk_norm else nn.Identity()

    def forward(self, x: Tensor, y: Tensor, bias: Tensor | None) -> Tensor:
        """x (B, N, D) image tokens, y (B, L, D) projected text, bias (B, 1, 1, L) additive mask or None."""
        B, N, D = x.shape
        L = y.shape[1]
        q = self.q_norm(self.q_linear(x)).view(B, N, self.heads, -1).transpose(1, 2)  # (B, nh, N, hd)
        k, v = self.kv_linear(y).chunk(2, dim=-1)  # (B, L, D) each
        k = self.k_norm(k).view(B, L, self.heads, -1).transpose(1, 2)  # (B, nh, L, hd)
        v = v.view(B, L, self.heads, -1).transpose(1, 2)  # (B, nh, L, hd)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, nh, N, hd)
        return self.proj(o.transpose(1, 2).reshape(B, N, D))
