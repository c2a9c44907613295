"""`sana encode-latents`: precompute a training feature cache (latents and text features at their buckets).

The cache is `sana_data`'s (`build_feature_cache`): latents are stored raw (unscaled; the trainer applies the
autoencoder's scaling factor, as everywhere), text features with the config's instruction (CHI) and length.
Resumable: samples already in the cache are skipped. Train on it with
`--data.load_vae_feat=true --data.load_text_feat=true --data.feature_cache=DIR`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from sana import _compose
from sana.config import SanaConfig


def encoder_names(cfg: SanaConfig, vae_path: Path, text_path: Path) -> tuple[str, str]:
    """Names recorded in (and checked against) the cache: the model paths plus what changes the features."""
    te = cfg.text_encoder
    chi = hashlib.sha256("\n".join(te.chi_prompt).encode()).hexdigest()[:12]
    skip = f"|skip_layers={te.skip_layers}" if te.skip_layers else ""  # only when set: older caches keep their name
    return str(vae_path), f"{text_path}|chi={chi}|L={te.model_max_length}{skip}"


def encode_latents(cfg: SanaConfig, out_dir: str | Path, *, batch_size: int = 8, device: str = "cpu") -> Any:
    """Encode every sample of `data.data_dir` into a feature cache at `out_dir` (bucket table of the config)."""
    from sana.train.data import open_training_source
    from sana_data import CacheSpec, build_feature_cache

    source = open_training_source(cfg)
    autoencoder, vae_path = _compose.load_autoencoder(cfg, dtype=torch.float32, device=device)
    text_encoder, text_path = _compose.load_config_text_encoder(cfg, dtype=torch.float32, device=device)
    ae_name, te_name = encoder_names(cfg, vae_path, text_path)
    table = cfg.model.aspect_ratio_type.removeprefix("ASPECT_RATIO_")
    spec = CacheSpec(autoencoder=ae_name, text_encoder=te_name, table=table)

    @torch.no_grad()
    def encode_images(images: torch.Tensor) -> torch.Tensor:
        return autoencoder.encode(images.to(device)).float().cpu()  # raw latents (B, C_z, h, w)

    @torch.no_grad()
    def encode_text(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        text, mask = text_encoder.encode(prompts)
        return text.float().cpu(), mask.cpu()

    return build_feature_cache(source, out_dir, encode_images=encode_images, encode_text=encode_text, spec=spec,
                               batch_size=batch_size)  # fmt: skip
