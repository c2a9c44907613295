"""Image I/O and reconstruction metrics for the autoencoder's pixel convention: (B, 3, H, W) float in [-1, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError


def load_image(path: str | Path) -> torch.Tensor:
    """An image file as (1, 3, H, W) float32 in [-1, 1] (RGB; alpha and palettes are flattened)."""
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32)  # (H, W, 3) in [0, 255]
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read {path} as an image: {exc}") from exc
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]  # (1, 3, H, W)
    return x / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in ≈[-1, 1] → (B, H, W, 3) uint8, clamped (Sana's validation conversion)."""
    x = (images.detach().float().cpu() * 127.5 + 128.0).clamp(0, 255)  # (B, 3, H, W)
    return x.permute(0, 2, 3, 1).to(torch.uint8).numpy()  # (B, H, W, 3)


def save_image(image: torch.Tensor, path: str | Path) -> None:
    """Write one (3, H, W) or (1, 3, H, W) image in ≈[-1, 1]; the format follows the suffix."""
    if image.ndim == 3:
        image = image[None]
    Image.fromarray(to_uint8(image)[0]).save(path)


def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom and right edges by reflection up to a multiple of `multiple` (crop back afterwards)."""
    H, W = images.shape[-2:]
    pad_h, pad_w = -H % multiple, -W % multiple
    if not (pad_h or pad_w):
        return images
    mode = "reflect" if pad_h < H and pad_w < W else "replicate"
    return F.pad(images, (0, pad_w, 0, pad_h), mode=mode)  # (B, 3, H + pad_h, W + pad_w)


def crop_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Centre-crop to the largest multiple of `multiple` in each dimension."""
    H, W = images.shape[-2:]
    h, w = H // multiple * multiple, W // multiple * multiple
    if h == 0 or w == 0:
        raise ValueError(f"image {H}x{W} is smaller than one {multiple}x{multiple} block")
    top, left = (H - h) // 2, (W - w) // 2
    return images[..., top : top + h, left : left + w]  # (B, 3, h, w)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, for (B, 3, H, W) in [-1, 1] (peak-to-peak range 2)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004: Gaussian 11×11, σ 1.5, on [0, 1] per channel)."""
    x, y = (a.float() + 1) / 2, (b.float() + 1) / 2  # (B, 3, H, W) in [0, 1]
    c1, c2 = 0.01**2, 0.03**2
    coords = torch.arange(window, dtype=torch.float32) - window // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, window, window)  # (3, 1, k, k)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=t.shape[1])  # (B, 3, H-k+1, W-k+1)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(dim=1)  # (B,)
