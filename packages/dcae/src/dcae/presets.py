"""Named DC-AE graphs (efficientvit's naming: compression, latent channels, training set, version).

`SANA_LATENT_SCALE` is the one place the Sana autoencoder's latent scaling factor is written. The in/mix
presets carry `scaling_factor=1.0`: their released diffusers folders hold the factor in `config.json`, which
`load_dcae` reads, so no unverified number is restated here.
"""

from __future__ import annotations

import dataclasses

from dcae.config import DCAEConfig

SANA_LATENT_SCALE = 0.41407  # 1 / RMS of Sana DC-AE latents; the checkpoint property of dc-ae-f32c32-sana-1.x

DC_AE_F32C32_SANA_1_0 = DCAEConfig(
    widths=(128, 256, 512, 512, 1024, 1024),
    encoder_depths=(2, 2, 2, 3, 3, 3),
    decoder_depths=(3, 3, 3, 3, 3, 3),
    encoder_blocks=("res", "res", "res", "evit", "evit", "evit"),
    decoder_blocks=("res", "res", "res", "evit", "evit", "evit"),
    encoder_scales=((), (), (), (5,), (5,), (5,)),
    decoder_scales=((), (), (), (5,), (5,), (5,)),
    decoder_norms=("rms",) * 6,
    decoder_acts=("silu",) * 6,
    downsample="conv",
    upsample="interpolate",
    latent_channels=32,
    scaling_factor=SANA_LATENT_SCALE,
    trained_dtype="bfloat16",
    name="dc-ae-f32c32-sana-1.0",
)
# Same graph and encoder, better decoder weights; drops into models trained with 1.0.
DC_AE_F32C32_SANA_1_1 = dataclasses.replace(DC_AE_F32C32_SANA_1_0, name="dc-ae-f32c32-sana-1.1")


def _in_mix(name: str, stages: int, latent_channels: int) -> DCAEConfig:
    """The ImageNet ("in") / mixed-data ("mix") family: 6, 7 or 8 stages, empty stage 0, no multi-scale."""
    extra = stages - 6
    return DCAEConfig(
        widths=(128, 256, 512, 512, 1024, 1024) + (2048,) * extra,
        encoder_depths=(0, 4, 8, 2, 2, 2) + (2,) * extra,
        decoder_depths=(0, 5, 10, 2, 2, 2) + (2,) * extra,
        encoder_blocks=("res",) * 3 + ("evit",) * (3 + extra),
        decoder_blocks=("res",) * 3 + ("evit",) * (3 + extra),
        encoder_scales=((),) * stages,
        decoder_scales=((),) * stages,
        decoder_norms=("batch",) * 3 + ("rms",) * (3 + extra),
        decoder_acts=("relu",) * 3 + ("silu",) * (3 + extra),
        downsample="pixel_unshuffle",
        upsample="pixel_shuffle",
        latent_channels=latent_channels,
        name=name,
    )


PRESETS: dict[str, DCAEConfig] = {
    "dc-ae-f32c32-sana-1.0": DC_AE_F32C32_SANA_1_0,
    "dc-ae-f32c32-sana-1.1": DC_AE_F32C32_SANA_1_1,
    "dc-ae-f32c32-in-1.0": _in_mix("dc-ae-f32c32-in-1.0", 6, 32),
    "dc-ae-f32c32-mix-1.0": _in_mix("dc-ae-f32c32-mix-1.0", 6, 32),
    "dc-ae-f64c128-in-1.0": _in_mix("dc-ae-f64c128-in-1.0", 7, 128),
    "dc-ae-f64c128-mix-1.0": _in_mix("dc-ae-f64c128-mix-1.0", 7, 128),
    "dc-ae-f128c512-in-1.0": _in_mix("dc-ae-f128c512-in-1.0", 8, 512),
    "dc-ae-f128c512-mix-1.0": _in_mix("dc-ae-f128c512-mix-1.0", 8, 512),
}


def get_preset(name: str) -> DCAEConfig:
    """The preset called `name`; an unknown name raises `KeyError` listing the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown DC-AE preset {name!r}; valid presets: {sorted(PRESETS)}") from None
