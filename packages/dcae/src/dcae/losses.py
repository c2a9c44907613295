"""Training losses for the DC-AE: pixel L1/L2, SSIM, a Sobel-edge L1, and a hinge PatchGAN on the decoder.

Nothing here downloads a network. The "perceptual" side is two fixed, differentiable image statistics:

- **SSIM** (Wang et al. 2004, the same Gaussian 11×11, σ 1.5 window and constants as `dcae.images.ssim`, computed
  separably so it is cheap at 256²): penalises lost local contrast and structure that L1 averages away.
- **edges**: an L1 between the Sobel gradients of the reconstruction and the target. A 32× autoencoder trained on
  pixel losses alone blurs edges first; the shapes world is flat colour regions with hard, aliased boundaries,
  so an error on the gradient image is concentrated exactly where the blur is, and it weights a one-pixel
  edge shift as much as a whole flat region's colour error.

The adversarial phase (DC-AE's third phase, "GAN loss on the decoder only") uses a small PatchGAN without
normalisation layers (so no running statistics to checkpoint) and the hinge loss, at a fixed weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2  # on images in [0, 1]
LEAKY_SLOPE = 0.2
LOSS_TERMS = ("l1", "l2", "ssim", "edge")  # the reconstruction terms, in log-column order


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator loss terms. `ssim` weighs `1 - SSIM`; `adversarial` only applies in the
    adversarial phase (`train_autoencoder(adversarial_from_step=...)`)."""

    l1: float = 1.0
    l2: float = 1.0  # with L1 alone small objects collapse to the background (L1's median); see docs/dcae.md
    ssim: float = 0.2
    edge: float = 0.5
    adversarial: float = 0.05
    latent: float = 0.0  # mean(z²) of the raw latents: keeps them O(1) (unpenalised, the shortcuts let them grow)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"losses.{f.name} must be a finite number >= 0, got {value!r}")
        if not any(getattr(self, name) > 0 for name in LOSS_TERMS):
            raise ValueError(f"losses: at least one of {list(LOSS_TERMS)} must be > 0")

    def to_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


def _gaussian(window: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(window, dtype=torch.float32) - window // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()  # (window,)


def ssim_map_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Differentiable SSIM per image for (B, C, H, W) in [-1, 1]; equals `dcae.images.ssim` (separable blur).
    Images smaller than the 11-pixel window use the largest odd window that fits (same σ)."""
    x, y = (a + 1) / 2, (b + 1) / 2  # (B, C, H, W) in [0, 1]
    channels = x.shape[1]
    window = min(SSIM_WINDOW, (min(x.shape[-2:]) - 1) // 2 * 2 + 1)
    g = _gaussian(window, SSIM_SIGMA).to(x.device, x.dtype)
    kh = g.view(1, 1, -1, 1).expand(channels, 1, -1, 1)  # (C, 1, k, 1)
    kw = g.view(1, 1, 1, -1).expand(channels, 1, 1, -1)  # (C, 1, 1, k)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kh, groups=channels), kw, groups=channels)  # (B, C, H-k+1, W-k+1)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    s = num / ((mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2))
    return s.flatten(1).mean(dim=1)  # (B,)


def sobel(images: torch.Tensor) -> torch.Tensor:
    """Horizontal and vertical Sobel gradients per channel: (B, C, H, W) → (B, 2C, H, W) (replicate padding)."""
    channels = images.shape[1]
    gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=images.device) / 4
    kernel = torch.stack([gx, gx.T])[:, None].repeat(channels, 1, 1, 1).to(images.dtype)  # (2C, 1, 3, 3)
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kernel, groups=channels)  # (B, 2C, H, W)


def reconstruction_losses(recon: torch.Tensor, target: torch.Tensor, weights: LossWeights) -> dict[str, torch.Tensor]:
    """Every reconstruction term (batch means, fp32) and their weighted sum under `"loss"`."""
    recon, target = recon.float(), target.float()  # losses in fp32 even under bf16 autocast: small differences
    terms = {
        "l1": (recon - target).abs().mean(),
        "l2": (recon - target).pow(2).mean(),
        "ssim": 1 - ssim_map_mean(recon, target).mean(),
        "edge": (sobel(recon) - sobel(target)).abs().mean(),
    }
    terms["loss"] = sum(getattr(weights, name) * terms[name] for name in LOSS_TERMS)
    return terms


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / VQGAN layout, no normalisation): 4×4 stride-2 convs with LeakyReLU, widths doubling
    from `width`, then a 4×4 conv to one logit per patch. (B, 3, H, W) → (B, 1, ≈H/2^layers, ≈W/2^layers)."""

    def __init__(self, in_channels: int = 3, width: int = 32, layers: int = 3) -> None:
        super().__init__()
        if width < 1 or layers < 1:
            raise ValueError(f"discriminator width and layers must be >= 1, got {width} and {layers}")
        modules: list[nn.Module] = []
        c_in = in_channels
        for i in range(layers):
            c_out = width * 2**i
            modules += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(LEAKY_SLOPE)]
            c_in = c_out
        modules.append(nn.Conv2d(c_in, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*modules)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)  # (B, 1, h', w') logits


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """0.5 · (mean relu(1 − D(real)) + mean relu(1 + D(fake)))."""
    real, fake = real_logits.float(), fake_logits.float()  # fp32 loss even for bf16-autocast logits
    return 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """−mean D(fake)."""
    return -fake_logits.float().mean()  # fp32 loss even for bf16-autocast logits
