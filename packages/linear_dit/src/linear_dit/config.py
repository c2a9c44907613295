"""The Linear DiT architecture description: one frozen dataclass, validated on construction.

A config describes the module graph (and so the parameter names and shapes) plus the checkpoint properties
that travel with the weights: `trained_dtype` (which decides the fp16 clamp) and `pag_layers`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

PosEmbed = Literal["none", "sincos"]  # NoPE (Sana 512/1024) or the recomputed 2D sin-cos table (2K/4K)
DType = Literal["float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class LinearDiTConfig:
    """A SanaMS graph (Sana spec §3). Defaults are Sana-0.6B at 512/1024 px (NoPE)."""

    in_channels: int = 32  # C_z, must equal the autoencoder's latent channels
    patch_size: int = 1  # p; tokens N = (h / p) * (w / p)
    hidden_size: int = 1152  # D
    depth: int = 28  # number of blocks
    linear_head_dim: int = 32  # hd of the linear self-attention; nh = D / hd
    cross_attention_heads: int = 16  # softmax cross-attention heads (head width D / heads)
    mlp_ratio: float = 2.5  # Mix-FFN hidden = int(mlp_ratio * D)
    caption_channels: int = 2304  # D_txt of the text encoder (gemma-2-2b-it)
    text_length: int = 300  # L of the stored null caption `y_embedding`
    pos_embed: PosEmbed = "none"
    pe_base_size: int = 32  # sin-cos grid side in tokens: each axis is squashed onto [0, base) / interpolation
    pe_interpolation: float = 1.0  # 1.0 for 2K, 2.0 for 4K
    qk_norm: bool = False  # RMSNorm on linear-attention q and k (Sana-1.5)
    cross_norm: bool = False  # RMSNorm on cross-attention q and k (Sana-1.5)
    attention_eps: float = 1e-8  # linear-attention normaliser eps: Sana blocks pass 1e-8 (diffusers: 1e-15)
    y_norm_scale: float = 0.01  # initial weight of the caption RMSNorm (`y_norm_scale_factor`)
    trained_dtype: DType | None = None  # precision the weights were trained in; None = unknown
    pag_layers: tuple[int, ...] = (14,)  # blocks perturbed by PAG unless the call names others (checked at call)

    def __post_init__(self) -> None:
        for name in ("in_channels", "patch_size", "hidden_size", "depth", "linear_head_dim"):
            _check_positive_int(name, getattr(self, name))
        for name in ("cross_attention_heads", "caption_channels", "text_length", "pe_base_size"):
            _check_positive_int(name, getattr(self, name))
        _check_literal("pos_embed", self.pos_embed, PosEmbed)
        if self.trained_dtype is not None:
            _check_literal("trained_dtype", self.trained_dtype, DType)
        if self.hidden_size % self.linear_head_dim:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of linear_head_dim {self.linear_head_dim}"
            )
        if self.hidden_size % self.cross_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"cross_attention_heads {self.cross_attention_heads}"
            )
        if self.pos_embed == "sincos" and self.hidden_size % 4:
            raise ValueError(f"the 2D sin-cos embedding needs hidden_size divisible by 4, got {self.hidden_size}")
        if not (self.mlp_ratio > 0 and self.pe_interpolation > 0 and self.attention_eps >= 0):
            raise ValueError("mlp_ratio and pe_interpolation must be > 0 and attention_eps >= 0")
        if any(i < 0 for i in self.pag_layers):
            raise ValueError(f"pag_layers must be block indices >= 0, got {self.pag_layers}")

    @property
    def linear_heads(self) -> int:
        """nh of the linear self-attention."""
        return self.hidden_size // self.linear_head_dim

    @property
    def mlp_hidden(self) -> int:
        """Mix-FFN hidden width h (the inverted conv outputs 2h: value and gate)."""
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def clamps_fp16(self) -> bool:
        """fp16-trained Sana-1.0 weights rely on the ±65504 clamp of the self-attention output in any dtype."""
        return self.trained_dtype == "float16"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinearDiTConfig:
        """Inverse of `to_dict`; unknown keys raise `KeyError` listing the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise KeyError(f"unknown LinearDiTConfig fields {unknown}; valid fields: {sorted(names)}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fixed)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_literal(name: str, value: Any, kind: Any) -> None:
    allowed = get_args(kind)
    if value not in allowed:
        raise ValueError(f"{name}: {value!r} not in {allowed}")
