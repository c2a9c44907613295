"""The DC-AE architecture description: one frozen dataclass, validated on construction.

A config describes the module graph (and so the parameter names and shapes) plus two checkpoint properties
that travel with the weights: `scaling_factor` and `trained_dtype`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

BlockType = Literal["res", "evit"]  # ResBlock (conv-conv) or EfficientViT block (linear attention + GLU MBConv)
Norm = Literal["rms", "batch"]  # RMSNorm2d with bias ("trms2d"), or BatchNorm2d
Act = Literal["silu", "relu"]
Downsample = Literal["conv", "pixel_unshuffle"]  # 3x3 stride-2 conv, or 3x3 conv then pixel-unshuffle
Upsample = Literal["interpolate", "pixel_shuffle"]  # nearest x2 then 3x3 conv, or 3x3 conv then pixel-shuffle
DType = Literal["float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class DCAEConfig:
    """A DC-AE graph. Per-stage tuples are indexed by stage, shallowest (full resolution) first.

    Stage `i` runs at resolution `H / 2**i`; the encoder downsamples after every stage but the last, the
    decoder upsamples before every stage but the deepest. A stage of depth 0 (the in/mix family's stage 0)
    moves its resolution change into the project-in / project-out convolution (pixel-(un)shuffle).
    """

    widths: tuple[int, ...]  # channels per stage
    encoder_depths: tuple[int, ...]  # blocks per encoder stage
    decoder_depths: tuple[int, ...]  # blocks per decoder stage
    encoder_blocks: tuple[BlockType, ...]
    decoder_blocks: tuple[BlockType, ...]
    encoder_scales: tuple[tuple[int, ...], ...]  # multi-scale qkv aggregation kernel sizes (EViT stages)
    decoder_scales: tuple[tuple[int, ...], ...]
    decoder_norms: tuple[Norm, ...]  # the encoder always uses "rms"
    decoder_acts: tuple[Act, ...]  # the encoder always uses "silu"
    downsample: Downsample
    upsample: Upsample
    latent_channels: int = 32  # C_z
    in_channels: int = 3  # C
    head_dim: int = 32  # hd of the linear attention
    scaling_factor: float = 1.0  # diffusion latents = raw latents * scaling_factor (applied outside dcae)
    trained_dtype: DType = "bfloat16"  # precision the weights were trained in (metadata)
    name: str = "custom"

    def __post_init__(self) -> None:
        n = len(self.widths)
        per_stage = ("encoder_depths", "decoder_depths", "encoder_blocks", "decoder_blocks")
        per_stage += ("encoder_scales", "decoder_scales", "decoder_norms", "decoder_acts")
        for field in per_stage:
            if len(getattr(self, field)) != n:
                raise ValueError(f"{field} has {len(getattr(self, field))} entries, widths has {n}")
        for field, kind in [("encoder_blocks", BlockType), ("decoder_blocks", BlockType)]:
            _check_literals(field, getattr(self, field), kind)
        _check_literals("decoder_norms", self.decoder_norms, Norm)
        _check_literals("decoder_acts", self.decoder_acts, Act)
        _check_literals("downsample", (self.downsample,), Downsample)
        _check_literals("upsample", (self.upsample,), Upsample)
        _check_literals("trained_dtype", (self.trained_dtype,), DType)
        if n < 2:
            raise ValueError("a DC-AE needs at least two stages")
        for depths in (self.encoder_depths, self.decoder_depths):
            if any(d < 0 for d in depths) or any(d == 0 for d in depths[1:]):
                raise ValueError(f"only stage 0 may have depth 0, got {depths}")
        if (self.encoder_depths[0] == 0) != (self.decoder_depths[0] == 0):
            raise ValueError("encoder and decoder must agree on whether stage 0 is empty")
        for blocks, scales in [
            (self.encoder_blocks, self.encoder_scales),
            (self.decoder_blocks, self.decoder_scales),
        ]:
            for i, (block, width) in enumerate(zip(blocks, self.widths)):
                if block == "evit" and width % self.head_dim:
                    raise ValueError(f"stage {i}: width {width} is not a multiple of head_dim {self.head_dim}")
                if block == "res" and scales[i]:
                    raise ValueError(f"stage {i}: multi-scale kernels given for a ResBlock stage")
        if self.widths[-1] % self.latent_channels:
            raise ValueError("the deepest width must be a multiple of latent_channels (channel-average shortcut)")
        for i in range(n - 1):
            lo, hi = self.widths[i], self.widths[i + 1]
            if (4 * lo) % hi:  # group size of the averaging / repeat count of the duplicating shortcut
                raise ValueError(f"widths {lo}->{hi} do not allow the space-to-channel shortcut")
        if self.downsample == "pixel_unshuffle" and any(w % 4 for w in self.widths):
            raise ValueError("pixel_unshuffle downsampling needs widths divisible by 4")

    @property
    def spatial_compression(self) -> int:
        """f: the encoder halves the resolution len(widths) - 1 times."""
        return 2 ** (len(self.widths) - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DCAEConfig:
        """Inverse of `to_dict`; unknown keys raise `KeyError` listing the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise KeyError(f"unknown DCAEConfig fields {unknown}; valid fields: {sorted(names)}")
        fixed = {k: _tupled(v) for k, v in data.items()}
        return cls(**fixed)


def _tupled(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value


def _check_literals(field: str, values: tuple, kind: Any) -> None:
    allowed = get_args(kind)
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"{field}: {bad} not in {allowed}")
