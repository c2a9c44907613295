"""Parity with diffusers' SanaTransformer2DModel (the oracle): same random weights, same inputs, fp32."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from linear_dit import PAG, LinearDiT, LinearDiTConfig, get_preset
from linear_dit.testing import assert_close_to, diffusers_twin, random_inputs, randomize_, run_diffusers, tiny_config

pytest.importorskip("diffusers")


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"qk_norm": True, "cross_norm": True},  # Sana-1.5
        {"patch_size": 2},
        {"mlp_ratio": 3.0, "cross_attention_heads": 4},
        {"attention_eps": 1e-15},  # diffusers' eps: Sana's 1e-8 is indistinguishable at this tolerance too
    ],
    ids=["sana-1.0", "qk-norms", "patch-2", "ratio-3-heads-4", "eps-1e-15"],
)
def test_tiny_configs_match_diffusers(overrides: dict) -> None:
    model = make_model(tiny_config(**overrides))
    x, t, text, mask = random_inputs(model.config, batch=3, size=(4, 6), text_len=10)
    with torch.no_grad():
        ours = model(x, t, text, mask)
    assert_close_to(ours, run_diffusers(diffusers_twin(model), x, t, text, mask))


def test_fully_masked_row_matches_diffusers() -> None:
    """A row with no real token keeps all L keys (its softmax sees L equal -10000 biases), as diffusers does."""
    model = make_model(tiny_config())
    x, t, text, mask = random_inputs(model.config, batch=3, text_len=10)
    mask[1] = False
    with torch.no_grad():
        ours = model(x, t, text, mask)
    assert_close_to(ours, run_diffusers(diffusers_twin(model), x, t, text, mask))


@pytest.mark.parametrize(("interpolation", "size"), [(1.0, (8, 8)), (1.0, (6, 10)), (2.0, (12, 4))])
def test_sincos_pe_variants_match_diffusers(interpolation: float, size: tuple[int, int]) -> None:
    """2K (interpolation 1) and 4K (interpolation 2) PE, at the base size and recomputed for other grids."""
    model = make_model(tiny_config(pos_embed="sincos", pe_base_size=8, pe_interpolation=interpolation))
    x, t, text, mask = random_inputs(model.config, batch=2, size=size)
    with torch.no_grad():
        ours = model(x, t, text, mask)
        nope = replace(model.config, pos_embed="none")
        without_pe = _with_config(model, nope)(x, t, text, mask)
    assert_close_to(ours, run_diffusers(diffusers_twin(model), x, t, text, mask))
    assert (ours - without_pe).abs().max() > 1e-3  # the table is really added


@pytest.mark.parametrize(
    ("processor", "parts"), [("PAGIdentitySanaLinearAttnProcessor2_0", 2), ("PAGCFGSanaLinearAttnProcessor2_0", 3)]
)
def test_pag_matches_diffusers_identity_processor(processor: str, parts: int) -> None:
    """[cond, perturbed] (PAG alone) and [uncond, cond, perturbed] (CFG+PAG), perturbed in block 1 only."""
    from diffusers.models import attention_processor

    model = make_model(tiny_config(pag_layers=(1,)))
    n = 2
    x, t, text, mask = random_inputs(model.config, batch=n, size=(4, 5))
    x, t, text, mask = (torch.cat([v] * parts) for v in (x, t, text, mask))
    twin = diffusers_twin(model)
    twin.transformer_blocks[1].attn1.set_processor(getattr(attention_processor, processor)())
    with torch.no_grad():
        ours = model(x, t, text, mask, pag=PAG(rows=slice((parts - 1) * n, parts * n)))
        plain = model(x, t, text, mask)
    assert_close_to(ours, run_diffusers(twin, x, t, text, mask))
    assert torch.equal(ours[: (parts - 1) * n], plain[: (parts - 1) * n])  # other rows untouched
    assert (ours[-n:] - plain[-n:]).abs().max() > 1e-3


def test_sana_600m_matches_diffusers_at_small_latent() -> None:
    model = _random_model(get_preset("sana-600m"))
    x, t, text, mask = random_inputs(model.config, batch=2, size=(4, 4), text_len=8)
    with torch.no_grad():
        ours = model(x, t, text, mask)
    assert_close_to(ours, run_diffusers(diffusers_twin(model), x, t, text, mask))


@pytest.mark.slow
def test_sana_1600m_matches_diffusers() -> None:
    model = _random_model(get_preset("sana-1600m"))
    x, t, text, mask = random_inputs(model.config, batch=2, size=(4, 6), text_len=16)
    with torch.no_grad():
        ours = model(x, t, text, mask)
    assert_close_to(ours, run_diffusers(diffusers_twin(model), x, t, text, mask))


def make_model(config: LinearDiTConfig, seed: int = 0) -> LinearDiT:
    return randomize_(LinearDiT(config), seed).eval()


def _random_model(config: LinearDiTConfig) -> LinearDiT:
    """A full-size model with random trained-like weights, skipping the (slow) init on the meta device."""
    with torch.device("meta"):
        model = LinearDiT(config)
    return randomize_(model.to_empty(device="cpu")).eval()


def _with_config(model: LinearDiT, config: LinearDiTConfig) -> LinearDiT:
    other = LinearDiT(config).eval()
    other.load_state_dict(model.state_dict())
    return other
