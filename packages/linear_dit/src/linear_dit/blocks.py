"""The Sana block (adaLN-single + linear self-attention + cross-attention + Mix-FFN) and the final layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linear_dit.attention import CrossAttention, LinearSelfAttention
from linear_dit.ffn import MixFFN

LAYER_NORM_EPS = 1e-6  # the blocks' and final layer's affine-free LayerNorms


def _modulate(x: Tensor, shift: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """LN(x)·(1 + scale) + shift with shift/scale (B, 1, D), one fused op after the LN, cast to the branch dtype."""
    return torch.addcmul(shift, F.layer_norm(x, x.shape[-1:], eps=LAYER_NORM_EPS), 1 + scale).to(dtype)


class SanaBlock(nn.Module):
    """Sana spec §3.5: x += g1·LiteLA(mod(LN x)); x += CrossAttn(x, y); x += g2·MixFFN(mod(LN x))."""

    def __init__(
        self,
        dim: int,
        head_dim: int,
        cross_heads: int,
        mlp_hidden: int,
        *,
        eps: float,
        qk_norm: bool,
        cross_norm: bool,
        clamp_fp16: bool,
    ) -> None:
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)
        self.attn = LinearSelfAttention(dim, head_dim, eps=eps, qk_norm=qk_norm, clamp_fp16=clamp_fp16)
        self.cross_attn = CrossAttention(dim, cross_heads, qk_norm=cross_norm)
        self.mlp = MixFFN(dim, mlp_hidden)

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        t0: Tensor,
        bias: Tensor | None,
        hw: tuple[int, int],
        identity_rows: Tensor | None = None,
    ) -> Tensor:
        """x (B, N, D), y (B, L, D), t0 (B, 6D) adaLN-single output, bias (B, 1, 1, L) or None → (B, N, D).

        The residual stream x may be fp32 while the weights are half precision: each branch then reads x cast to
        the weights' dtype and its output is accumulated into x without rounding x to half precision.
        """
        B, dtype = x.shape[0], y.dtype
        mods = (self.scale_shift_table[None] + t0.view(B, 6, -1)).chunk(6, dim=1)  # 6 × (B, 1, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        x = torch.addcmul(x, gate_msa, self.attn(_modulate(x, shift_msa, scale_msa, dtype), identity_rows))
        x = x + self.cross_attn(x.to(dtype), y, bias)
        return torch.addcmul(x, gate_mlp, self.mlp(_modulate(x, shift_mlp, scale_mlp, dtype), hw))


class FinalLayer(nn.Module):
    """T2IFinalLayer: LN, modulated by the timestep embedding t_emb (not t0), then Linear(D → p²·C_z)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        """x (B, N, D) residual stream (fp32 when the weights are half precision), t_emb (B, D) → (B, N, p²·C_z)
        in the weights' dtype. It runs in fp32 whatever the weights' dtype (D·p²·C_z MACs per token, ~0.1% of a
        forward), so between the fp32 residual stream and the output only the output itself is rounded."""
        shift, scale = (self.scale_shift_table[None] + t_emb[:, None]).chunk(2, dim=1)  # (B, 1, D) each
        w, b = self.linear.weight, self.linear.bias
        out = F.linear(_modulate(x.float(), shift.float(), scale.float(), torch.float32), w.float(), b.float())
        return out.to(w.dtype)  # (B, N, p²·C_z)
