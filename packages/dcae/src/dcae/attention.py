"""Multi-scale ReLU linear attention ("LiteMLA", EfficientViT; Sana spec §2.2 and §3.7).

The two attention cores are plain functions over `(B, nh, hd, N)` tensors so that other packages (the linear
DiT) can check their own kernel against this one numerically. Both run in an fp32 island.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dcae.norms import PointwiseConv, make_norm

LINEAR_ATTENTION_EPS = 1e-15  # DC-AE's (and diffusers') normaliser eps; the linear DiT uses its own


def relu_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = LINEAR_ATTENTION_EPS
) -> torch.Tensor:
    """ReLU-kernel linear attention: out_i = Σ_j v_j φ(k_j)·φ(q_i) / (Σ_j φ(k_j)·φ(q_i) + eps), φ = ReLU.

    Args:
        q: (B, nh, hd, N) queries, before the ReLU kernel. Any float dtype.
        k: (B, nh, hd, N) keys, before the ReLU kernel.
        v: (B, nh, hd_v, N) values.
        eps: added to the normaliser.

    Returns:
        (B, nh, hd_v, N) in q's dtype. Cost O(N·hd·hd_v); no N×N matrix is formed.
    """
    dtype = q.dtype
    # fp32 island: the normaliser is a sum over all N positions; in fp16 it overflows, in bf16 the division
    # loses most of its precision (efficientvit#15/#110). The normaliser is written out explicitly instead of
    # padding v with a row of ones: same numbers, one fewer copy of v, and no negative slicing for exporters.
    q, k, v = F.relu(q.float()), F.relu(k.float()), v.float()
    kv = torch.matmul(v, k.transpose(-1, -2))  # (B, nh, hd_v, hd)
    numerator = torch.matmul(kv, q)  # (B, nh, hd_v, N)
    k_sum = k.sum(dim=-1, keepdim=True).transpose(-1, -2)  # (B, nh, 1, hd)
    normaliser = torch.matmul(k_sum, q)  # (B, nh, 1, N)
    return (numerator / (normaliser + eps)).to(dtype)


def relu_quadratic_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = LINEAR_ATTENTION_EPS
) -> torch.Tensor:
    """The same ReLU-kernel attention with the N×N matrix formed; used when N ≤ hd, where it is cheaper.

    Shapes and dtype as in `relu_linear_attention`.
    """
    dtype = q.dtype
    # fp32 island, as in relu_linear_attention.
    q, k, v = F.relu(q.float()), F.relu(k.float()), v.float()
    scores = torch.matmul(k.transpose(-1, -2), q)  # (B, nh, N_keys, N_queries)
    scores = scores / (scores.sum(dim=2, keepdim=True) + eps)
    return torch.matmul(v, scores).to(dtype)  # (B, nh, hd_v, N)


class MultiScaleQKV(nn.Module):
    """Aggregates q, k, v over a k×k neighbourhood: depthwise k×k conv, then a 1×1 conv grouped per head."""

    def __init__(self, channels: int, heads: int, kernel_size: int) -> None:
        super().__init__()
        self.spatial = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False)
        self.grouped = nn.Conv2d(channels, channels, 1, groups=3 * heads, bias=False)

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        x = self.spatial(qkv)  # (B, 3C, H, W)
        B, C3, H, W = x.shape
        groups = self.grouped.groups
        # The grouped 1×1 conv as one batched matmul: PyTorch's CPU conv runs it as a loop of per-group im2col
        # convs, ~20% of the whole encoder's time for a few MFLOPs of work.
        weight = self.grouped.weight.view(groups, C3 // groups, C3 // groups)  # (G, out_g, in_g)
        x = torch.matmul(weight, x.reshape(B, groups, C3 // groups, H * W))  # (B, G, out_g, N)
        return x.view(B, C3, H, W)


class LiteMLA(nn.Module):
    """Multi-scale ReLU linear attention over the pixels of a feature map, with projection and norm.

    The qkv channels are read as heads of 3·hd channels ordered [q, k, v]; each aggregation scale adds as many
    heads again, all of which attend independently before one 1×1 projection mixes them.
    """

    def __init__(self, channels: int, head_dim: int, scales: tuple[int, ...], norm: str) -> None:
        super().__init__()
        heads = channels // head_dim
        self.head_dim = head_dim
        self.qkv = PointwiseConv(channels, 3 * channels, bias=False)
        self.aggreg = nn.ModuleList(MultiScaleQKV(3 * channels, heads, k) for k in scales)
        self.proj = PointwiseConv(channels * (1 + len(scales)), channels, bias=False)
        self.norm = make_norm(norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        qkv = self.qkv(x)  # (B, 3C, H, W)
        qkv = torch.cat([qkv, *(agg(qkv) for agg in self.aggreg)], dim=1)  # (B, 3C(1+S), H, W)
        qkv = qkv.reshape(B, -1, 3 * self.head_dim, H * W)  # (B, nh(1+S), 3hd, N)
        q, k, v = qkv.chunk(3, dim=2)  # each (B, nh(1+S), hd, N)
        # Tiny maps (the deepest stage of a small image): the N×N form is cheaper and is what upstream runs.
        n_pixels = H * W
        attend = relu_quadratic_attention if n_pixels <= self.head_dim else relu_linear_attention
        out = attend(q, k, v)  # (B, nh(1+S), hd, N)
        out = out.reshape(B, -1, H, W)  # (B, C(1+S), H, W)
        return self.norm(self.proj(out))  # (B, C, H, W)
