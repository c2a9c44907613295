"""sana: the Sana toolkit umbrella — configs, the text-to-image pipeline, model loading and the `sana` command.

It composes the leaf packages (`dcae`, `linear_dit`, `flow_dpm`, `sana_text`, `sana_data`) through the small
protocols in `sana.protocols`, so any part can be replaced by a user object with the same members.

    from sana import SanaPipeline
    sana = SanaPipeline("configs/sana_config/1024ms/Sana_1600M_img1024.yaml")
    sana.from_pretrained("hf://Efficient-Large-Model/Sana_1600M_1024px/checkpoints/Sana_1600M_1024px.pth")
    image = sana(prompt="a cat", height=1024, width=1024, guidance_scale=5.0, pag_guidance_scale=2.0,
                 num_inference_steps=18)                      # (1, 3, 1024, 1024) in [-1, 1]

Shape glossary (shared by every package): B batch, C pixel channels (3), H, W pixel height and width, C_z latent
channels (32), h, w latent height and width, f autoencoder compression (32), p DiT patch size, N image tokens,
D model width, L text tokens (300), D_txt text-encoder width (2304 for Gemma-2-2B), nh/hd attention heads and head
width, K timesteps in a schedule.
"""

from sana._compose import from_diffusion_latents, to_diffusion_latents
from sana.config import ConfigError, SanaConfig, dump_config, load_config, save_config
from sana.hub import ModelNotFoundError, resolve
from sana.images import read_metadata, resize_and_crop, save_png
from sana.pipeline import SanaPipeline
from sana.protocols import (
    Autoencoder,
    Denoiser,
    Sampler,
    SupportsFree,
    SupportsPAG,
    SupportsTiledDecode,
    TextEncoder,
)

__version__ = "0.1.0"

__all__ = (
    # the pipeline
    "SanaPipeline",
    # configs
    "SanaConfig",
    "ConfigError",
    "load_config",
    "dump_config",
    "save_config",
    # protocols
    "Autoencoder",
    "TextEncoder",
    "Denoiser",
    "Sampler",
    "SupportsPAG",
    "SupportsTiledDecode",
    "SupportsFree",
    # model locations (conversion: `sana.convert.convert`)
    "resolve",
    "ModelNotFoundError",
    # latent scaling (the one place)
    "to_diffusion_latents",
    "from_diffusion_latents",
    # images
    "resize_and_crop",
    "save_png",
    "read_metadata",
)
