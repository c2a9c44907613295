"""Small, deterministic stand-ins for tests and docs (no model weights, no downloads).

- `make_toy_dataset(path, n=8)`: an image + caption folder from the shapes world.
- `ToyAutoencoder`: an `Autoencoder`-shaped pixel-unshuffle "encoder" (exact, invertible), f = 8 by default.
- `ToyTextEncoder`: a `TextEncoder`-shaped encoder whose embeddings are a hash of each word.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .folder import write_folder
from .shapes import DEFAULT_SIZES, ShapesSource


def make_toy_dataset(
    path: str | os.PathLike, n: int = 8, *, seed: int = 0, sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES
) -> Path:
    """Write `n` shapes-world samples as an image + caption folder at `path` and return it."""
    return write_folder(ShapesSource(n, seed=seed, sizes=sizes, split="any"), path)


class ToyAutoencoder:
    """`encode`: pixel-unshuffle by `f` then a fixed channel mix to `latent_channels` (deterministic)."""

    def __init__(self, spatial_compression: int = 8, latent_channels: int = 4, seed: int = 0) -> None:
        self.spatial_compression, self.latent_channels, self.scaling_factor = spatial_compression, latent_channels, 1.0
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.randn(latent_channels, 3 * spatial_compression**2, generator=g) / spatial_compression

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C_z, H/f, W/f)."""
        x = F.pixel_unshuffle(images.float(), self.spatial_compression)  # (B, 3*f*f, h, w)
        return torch.einsum("cd,bdhw->bchw", self.mix, x)  # (B, C_z, h, w)


class ToyTextEncoder:
    """`encode`: each word -> a fixed pseudo-random vector (hash-seeded); right padding to `max_length`."""

    def __init__(self, embed_dim: int = 8, max_length: int = 16) -> None:
        self.embed_dim, self.max_length = embed_dim, max_length

    def _word(self, word: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        return torch.randn(self.embed_dim, generator=torch.Generator().manual_seed(seed))

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> embeddings (B, L, D_txt), mask (B, L) bool (True = real token)."""
        emb = torch.zeros(len(prompts), self.max_length, self.embed_dim)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for b, prompt in enumerate(prompts):
            for t, word in enumerate(prompt.lower().split()[: self.max_length]):
                emb[b, t], mask[b, t] = self._word(word), True
        return emb, mask
