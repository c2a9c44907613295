"""Tiny pipelines for tests, examples and benchmarks: random weights, built in memory in about a second.

from sana.testing import tiny_pipeline
pipe = tiny_pipeline()
images = pipe("a red circle", height=64, width=64, num_inference_steps=4)   # (1, 3, 64, 64) in [-1, 1]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sana.pipeline import SanaPipeline

TINY_LATENT_CHANNELS = 4  # C_z of the tiny autoencoder (f = 4) and the tiny DiT
TINY_IMAGE_SIZE = 256  # bucket table of the tiny pipeline: ASPECT_RATIO_256_TEST
TINY_TEXT_WIDTH = 32  # D_txt of the tiny Gemma-2 (`sana_text.testing`)


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


def tiny_training_setup(root: str | Path, *, samples: int = 8, seed: int = 0) -> list[str]:
    """Write a shapes-world dataset and tiny local checkpoints (DC-AE f = 4, Gemma-2 width 32, a 2-block DiT)
    under `root`; returns the dotted overrides that point an official training YAML at them (64 px, no workers,
    no validation images). Used by the tests and the training docs."""
    from dcae import save_dcae
    from dcae.testing import random_model
    from dcae.testing import tiny_config as tiny_ae_config
    from linear_dit import LinearDiT, save_linear_dit
    from linear_dit.testing import tiny_config as tiny_dit_config
    from sana_data.testing import make_toy_dataset
    from sana_text.testing import save_tiny_llm

    root = Path(root)
    torch.manual_seed(seed)
    data = make_toy_dataset(root / "data", n=samples, seed=seed)
    vae = save_dcae(random_model(tiny_ae_config(latent_channels=TINY_LATENT_CHANNELS), seed=seed), root / "vae")
    te = save_tiny_llm(root / "text_encoder", seed=seed)
    dit_cfg = tiny_dit_config(in_channels=TINY_LATENT_CHANNELS, caption_channels=TINY_TEXT_WIDTH)
    dit = save_linear_dit(LinearDiT(dit_cfg), root / "transformer")
    return [
        f"--data.data_dir=[{data}]", "--data.type=SanaImgDataset", "--model.multi_scale=false",
        "--data.image_size=64", "--train.train_batch_size=2", f"--vae.vae_pretrained={vae}",
        f"--vae.vae_latent_dim={TINY_LATENT_CHANNELS}", f"--text_encoder.text_encoder_name={te}",
        f"--text_encoder.caption_channels={TINY_TEXT_WIDTH}", f"--model.load_from={dit}",
        "--model.pag_applied_layers=[1]", f"--model.image_size={TINY_IMAGE_SIZE}", "--train.num_workers=0",
        "--train.visualize=false", f"--work_dir={root / 'run'}",
    ]  # fmt: skip
