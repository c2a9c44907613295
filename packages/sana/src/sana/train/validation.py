"""Validation images during training: fixed prompts and fixed noise, saved as one grid per step (spec §7.7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sana.images import to_pil
from sana.pipeline import SanaPipeline

VALIDATION_SEED = 0  # image i uses seed i: the same noise at every validation step


@torch.no_grad()
def save_validation_grid(run: Any, step: int) -> Path:
    """Generate `train.validation_prompts` at the base size with CFG 4.5 and save `log_vis/step_{S}.png`."""
    model = run.accelerator.unwrap_model(run.model)
    was_training = model.training
    model.eval()
    try:
        pipe = SanaPipeline(run.cfg, denoiser=model, autoencoder=run.autoencoder, text_encoder=run.text_encoder,
                            device=run.accelerator.device)  # fmt: skip
        size = run.cfg.model.image_size
        images = pipe(list(run.cfg.train.validation_prompts), height=size, width=size, guidance_scale=4.5,
                      pag_guidance_scale=1.0, num_inference_steps=run.cfg.train.validation_sampling_steps,
                      seed=VALIDATION_SEED, progress=False)  # fmt: skip
    finally:
        model.train(was_training)
    tiles = to_pil(images if isinstance(images, torch.Tensor) else torch.stack(images))
    grid = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)))
    x = 0
    for tile in tiles:
        grid.paste(tile, (x, 0))
        x += tile.width
    out = run.work_dir / "log_vis" / f"step_{step:07d}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out
