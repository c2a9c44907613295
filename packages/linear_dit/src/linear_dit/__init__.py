"""linear_dit: Sana's Linear DiT backbone (ReLU linear self-attention, Mix-FFN, adaLN-single), exact against
the reference implementations and fast on CPU.

Shape glossary: B batch, C pixel channels (3), H, W pixel size, C_z latent channels, h, w latent size (H/f, W/f),
f spatial compression, p patch size, N image tokens (h*w/p²), D model width, L text tokens, D_txt text width,
nh heads, hd head width, K timesteps in a schedule.

Usage:

    model = LinearDiT.from_pretrained(path)              # our folder, a diffusers folder or an official .pth
    v = model(x, t, text, text_mask)                      # x (B, C_z, h, w), t (B,) in [0, 1] -> (B, C_z, h, w)

`t` is the flow time (t = 1 noise, t = 0 data); the model applies Sana's `1000 * t` scaling itself and predicts
the velocity v = eps - x0.
"""

from linear_dit.attention import relu_linear_attention
from linear_dit.config import LinearDiTConfig
from linear_dit.io import load_linear_dit, save_linear_dit
from linear_dit.model import PAG, LinearDiT, PrecisionWarning
from linear_dit.presets import PRESETS, get_preset

__version__ = "0.1.0"

__all__ = (
    # the model and its configuration
    "LinearDiT",
    "LinearDiTConfig",
    "PRESETS",
    "get_preset",
    # guidance and numerics
    "PAG",
    "PrecisionWarning",
    "relu_linear_attention",
    # checkpoints
    "load_linear_dit",
    "save_linear_dit",
)
