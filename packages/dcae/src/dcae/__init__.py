"""dcae: the DC-AE deep-compression autoencoder (Sana's dc-ae-f32c32 and the in/mix family).

Exact against diffusers' `AutoencoderDC`, reads and writes the efficientvit, diffusers and our own
(safetensors + config.json) formats, encodes and decodes 4K images in tiles, and runs alone.

Shape glossary:

| symbol | meaning |
|---|---|
| `B` | batch |
| `C` | pixel channels (3) |
| `H, W` | pixel height and width |
| `C_z` | latent channels (32 for Sana's DC-AE) |
| `h, w` | latent height and width (`H/f`, `W/f`) |
| `f` | spatial compression of the autoencoder (32) |
| `p` | DiT patch size (1 for Sana) |
| `N` | image tokens, `h*w/p²` |
| `D` | model width |
| `L` | text tokens (300 by default) |
| `D_txt` | text-encoder width (2304 for Gemma-2-2B) |
| `nh`, `hd` | attention heads and head width |
| `K` | timesteps in a schedule |

Usage:

    ae = load_dcae("path/to/dc-ae-f32c32-sana-1.1-diffusers", dtype=torch.bfloat16)
    z = ae.encode(images)        # (B, 3, H, W) in [-1, 1] -> raw latents (B, C_z, H/f, W/f)
    x = decode_tiled(ae, z)      # raw latents -> (B, 3, H, W), tiled to a memory budget

Latents are raw: the diffusion model sees `z * ae.scaling_factor`, applied by the caller.
"""

from dcae.config import DCAEConfig
from dcae.io import load_dcae, save_dcae
from dcae.model import DCAE
from dcae.presets import PRESETS
from dcae.tiling import decode_tiled, encode_tiled

__all__ = (
    # model and config
    "DCAE",
    "PRESETS",
    "DCAEConfig",
    # tiling
    "decode_tiled",
    "encode_tiled",
    # checkpoints
    "load_dcae",
    "save_dcae",
)
