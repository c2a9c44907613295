"""Tiny DC-AE graphs for tests and examples: seconds on a CPU, same code paths as the released models."""

from __future__ import annotations

import torch

from dcae.config import DCAEConfig
from dcae.model import DCAE


def tiny_config(latent_channels: int = 4) -> DCAEConfig:
    """Sana-style (conv down / interpolate up, RMSNorm everywhere), f = 4, with single- and two-scale attention."""
    return DCAEConfig(
        widths=(8, 16, 32),
        encoder_depths=(1, 1, 2),
        decoder_depths=(1, 2, 1),
        encoder_blocks=("res", "evit", "evit"),
        decoder_blocks=("res", "evit", "evit"),
        encoder_scales=((), (5,), (3, 5)),
        decoder_scales=((), (5,), (3, 5)),
        decoder_norms=("rms", "rms", "rms"),
        decoder_acts=("silu", "silu", "silu"),
        downsample="conv",
        upsample="interpolate",
        latent_channels=latent_channels,
        head_dim=8,
        scaling_factor=0.5,
        name="tiny-sana",
    )


def tiny_in_mix_config() -> DCAEConfig:
    """in/mix-style (empty stage 0, pixel-(un)shuffle, BatchNorm + ReLU decoder ResBlocks), f = 8."""
    return DCAEConfig(
        widths=(8, 16, 32, 32),
        encoder_depths=(0, 1, 1, 1),
        decoder_depths=(0, 1, 2, 1),
        encoder_blocks=("res", "res", "evit", "evit"),
        decoder_blocks=("res", "res", "evit", "evit"),
        encoder_scales=((), (), (), ()),
        decoder_scales=((), (), (), ()),
        decoder_norms=("batch", "batch", "rms", "rms"),
        decoder_acts=("relu", "relu", "silu", "silu"),
        downsample="pixel_unshuffle",
        upsample="pixel_shuffle",
        latent_channels=8,
        head_dim=8,
        name="tiny-in-mix",
    )


def random_model(cfg: DCAEConfig, seed: int = 0) -> DCAE:
    """A model in eval mode with random weights (std 1/sqrt(fan_in)) and random norm weights, biases and
    BatchNorm statistics (not 1/0), so that parity tests exercise every parameter. Built without the default
    initialisation, so even the 312 M-parameter presets take about a second."""
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = DCAE(cfg)
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("num_batches_tracked"):
                t.zero_()
            elif name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=generator))
            elif t.ndim == 4:  # conv weight
                t.copy_(torch.randn(t.shape, generator=generator) / t[0].numel() ** 0.5)
            else:  # biases, norm weights (around 1) and running means
                mean = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                t.copy_(mean + 0.2 * torch.randn(t.shape, generator=generator))
    return model
