"""Tiny configs and random inputs for tests, here and in downstream packages (no weights, no downloads)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from linear_dit.config import LinearDiTConfig
from linear_dit.model import LinearDiT


def tiny_config(**overrides: object) -> LinearDiTConfig:
    """A 2-block, width-64 Linear DiT (2 linear heads of 32, 2 cross heads) on 8 latent channels."""
    base = LinearDiTConfig(
        in_channels=8,
        hidden_size=64,
        depth=2,
        linear_head_dim=32,
        cross_attention_heads=2,
        caption_channels=48,
        text_length=16,
        pe_base_size=8,
        pag_layers=(1,),
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@torch.no_grad()
def randomize_(model: LinearDiT, seed: int = 0) -> LinearDiT:
    """Give every parameter random values of a trained-like scale, in place, and return the model.

    The Sana init zeroes biases and starts the caption norm at 0.01, which would hide bugs in those paths.
    Uniform draws (same std as the Gaussian they stand for) keep this fast enough for the full-size presets.
    """
    g = torch.Generator().manual_seed(seed)

    def fill(p: Tensor, mean: float, std: float) -> None:
        p.uniform_(mean - 3**0.5 * std, mean + 3**0.5 * std, generator=g)

    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            fill(p, 1.0, 0.2)
        elif name.endswith("scale_shift_table"):
            fill(p, 0.0, 0.3)
        elif p.ndim == 1:
            fill(p, 0.0, 0.05)
        else:
            fill(p, 0.0, p[0].numel() ** -0.5)  # std 1/sqrt(fan_in)
    fill(model.y_embedder.y_embedding, 0.0, 1.0)
    return model


def random_inputs(
    config: LinearDiTConfig, batch: int = 2, size: tuple[int, int] = (4, 6), text_len: int = 12, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x, t, text, text_mask) for `LinearDiT`: latents (B, C_z, h, w), t (B,) in (0, 1), text (B, L, D_txt) and a
    right-padded bool mask with a different number of real tokens per row (at least one)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    x = torch.randn(batch, config.in_channels, h, w, generator=g)
    t = torch.rand(batch, generator=g) * 0.98 + 0.01
    text = torch.randn(batch, text_len, config.caption_channels, generator=g)
    lengths = torch.randint(1, text_len + 1, (batch,), generator=g)
    mask = torch.arange(text_len)[None] < lengths[:, None]
    return x, t, text, mask


def diffusers_twin(model: LinearDiT):
    """The same weights in diffusers' `SanaTransformer2DModel`, built on the meta device so large configs are cheap.

    Needs `diffusers` (the parity oracle; never a runtime dependency of linear_dit).
    """
    from diffusers import SanaTransformer2DModel

    from linear_dit._convert import config_to_diffusers, to_diffusers_state_dict

    kwargs = config_to_diffusers(model.config)
    with torch.device("meta"):
        twin = SanaTransformer2DModel(**kwargs)
    if kwargs["interpolation_scale"] is not None:  # its sin-cos table is a non-persistent buffer: build it for real
        twin.patch_embed = type(twin.patch_embed)(
            height=kwargs["sample_size"],
            width=kwargs["sample_size"],
            patch_size=kwargs["patch_size"],
            in_channels=kwargs["in_channels"],
            embed_dim=model.config.hidden_size,
            interpolation_scale=kwargs["interpolation_scale"],
        )
    twin.load_state_dict(to_diffusers_state_dict(model.state_dict()), strict=True, assign=True)
    return twin.eval()


def run_diffusers(twin, x: Tensor, t: Tensor, text: Tensor, mask: Tensor | None) -> Tensor:
    """Call a diffusers twin with our argument conventions (flow time t in [0, 1], bool/0-1 mask)."""
    with torch.no_grad():
        bias_mask = None if mask is None else mask.to(x.dtype)
        return twin(x, text, 1000 * t, encoder_attention_mask=bias_mask).sample


def assert_close_to(ours: Tensor, ref: Tensor, rtol: float = 1e-4) -> None:
    """The parity bar: max |ours - ref| <= rtol * max |ref| (1e-4 in fp32)."""
    assert ours.shape == ref.shape, f"shapes differ: {tuple(ours.shape)} vs {tuple(ref.shape)}"
    err, scale = (ours - ref).abs().max().item(), ref.abs().max().item()
    assert err <= rtol * scale, f"max |diff| {err:.3g} > {rtol} * max |ref| {scale:.3g}"
