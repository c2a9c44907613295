"""Building the pipeline's parts, and the one place where latents are scaled (house style §4.6).

The autoencoder stays raw; the diffusion model sees `raw * scaling_factor`. `to_diffusion_latents` and
`from_diffusion_latents` are the only code that applies the factor, and the factor is the autoencoder's own.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sana.protocols import Autoencoder

log = logging.getLogger("sana")

# Sana's text encoders run in bf16 on accelerators (Gemma overflows fp16); on a CPU without native bf16 fp32 is
# both faster and exact, so the text encoder follows the pipeline dtype there unless it is fp16.
_TEXT_DTYPE_ON_CPU = {torch.float16: torch.float32, torch.bfloat16: torch.bfloat16, torch.float32: torch.float32}


def to_diffusion_latents(ae: Autoencoder, raw: Tensor) -> Tensor:
    """Raw autoencoder latents -> the scale the diffusion model was trained on."""
    return raw * ae.scaling_factor


def from_diffusion_latents(ae: Autoencoder, latents: Tensor) -> Tensor:
    """Diffusion-scale latents -> raw latents for `ae.decode`."""
    return latents / ae.scaling_factor


def text_dtype(dtype: torch.dtype, device: torch.device | str) -> torch.dtype:
    """The text encoder's dtype for a pipeline running in `dtype` on `device` (bf16 on accelerators)."""
    if torch.device(device).type == "cpu":
        return _TEXT_DTYPE_ON_CPU[dtype]
    return torch.bfloat16


def slow_bf16(device: torch.device | str) -> bool:
    """Whether bf16 kernels are emulated on `device`: a CPU without AVX-512, where they fall back to reference code
    many times slower than fp32."""
    return torch.device(device).type == "cpu" and not torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def autoencoder_dtype(dtype: torch.dtype, device: torch.device | str) -> torch.dtype:
    """The autoencoder's dtype in a pipeline running in `dtype`: float32 for bf16 where `slow_bf16`, since bf16
    convolutions there fall back to reference kernels (a 512² DC-AE decode takes hours instead of minutes)."""
    if dtype == torch.bfloat16 and slow_bf16(device):
        log.info("bf16 mode on a CPU without AVX-512: the autoencoder runs in float32")
        return torch.float32
    return dtype


def resolve_field(location: str, field: str) -> Path:
    """Resolve a model location named by config field `field`; errors say which field to point elsewhere."""
    from sana.hub import ModelNotFoundError, resolve

    try:
        return resolve(location)
    except (ModelNotFoundError, FileNotFoundError) as err:
        raise type(err)(
            f"{err}\n(config field `{field}` = {location!r}; point it at a local copy, e.g. --{field}=/path/to/model)"
        ) from err


def load_text_encoder_parts(
    model_dir: Path, tokenizer_dir: Path, *, chi: Any, max_length: int, dtype, device, skip_layers: int = 0
):
    """A `sana_text.TextEncoder` from a model folder and a (possibly separate) tokenizer folder."""
    from transformers import AutoModel, AutoTokenizer

    from sana_text import TextEncoder

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=dtype).to(device)
    return TextEncoder(
        model, tokenizer, chi=chi, max_length=max_length, model_id=str(model_dir), skip_layers=skip_layers
    )


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a hidden sibling and rename it into place: readers never see a half-written file."""
    from sana._io import atomic_open

    with atomic_open(path, "w") as f:
        f.write(text)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err


def load_autoencoder(cfg: Any, *, dtype: torch.dtype, device: torch.device | str) -> tuple[Any, Path]:
    """The config's autoencoder (`vae.vae_pretrained`: local path, hub id or hf://) and where it came from."""
    from dcae import load_dcae

    path = resolve_field(cfg.vae.vae_pretrained, "vae.vae_pretrained")
    return load_dcae(path, dtype=dtype, device=device), path


def load_config_text_encoder(cfg: Any, *, dtype: torch.dtype, device: torch.device | str) -> tuple[Any, Path]:
    """The config's text encoder (official names map to their hub ids) with its CHI and length, and its path."""
    from sana.config import TEXT_ENCODER_IDS
    from sana_text import load_text_encoder

    te = cfg.text_encoder
    path = resolve_field(
        TEXT_ENCODER_IDS.get(te.text_encoder_name, te.text_encoder_name), "text_encoder.text_encoder_name"
    )
    encoder = load_text_encoder(
        path,
        chi=list(te.chi_prompt) or None,
        max_length=te.model_max_length,
        dtype=text_dtype(dtype, device),
        device=device,
        expected_dim=te.caption_channels,
        skip_layers=te.skip_layers,
    )
    return encoder, path
