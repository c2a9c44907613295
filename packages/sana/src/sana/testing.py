"""Tiny pipelines for tests, examples and benchmarks: random weights, built in memory in about a second.

from sana.testing import tiny_pipeline
pipe = tiny_pipeline()
images = pipe("a red circle", height=64, width=64, num_inference_steps=4)   # (1, 3, 64, 64) in [-1, 1]
"""

from __future__ import annotations

from typing import Any

import torch

from sana.pipeline import SanaPipeline

TINY_LATENT_CHANNELS = 4  # C_z of the tiny autoencoder (f = 4) and the tiny DiT
TINY_IMAGE_SIZE = 256  # bucket table of the tiny pipeline: ASPECT_RATIO_256_TEST


def tiny_parts(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Random tiny denoiser (2 blocks, PAG layer 1), autoencoder (f = 4) and Gemma-2 text encoder (width 32)."""
    from dcae.testing import random_model
    from dcae.testing import tiny_config as tiny_ae_config
    from linear_dit import LinearDiT
    from linear_dit.testing import randomize_
    from linear_dit.testing import tiny_config as tiny_dit_config
    from sana_text.testing import tiny_text_encoder

    text_encoder = tiny_text_encoder(seed=seed)
    dit_cfg = tiny_dit_config(in_channels=TINY_LATENT_CHANNELS, caption_channels=text_encoder.embed_dim)
    torch.manual_seed(seed)
    denoiser = randomize_(LinearDiT(dit_cfg), seed=seed).eval().to(dtype)
    autoencoder = random_model(tiny_ae_config(latent_channels=TINY_LATENT_CHANNELS), seed=seed).to(dtype)
    return {"denoiser": denoiser, "autoencoder": autoencoder, "text_encoder": text_encoder}


def tiny_pipeline(
    seed: int = 0, *, dtype: torch.dtype = torch.float32, overrides: Any = None, **kw: Any
) -> SanaPipeline:
    """A `SanaPipeline` over `tiny_parts(seed)`; `overrides` are dotted config overrides, `kw` go to the pipeline."""
    settings = {
        "model.image_size": TINY_IMAGE_SIZE,
        "model.aspect_ratio_type": f"ASPECT_RATIO_{TINY_IMAGE_SIZE}",
        "model.pag_applied_layers": [1],
        **(overrides or {}),
    }
    return SanaPipeline(None, overrides=settings, dtype=dtype, **tiny_parts(seed, dtype), **kw)
