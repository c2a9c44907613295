"""Named Linear DiT architectures (Sana spec §3.1, §3.14). Parameter counts are pinned in tests/test_presets.py.

The 2K/4K variants differ only in the recomputed sin-cos positional embedding (spec §3.4): base grid 64 tokens
(2048 px / 32) with interpolation 1.0, or base 128 with interpolation 2.0 (positions then span the 2K range).
"""

from __future__ import annotations

from dataclasses import replace

from linear_dit.config import LinearDiTConfig

SANA_600M = LinearDiTConfig(hidden_size=1152, depth=28, cross_attention_heads=16, pag_layers=(14,))
SANA_1600M = LinearDiTConfig(hidden_size=2240, depth=20, cross_attention_heads=20, pag_layers=(8,))
SANA_4800M = LinearDiTConfig(  # Sana-1.5
    hidden_size=2240, depth=60, cross_attention_heads=20, qk_norm=True, cross_norm=True, pag_layers=(14,)
)

# The embedded default model's backbone (sana.embedded): 8 blocks of width 192 (5.1 M parameters) on 8×8-token
# latents (256 px at f32), sin-cos positions so a model this small learns "left of" quickly. Its caption width
# comes from its text encoder (128 for the shipped one). A training step (batch 32, AdamW) takes 1.2 s on 2 CPU
# cores; width 256 was 1.7 s.
SANA_SHAPES = LinearDiTConfig(
    hidden_size=192,
    depth=8,
    cross_attention_heads=6,
    caption_channels=128,
    text_length=32,
    pos_embed="sincos",
    pe_base_size=8,
    pag_layers=(4,),
)


def _pe_2k(c: LinearDiTConfig) -> LinearDiTConfig:
    return replace(c, pos_embed="sincos", pe_base_size=64, pe_interpolation=1.0)


def _pe_4k(c: LinearDiTConfig) -> LinearDiTConfig:
    return replace(c, pos_embed="sincos", pe_base_size=128, pe_interpolation=2.0)


PRESETS: dict[str, LinearDiTConfig] = {
    "sana-600m": SANA_600M,
    "sana-600m-2k": _pe_2k(SANA_600M),
    "sana-600m-4k": _pe_4k(SANA_600M),
    "sana-1600m": SANA_1600M,
    "sana-1600m-2k": _pe_2k(SANA_1600M),
    "sana-1600m-4k": _pe_4k(SANA_1600M),
    "sana-1.5-4800m": SANA_4800M,
    "sana-shapes": SANA_SHAPES,
}


def get_preset(name: str) -> LinearDiTConfig:
    """The preset called `name`; an unknown name raises `KeyError` listing the valid ones."""
    if name not in PRESETS:
        raise KeyError(f"unknown Linear DiT preset {name!r}; valid presets: {sorted(PRESETS)}")
    return PRESETS[name]
