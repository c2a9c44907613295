"""Whole pipelines from folders: diffusers-format Sana repos (model_index.json + transformer/ vae/ text_encoder/
tokenizer/ scheduler/) and our converted pipeline folders (same sub-folders, see `sana.convert`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from sana import _compose

log = logging.getLogger("sana")

PARTS = ("transformer", "vae", "text_encoder", "tokenizer")
SCHEDULER_CONFIG = Path("scheduler") / "scheduler_config.json"
DIFFUSERS_EULER = "FlowMatchEulerDiscreteScheduler"
OFFICIAL_PAG_LAYER = {20: 8}  # depth -> PAG block of the official configs (Sana-1600M)
DEFAULT_PAG_LAYER = 14  # the config default (Sana-600M and the rest)
SAMPLE_SIZE_PIXELS = 32  # pixels per unit of diffusers' `sample_size`
IMAGE_SIZES = (256, 512, 1024, 2048, 4096)  # sizes with bucket tables


def _settings(folder: Path, image_size: int, dtype: torch.dtype) -> dict[str, Any]:
    """Config overrides that describe a folder: image size (binning table), flow shift, sampler, precision."""
    overrides: dict[str, Any] = {
        "model.image_size": image_size,
        "model.aspect_ratio_type": f"ASPECT_RATIO_{image_size}",
        "model.mixed_precision": {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32"),
    }
    if (folder / SCHEDULER_CONFIG).exists():
        scheduler = _compose.read_json(folder / SCHEDULER_CONFIG)
        overrides["scheduler.flow_shift"] = float(scheduler.get("flow_shift") or scheduler.get("shift") or 1.0)
        if scheduler.get("_class_name") == DIFFUSERS_EULER:
            overrides["scheduler.vis_sampler"] = "flow_euler"
    return overrides


def _manifest(folder: Path) -> dict[str, Any]:
    """Our `sana_pipeline.json` (see `sana.convert`), or {} for diffusers folders."""
    from sana.hub import PIPELINE_MANIFEST

    path = folder / PIPELINE_MANIFEST
    return _compose.read_json(path) if path.is_file() else {}


def default_pag_layers(depth: int) -> tuple[int, ...]:
    """Official PAG layers: block 8 for the 20-block 1.6B model, 14 otherwise (spec §4.5); the middle block of a
    model too shallow for either (diffusers folders do not record PAG layers)."""
    layer = OFFICIAL_PAG_LAYER.get(depth, DEFAULT_PAG_LAYER)
    return (layer if layer < depth else depth // 2,)


def _stored_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def pipeline_from_folder(
    cls: type,
    location: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    chi: Any = "default",
    overrides: Any = (),
) -> Any:
    """Build `cls` (SanaPipeline) from a pipeline folder or hub repo id (see the module docstring).

    Args:
        dtype: compute dtype; None keeps the stored one on accelerators and uses float32 on the CPU.
        chi: the instruction for the text encoder: "default" (the one the folder's `settings` record, else
            Sana's), None (off) or lines/string.
        overrides: further config overrides (dotted), e.g. `{"model.pag_applied_layers": [8]}`.
    """
    from dcae import load_dcae
    from linear_dit import load_linear_dit
    from sana_text import COMPLEX_HUMAN_INSTRUCTION

    folder = _compose.resolve_field(str(location), "model_path")
    missing = [p for p in PARTS if not (folder / p).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a Sana pipeline folder: missing sub-folder(s) {missing} (expected {list(PARTS)}); "
            "a single transformer checkpoint goes through SanaPipeline(config).from_pretrained(path)"
        )
    device = torch.device(device)
    stored = load_linear_dit(folder / "transformer", dtype=None, device="cpu")
    run_dtype = dtype or (torch.float32 if device.type == "cpu" else _stored_dtype(stored))
    denoiser = stored.to(device=device, dtype=run_dtype)
    autoencoder = load_dcae(folder / "vae", dtype=_compose.autoencoder_dtype(run_dtype, device), device=device)
    raw = _compose.read_json(folder / "transformer" / "config.json")
    # Our pipeline folders may record the settings they were trained with (image size, CHI, PAG layers, sampler)
    stored_settings = dict(_manifest(folder).get("settings") or {})
    sample_size = raw.get("sample_size") or raw.get("config", {}).get("sample_size") or 32
    # diffusers picks its bin table by sample_size in f32 latents (16/32/64/128 -> 512/1024/2048/4096) whatever
    # the VAE, so the pixel size is sample_size * 32 here too; anything else falls back to the 1024 tables.
    image_size = int(stored_settings.get("model.image_size") or int(sample_size) * SAMPLE_SIZE_PIXELS)
    if image_size not in IMAGE_SIZES:
        log.info("sample_size %s matches no bucket table; binning with the 1024 tables", sample_size)
        image_size = 1024
    if chi == "default" and "text_encoder.chi_prompt" in stored_settings:
        chi = list(stored_settings["text_encoder.chi_prompt"]) or None
    instruction = COMPLEX_HUMAN_INSTRUCTION if chi == "default" else chi
    text_encoder = _compose.load_text_encoder_parts(
        folder / "text_encoder",
        folder / "tokenizer",
        chi=instruction,
        max_length=denoiser.config.text_length,
        dtype=_compose.text_dtype(run_dtype, device),
        device=device,
        # the features the transformer was trained on; an override (as for the pipeline's config below) wins
        skip_layers=int({**stored_settings, **dict(overrides)}.get("text_encoder.skip_layers", 0)),
    )
    settings = {**_settings(folder, image_size, _stored_dtype(stored)), **stored_settings, **dict(overrides)}
    settings.setdefault("model.pag_applied_layers", list(default_pag_layers(denoiser.config.depth)))
    log.info("loaded pipeline folder %s (image_size %d, %s)", folder, image_size, run_dtype)
    pipe = cls(
        None,
        overrides=settings,
        denoiser=denoiser,
        autoencoder=autoencoder,
        text_encoder=text_encoder,
        device=device,
        dtype=run_dtype,
    )
    pipe.sources = {part: str(folder / part) for part in PARTS}
    return pipe
