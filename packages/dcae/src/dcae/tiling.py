"""Tiled encode and decode: bounded memory for 2K/4K images, with overlapping tiles blended linearly.

Tiles are square, `tile` pixels wide (a multiple of f), and overlap their neighbours by `overlap` pixels.
Each output pixel is the weighted mean of the tiles covering it; a tile's weight ramps linearly from ~0 to 1
across the overlap on every side that has a neighbour, so seams fade out instead of stepping. The tiles see
different context (the attention is global within a tile), so the result is close to, not equal to, the
untiled one; `tests/test_tiling.py` states the bound. When the whole input fits in one tile the functions
call `encode`/`decode` directly and the result is exact.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dcae.config import DCAEConfig
from dcae.model import DCAE

DEFAULT_MEMORY_BUDGET = 1.2 * 2**30  # bytes of activations per tile when neither tile nor budget is given
MIN_TILE_LATENTS = 4  # smallest automatic tile, in latent pixels (128 px for f = 32)

# Live activations per pixel of a stage, in multiples of its width (an upper bound, not a fit): a ResBlock holds
# its input, both conv outputs and the fp32 norm temporaries; an EfficientViT block holds the 6C multi-scale qkv
# with its fp32 copies and the 8C MBConv hidden map twice. The inference kernels (in-place adds and activations)
# hold about half of this: for the default 640² Sana decode tile the estimate is 1.17 GiB, and the measured peak
# RSS of a 2048² decode was 0.75-1.0 GiB above the 1.47 GiB of weights and runtime (docs/dcae.md). The estimate
# stays an upper bound so that a budget is never exceeded; the default budget is set from the measured peaks.
_RES_LIVE, _EVIT_LIVE = 6, 28


def activation_bytes(cfg: DCAEConfig, height: int, width: int, batch: int, dtype: torch.dtype, mode: str) -> int:
    """Estimated peak activation memory of one encode or decode of a (batch, 3, height, width) image."""
    elem = torch.finfo(dtype).bits // 8
    blocks = cfg.decoder_blocks if mode == "decode" else cfg.encoder_blocks
    depths = cfg.decoder_depths if mode == "decode" else cfg.encoder_depths
    peak = 0
    for i, (kind, depth) in enumerate(zip(blocks, depths)):
        pixels = height * width // 4**i
        c = cfg.widths[i]
        live = (_RES_LIVE if kind == "res" else _EVIT_LIVE) * c if depth else 0
        if i + 1 < len(cfg.widths):  # the resampling into/out of this stage, at this stage's resolution
            live = max(live, cfg.widths[i + 1] + 4 * c)
        peak = max(peak, live * pixels)
    return batch * peak * elem


def auto_tile(cfg: DCAEConfig, batch: int, dtype: torch.dtype, mode: str, memory_budget: float | None = None) -> int:
    """The largest square tile (pixels, a multiple of f) whose estimated activations fit `memory_budget`."""
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    f = cfg.spatial_compression
    unit = activation_bytes(cfg, f, f, batch, dtype, mode)  # bytes per latent pixel; cost is linear in area
    side = int((budget / unit) ** 0.5)
    return max(MIN_TILE_LATENTS, side) * f


def _starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile origins along one axis: every `stride`, the last one flush with the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return [*starts, size - tile]


def _ramp(length: int, ramp: int, left: bool, right: bool) -> torch.Tensor:
    """(length,) weights: 1 inside, rising linearly over `ramp` cells on each side that has a neighbour."""
    x = torch.arange(length, dtype=torch.float32) + 0.5
    w = torch.ones(length)
    if left:
        w = torch.minimum(w, x / ramp)
    if right:
        w = torch.minimum(w, (length - x) / ramp)
    return w


def _blend_tiles(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile_in: int,
    stride_in: int,
    scale: float,
    out_channels: int,
) -> torch.Tensor:
    """Run `fn` on overlapping square tiles of x (B, C, H, W) and blend; outputs are `scale` times the size."""
    B, _, H, W = x.shape
    rows, cols = _starts(H, tile_in, stride_in), _starts(W, tile_in, stride_in)
    out = torch.zeros(B, out_channels, round(H * scale), round(W * scale), device=x.device)  # (B, C_out, H', W')
    weight = torch.zeros(1, 1, out.shape[2], out.shape[3], device=x.device)  # (1, 1, H', W')
    ramp = max(1, round((tile_in - stride_in) * scale))
    for r, top in enumerate(rows):
        for c, left in enumerate(cols):
            piece = fn(x[:, :, top : top + tile_in, left : left + tile_in]).float()  # (B, C_out, t', t')
            th, tw = piece.shape[-2:]
            wy = _ramp(th, ramp, r > 0, r < len(rows) - 1)  # (t',)
            wx = _ramp(tw, ramp, c > 0, c < len(cols) - 1)  # (t',)
            w = (wy[:, None] * wx[None, :]).to(x.device)  # (t', t')
            y0, x0 = round(top * scale), round(left * scale)
            out[:, :, y0 : y0 + th, x0 : x0 + tw] += piece * w
            weight[:, :, y0 : y0 + th, x0 : x0 + tw] += w
    return out / weight


def _tile_and_stride(tile: int, overlap: int | None, f: int) -> tuple[int, int]:
    if tile % f or tile <= 0:
        raise ValueError(f"tile must be a positive multiple of the compression {f}, got {tile}")
    overlap = tile // 4 if overlap is None else overlap
    overlap = overlap // f * f
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    return tile, tile - overlap


@torch.no_grad()
def decode_tiled(
    ae: DCAE,
    latents: torch.Tensor,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    memory_budget: float | None = None,
) -> torch.Tensor:
    """Decode in overlapping tiles (no autograd).

    Args:
        ae: the autoencoder.
        latents: (B, C_z, h, w) raw latents.
        tile: tile side in output pixels (a multiple of f). None: the largest that fits `memory_budget`.
        overlap: overlap between neighbouring tiles in pixels (rounded down to a multiple of f);
            None: tile // 4.
        memory_budget: bytes of activations per tile for the automatic tile size (default 1.2 GiB).

    Returns:
        (B, 3, h·f, w·f) images in the model's dtype; exactly `ae.decode(latents)` when one tile covers them.
    """
    f = ae.spatial_compression
    if tile is None:
        tile = auto_tile(ae.config, latents.shape[0], ae.dtype, "decode", memory_budget)
    tile, stride = _tile_and_stride(tile, overlap, f)
    h, w = latents.shape[-2:]
    if tile // f >= max(h, w):
        return ae.decode(latents)
    out = _blend_tiles(ae.decode, latents, tile // f, stride // f, f, ae.config.in_channels)
    return out.to(ae.dtype)


@torch.no_grad()
def encode_tiled(
    ae: DCAE,
    images: torch.Tensor,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    memory_budget: float | None = None,
) -> torch.Tensor:
    """Encode in overlapping tiles (no autograd).

    Args:
        ae: the autoencoder.
        images: (B, 3, H, W) float in [-1, 1], H and W multiples of f.
        tile: tile side in input pixels (a multiple of f). None: the largest that fits `memory_budget`.
        overlap: overlap between neighbouring tiles in pixels (rounded down to a multiple of f);
            None: tile // 4.
        memory_budget: bytes of activations per tile for the automatic tile size (default 1.2 GiB).

    Returns:
        (B, C_z, H/f, W/f) raw latents in the model's dtype; exactly `ae.encode(images)` for a single tile.
    """
    f = ae.spatial_compression
    H, W = images.shape[-2:]
    if H % f or W % f:
        raise ValueError(f"image size {H}x{W} is not a multiple of the compression {f}; pad or crop first")
    if tile is None:
        tile = auto_tile(ae.config, images.shape[0], ae.dtype, "encode", memory_budget)
    tile, stride = _tile_and_stride(tile, overlap, f)
    if tile >= max(H, W):
        return ae.encode(images)
    out = _blend_tiles(ae.encode, images, tile, stride, 1 / f, ae.latent_channels)
    return out.to(ae.dtype)
