"""Parity with diffusers' AutoencoderDC (the reference oracle, test-only), in fp32.

Weights are random and converted from ours to diffusers' layout; the bound is 1e-4 × max|reference|.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderDC
from diffusers.loaders.single_file_utils import convert_autoencoder_dc_checkpoint_to_diffusers

from dcae import PRESETS, DCAEConfig, load_dcae, save_dcae
from dcae._convert import config_to_diffusers, to_format
from dcae.testing import random_model, tiny_config, tiny_in_mix_config

TOLERANCE = 1e-4  # relative to the largest reference output magnitude


def _diffusers_twin(cfg: DCAEConfig, state: dict[str, torch.Tensor]) -> AutoencoderDC:
    with torch.device("meta"):  # skip the default init; the weights come from `state`
        ref = AutoencoderDC(**config_to_diffusers(cfg)).eval()
    ref.load_state_dict(to_format(state, cfg, "diffusers"), strict=True, assign=True)
    return ref


def _assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    bound = TOLERANCE * ref.abs().max().item()
    err = (ours - ref).abs().max().item()
    assert err <= bound, f"max error {err:.3g} > {bound:.3g}"


# (config, input sizes): sizes reach both the linear and the quadratic attention (N <= hd at the deepest stage)
CASES = [
    (tiny_config(), [(8, 8), (32, 32), (64, 96)]),
    (tiny_in_mix_config(), [(16, 16), (64, 64), (48, 80)]),
]


@pytest.mark.parametrize(("cfg", "sizes"), CASES, ids=[c.name for c, _ in CASES])
def test_tiny_encode_decode_match_diffusers(cfg: DCAEConfig, sizes: list[tuple[int, int]]) -> None:
    ours = random_model(cfg)
    ref = _diffusers_twin(cfg, ours.state_dict())
    for H, W in sizes:
        images = torch.rand(2, 3, H, W) * 2 - 1
        with torch.no_grad():
            z_ref = ref.encode(images).latent
            _assert_close(ours.encode(images), z_ref)
            _assert_close(ours.decode(z_ref), ref.decode(z_ref).sample)


@pytest.mark.slow
def test_sana_f32c32_matches_diffusers() -> None:
    """The real dc-ae-f32c32-sana graph (random weights) at 64 px and at 128×96 px."""
    cfg = PRESETS["dc-ae-f32c32-sana-1.1"]
    ours = random_model(cfg)
    ref = _diffusers_twin(cfg, ours.state_dict())
    for H, W in [(64, 64), (128, 96)]:
        images = torch.rand(1, 3, H, W) * 2 - 1
        with torch.no_grad():
            z_ref = ref.encode(images).latent
            _assert_close(ours.encode(images), z_ref)
            _assert_close(ours.decode(z_ref), ref.decode(z_ref).sample)


# diffusers' single-file converter handles one aggregation scale per stage, as every released checkpoint has.
SINGLE_SCALE = dataclasses.replace(tiny_config(), encoder_scales=((), (5,), (5,)), decoder_scales=((), (5,), (5,)))


@pytest.mark.parametrize("cfg", [SINGLE_SCALE, tiny_in_mix_config()], ids=lambda c: c.name)
def test_efficientvit_file_matches_diffusers_single_file_conversion(cfg: DCAEConfig, tmp_path: Path) -> None:
    """Our efficientvit export, converted by diffusers' own single-file converter, gives the same model."""
    ours = random_model(cfg)
    path = save_dcae(ours, tmp_path / "model.safetensors", fmt="efficientvit")
    from safetensors.torch import load_file

    converted = convert_autoencoder_dc_checkpoint_to_diffusers(load_file(path))
    ref = AutoencoderDC(**config_to_diffusers(cfg)).eval()
    ref.load_state_dict(converted, strict=True)
    loaded = load_dcae(path, config=cfg)
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z_ref = ref.encode(images).latent
        _assert_close(loaded.encode(images), z_ref)
        _assert_close(loaded.decode(z_ref), ref.decode(z_ref).sample)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_efficientvit_keys_agree_with_diffusers_converter(name: str) -> None:
    """For every released graph, efficientvit key names and shapes map onto AutoencoderDC's exactly."""
    cfg = PRESETS[name]
    with torch.device("meta"):
        from dcae import DCAE

        state = DCAE(cfg).state_dict()
        reference = AutoencoderDC(**config_to_diffusers(cfg)).state_dict()
    converted = convert_autoencoder_dc_checkpoint_to_diffusers(to_format(state, cfg, "efficientvit"))
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in reference.items()}
