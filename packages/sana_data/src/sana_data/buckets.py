"""Aspect-ratio bucket tables, nearest-ratio assignment and the resize-to-cover + center-crop transform.

Spec §6.3 and Appendix A. Keys are the ratio **height / width** as strings; values are `(H, W)` in pixels.
`ASPECT_RATIO_1024` is written out below; every other table is derived from it exactly as the official code
does (÷4, ÷2, ×2, ×4). The `_TEST` tables (inference binning) drop seven extreme ratios.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image

BucketTable = Mapping[str, tuple[int, int]]

# Sana `diffusion/data/datasets/utils.py`, ASPECT_RATIO_1024 (H, W). Every entry is a multiple of 64.
ASPECT_RATIO_1024: dict[str, tuple[int, int]] = {
    "0.25": (512, 2048), "0.26": (512, 1984), "0.27": (512, 1920), "0.28": (512, 1856),
    "0.32": (576, 1792), "0.33": (576, 1728), "0.35": (576, 1664), "0.4": (640, 1600),
    "0.42": (640, 1536), "0.48": (704, 1472), "0.5": (704, 1408), "0.52": (704, 1344),
    "0.57": (768, 1344), "0.6": (768, 1280), "0.68": (832, 1216), "0.72": (832, 1152),
    "0.78": (896, 1152), "0.82": (896, 1088), "0.88": (960, 1088), "0.94": (960, 1024),
    "1.0": (1024, 1024), "1.07": (1024, 960), "1.13": (1088, 960), "1.21": (1088, 896),
    "1.29": (1152, 896), "1.38": (1152, 832), "1.46": (1216, 832), "1.67": (1280, 768),
    "1.75": (1344, 768), "2.0": (1408, 704), "2.09": (1472, 704), "2.4": (1536, 640),
    "2.5": (1600, 640), "2.89": (1664, 576), "3.0": (1728, 576), "3.11": (1792, 576),
    "3.62": (1856, 512), "3.75": (1920, 512), "3.88": (1984, 512), "4.0": (2048, 512),
}  # fmt: skip


def _scaled(table: BucketTable, num: int, den: int = 1) -> dict[str, tuple[int, int]]:
    return {k: (h * num // den, w * num // den) for k, (h, w) in table.items()}


def _without(table: BucketTable, keys: set[str]) -> dict[str, tuple[int, int]]:
    return {k: v for k, v in table.items() if k not in keys}


ASPECT_RATIO_256 = _scaled(ASPECT_RATIO_1024, 1, 4)  # multiples of 16 (not 32, whatever the spec's summary says)
ASPECT_RATIO_512 = _scaled(ASPECT_RATIO_1024, 1, 2)
ASPECT_RATIO_2048 = _scaled(ASPECT_RATIO_1024, 2)
ASPECT_RATIO_4096 = _scaled(ASPECT_RATIO_1024, 4)

# Inference binning drops the rarely trained extremes; 2048_TEST keeps 0.26 instead of 0.28 (as the official code).
_TEST_DROPPED = {"0.26", "0.27", "2.89", "3.11", "3.62", "3.75", "3.88"}
ASPECT_RATIO_256_TEST = _without(ASPECT_RATIO_256, _TEST_DROPPED)
ASPECT_RATIO_512_TEST = _without(ASPECT_RATIO_512, _TEST_DROPPED)
ASPECT_RATIO_1024_TEST = _without(ASPECT_RATIO_1024, _TEST_DROPPED)
ASPECT_RATIO_2048_TEST = _without(ASPECT_RATIO_2048, (_TEST_DROPPED - {"0.26"}) | {"0.28"})

TABLES: dict[str, dict[str, tuple[int, int]]] = {
    "256": ASPECT_RATIO_256,
    "512": ASPECT_RATIO_512,
    "1024": ASPECT_RATIO_1024,
    "2048": ASPECT_RATIO_2048,
    "4096": ASPECT_RATIO_4096,
    "256_TEST": ASPECT_RATIO_256_TEST,
    "512_TEST": ASPECT_RATIO_512_TEST,
    "1024_TEST": ASPECT_RATIO_1024_TEST,
    "2048_TEST": ASPECT_RATIO_2048_TEST,
}


def get_table(name: str | int) -> dict[str, tuple[int, int]]:
    """The bucket table for a base resolution (`512`) or a named variant (`"1024_TEST"`)."""
    try:
        return TABLES[str(name)]
    except KeyError:
        raise KeyError(f"unknown bucket table {name!r}; valid: {sorted(TABLES)}") from None


def closest_ratio(height: int, width: int, table: BucketTable) -> str:
    """The key whose ratio is nearest to `height / width` (first key wins a tie, like the official `min`)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    ratio = height / width
    return min(table, key=lambda key: abs(float(key) - ratio))


def assign_buckets(heights: np.ndarray, widths: np.ndarray, table: BucketTable) -> np.ndarray:
    """Vectorised `closest_ratio`: index into `list(table)` for each (height, width), same tie rule.

    A binary search over the sorted keys (O(n log K) time, O(n) memory: a million rows in well under a second).
    """
    keys = np.array([float(k) for k in table])
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    ratios = np.asarray(heights, dtype=np.float64) / np.asarray(widths, dtype=np.float64)
    pos = np.searchsorted(sorted_keys, ratios)
    lo, hi = np.clip(pos - 1, 0, len(keys) - 1), np.clip(pos, 0, len(keys) - 1)
    d_lo, d_hi = np.abs(sorted_keys[lo] - ratios), np.abs(sorted_keys[hi] - ratios)
    # `min` over the table returns the first key in table order among equal distances.
    take_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (order[hi] < order[lo]))
    return np.where(take_hi, order[hi], order[lo])


def cover_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """(h, w) after an aspect-preserving resize that covers `target` (spec §6.3 step 3)."""
    th, tw = target
    size = (th, int(width * th / height)) if th / height > tw / width else (int(height * tw / width), tw)
    # int() truncation can fall one pixel short when both ratios are equal up to rounding.
    return max(size[0], th), max(size[1], tw)


def resize_cover_crop(
    image: Image.Image, target: tuple[int, int], resample: Image.Resampling = Image.Resampling.BICUBIC
) -> Image.Image:
    """Resize to cover `target` = (H, W) keeping the aspect ratio, then center-crop to exactly (H, W).

    Matches torchvision's `Resize(size, BICUBIC)` + `CenterCrop(size)` on PIL images (the official transform).
    """
    image = image.convert("RGB")
    h, w = cover_size(image.height, image.width, target)
    if (h, w) != (image.height, image.width):
        image = image.resize((w, h), resample)
    th, tw = target
    top, left = round((h - th) / 2.0), round((w - tw) / 2.0)  # torchvision's CenterCrop rounding
    return image.crop((left, top, left + tw, top + th))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> (3, H, W) float32 in [-1, 1] (ToTensor + Normalize(0.5, 0.5))."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    x = torch.from_numpy(array.copy()).permute(2, 0, 1)  # (3, H, W) uint8
    return x.float().div_(127.5).sub_(1.0)  # fp32: the model-facing pixel dtype; callers cast for their compute


def bucket_image(image: Image.Image, table: BucketTable) -> tuple[torch.Tensor, str]:
    """Nearest bucket of `image`, resized + cropped to it: ((3, H, W) in [-1, 1], bucket key)."""
    key = closest_ratio(image.height, image.width, table)
    return to_tensor(resize_cover_crop(image, table[key])), key
