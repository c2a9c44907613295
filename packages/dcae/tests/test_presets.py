"""Presets and config validation; parameter counts are checked on the meta device (no memory)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dcae import DCAE, PRESETS, DCAEConfig
from dcae.presets import SANA_LATENT_SCALE, get_preset
from dcae.testing import tiny_config, tiny_in_mix_config


def _meta(cfg: DCAEConfig) -> DCAE:
    with torch.device("meta"):
        return DCAE(cfg)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", ["dc-ae-f32c32-sana-1.0", "dc-ae-f32c32-sana-1.1"])
def test_sana_parameter_counts(name: str) -> None:
    """Spec §2.2 / §11: 312,250,275 parameters (encoder 153,027,104; decoder 159,223,171)."""
    model = _meta(PRESETS[name])
    assert _count(model.encoder) == 153_027_104
    assert _count(model.decoder) == 159_223_171
    assert _count(model) == 312_250_275


def test_in_family_parameter_count() -> None:
    """The dc-ae-f32c32-in-1.0 checkpoint has 323.4 M parameters (performance anchors §4.4)."""
    assert round(_count(_meta(PRESETS["dc-ae-f32c32-in-1.0"])) / 1e6, 1) == 323.4


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_latent_shape(name: str) -> None:
    cfg = PRESETS[name]
    f = cfg.spatial_compression
    assert f == int(name.split("-")[2][1:].split("c")[0])  # "f32c32" -> 32
    assert cfg.latent_channels == int(name.split("-")[2].split("c")[1])
    with torch.device("meta"):
        model = DCAE(cfg)
        z = model.encode(torch.empty(1, 3, 2 * f, 3 * f))
        x = model.decode(z)
    assert tuple(z.shape) == (1, cfg.latent_channels, 2, 3)
    assert tuple(x.shape) == (1, 3, 2 * f, 3 * f)


def test_sana_256_gives_8x8x32() -> None:
    """Spec §11 verification target."""
    with torch.device("meta"):
        model = DCAE(PRESETS["dc-ae-f32c32-sana-1.0"])
        z = model.encode(torch.empty(1, 3, 256, 256))
        assert tuple(z.shape) == (1, 32, 8, 8)
        assert tuple(model.decode(z).shape) == (1, 3, 256, 256)


def test_sana_presets_share_graph_and_scale() -> None:
    a, b = PRESETS["dc-ae-f32c32-sana-1.0"], PRESETS["dc-ae-f32c32-sana-1.1"]
    assert dataclasses.replace(a, name=b.name) == b
    assert a.scaling_factor == SANA_LATENT_SCALE == 0.41407
    assert a.trained_dtype == "bfloat16"


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(KeyError, match=r"dc-ae-f32c32-sana-1\.0"):
        get_preset("dc-ae-f32c32-sana-9.9")


@pytest.mark.parametrize("cfg", [tiny_config(), tiny_in_mix_config(), *PRESETS.values()], ids=lambda c: c.name)
def test_config_dict_round_trip(cfg: DCAEConfig) -> None:
    import json

    assert DCAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_config_rejects_unknown_field() -> None:
    data = {**tiny_config().to_dict(), "latent_chanels": 4}
    with pytest.raises(KeyError, match="latent_chanels"):
        DCAEConfig.from_dict(data)


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny_config().latent_channels = 8  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"encoder_depths": (1, 1)}, "encoder_depths has 2 entries"),
        ({"decoder_norms": ("rms", "layer", "rms")}, "decoder_norms"),
        ({"downsample": "maxpool"}, "downsample"),
        ({"encoder_depths": (1, 0, 2)}, "only stage 0 may have depth 0"),
        ({"latent_channels": 5}, "multiple of latent_channels"),
        ({"head_dim": 12}, "not a multiple of head_dim"),
        ({"encoder_scales": ((5,), (5,), (3, 5))}, "ResBlock stage"),
    ],
)
def test_config_validation(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(tiny_config(), **change)
