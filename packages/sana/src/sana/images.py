"""Image outputs: resize-and-crop back from a bucket, tensor -> PIL / numpy, and PNGs that carry their settings.

Images are (B, 3, H, W) float tensors in [-1, 1] unless said otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, PngImagePlugin

from sana._io import atomic_open

METADATA_KEY = "sana"  # PNG text chunk holding the JSON generation settings
PARAMETERS_KEY = "parameters"  # A1111-style one-line summary that image viewers and other tools display


def resize_and_crop(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale to cover (height, width) keeping the aspect ratio (bilinear, align_corners=False), then center-crop.

    Sana's `resize_and_crop_tensor` (spec §8.4): generation runs at the bucket size, this brings the image back to
    the size that was asked for. A no-op when the sizes already agree.
    """
    H, W = images.shape[-2:]
    if (height, width) == (H, W):
        return images
    ratio = max(height / H, width / W)
    # int() truncation (as the official code) can land one pixel short of the target; never go below it.
    rh, rw = max(int(H * ratio), height), max(int(W * ratio), width)
    # fp32 interpolation: bf16 bilinear weights visibly band smooth gradients.
    resized = F.interpolate(images.float(), size=(rh, rw), mode="bilinear", align_corners=False)
    top, left = (rh - height) // 2, (rw - width) // 2
    return resized[:, :, top : top + height, left : left + width].to(images.dtype)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, rounding to nearest (values outside [-1, 1] are clipped)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round()  # fp32 so 255 levels are exact
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> B RGB PIL images."""
    return [Image.fromarray(a) for a in to_uint8(images)]


def png_info(metadata: Mapping[str, Any]) -> PngImagePlugin.PngInfo:
    """PNG text chunks: the settings as JSON under "sana", plus a readable "parameters" line."""
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, json.dumps(dict(metadata), sort_keys=True, default=str))
    summary = ", ".join(f"{k}: {v}" for k, v in metadata.items() if k not in ("prompt", "negative_prompt"))
    info.add_text(
        PARAMETERS_KEY,
        f"{metadata.get('prompt', '')}\nNegative prompt: {metadata.get('negative_prompt', '')}\n{summary}",
    )
    return info


def save_png(image: Image.Image, path: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write `image` as PNG with `metadata` in text chunks, atomically (a crash leaves no partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        image.save(f, format="PNG", pnginfo=png_info(metadata) if metadata else None)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The generation settings stored by `save_png` (empty if the PNG has none)."""
    with Image.open(path) as image:
        text = getattr(image, "text", {}).get(METADATA_KEY)
    return json.loads(text) if text else {}
