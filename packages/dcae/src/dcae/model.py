"""The DC-AE encoder, decoder and the `DCAE` autoencoder (deterministic: no posterior, no sampling)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from dcae.blocks import DownsampleBlock, UpsampleBlock, make_block
from dcae.config import DCAEConfig
from dcae.norms import act_, make_norm


def _to_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Inference on a CPU runs the ResBlock stages in channels-last memory, and the rest in NCHW.

    oneDNN computes a 3×3 convolution on NHWC data directly; given NCHW it reorders input and output around
    every call. The ResBlock stages are the high-resolution ones, 70-80% of the time, and channels-last made a
    512² fp32 encode ~20% faster on a Zen 4 (the 3-channel project-in conv 2×). The EfficientViT stages (low
    resolution) reshape their maps into heads, so they stay NCHW. Training (autograd on) keeps NCHW throughout.
    """
    if torch.is_grad_enabled() or x.device.type != "cpu":
        return x
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _warn_if_slow_bf16(device: torch.device, dtype: torch.dtype) -> None:
    """bf16 convolutions on a CPU without AVX-512 run through oneDNN's reference kernels: measured ~240× slower
    than fp32 on an AVX2-only AMD EPYC. Same numbers, just unusably slow, so say so once."""
    if (
        dtype == torch.bfloat16
        and device.type == "cpu"
        and not torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    ):
        warnings.warn(
            "bfloat16 on this CPU (no AVX-512) uses slow fallback convolutions; float32 is much faster here",
            stacklevel=3,
        )


class Stage(nn.Module):
    """One resolution level: `blocks`, plus the encoder's trailing `down` or the decoder's leading `up`."""

    def __init__(
        self, blocks: list[nn.Module], down: nn.Module | None = None, up: nn.Module | None = None, conv: bool = False
    ) -> None:
        super().__init__()
        self.up = up
        self.blocks = nn.ModuleList(blocks)
        self.down = down
        self.channels_last = conv  # convolutional (ResBlock) stage: channels-last at CPU inference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _to_layout(x, self.channels_last)
        if self.up is not None:
            x = self.up(x)
        for block in self.blocks:
            x = block(x)
        if self.down is not None:
            x = self.down(x)
        return x


class Encoder(nn.Module):
    """(B, C, H, W) → (B, C_z, H/f, W/f)."""

    def __init__(self, cfg: DCAEConfig) -> None:
        super().__init__()
        widths, depths, n = cfg.widths, cfg.encoder_depths, len(cfg.widths)
        if depths[0] > 0:
            self.project_in: nn.Module = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        else:  # empty stage 0: the project-in conv also halves the resolution
            self.project_in = DownsampleBlock(cfg.in_channels, widths[1], cfg.downsample, shortcut=False)
        self.stages = nn.ModuleList()
        for i in range(n):
            blocks = [
                make_block(cfg.encoder_blocks[i], widths[i], cfg.head_dim, cfg.encoder_scales[i], "rms", "silu")
                for _ in range(depths[i])
            ]
            down = DownsampleBlock(widths[i], widths[i + 1], cfg.downsample) if depths[i] > 0 and i < n - 1 else None
            self.stages.append(Stage(blocks, down=down, conv=cfg.encoder_blocks[i] == "res"))
        self.project_out = nn.Conv2d(widths[-1], cfg.latent_channels, 3, padding=1)
        self.latent_channels = cfg.latent_channels
        self.first_conv = cfg.encoder_blocks[0 if depths[0] > 0 else 1] == "res"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project_in(_to_layout(x, self.first_conv))  # (B, widths[0 or 1], H or H/2, W or W/2)
        for stage in self.stages:
            x = stage(x)  # (B, widths[-1], H/f, W/f) after the last stage
        shortcut = x.unflatten(1, (self.latent_channels, -1)).mean(dim=2)  # (B, C_z, h, w)
        return _to_layout(self.project_out(x) + shortcut, False)  # (B, C_z, h, w)


class Decoder(nn.Module):
    """(B, C_z, h, w) → (B, C, h·f, w·f)."""

    def __init__(self, cfg: DCAEConfig) -> None:
        super().__init__()
        widths, depths, n = cfg.widths, cfg.decoder_depths, len(cfg.widths)
        self.project_in = nn.Conv2d(cfg.latent_channels, widths[-1], 3, padding=1)
        self.stages = nn.ModuleList()
        for i in range(n):
            blocks = [
                make_block(
                    cfg.decoder_blocks[i],
                    widths[i],
                    cfg.head_dim,
                    cfg.decoder_scales[i],
                    cfg.decoder_norms[i],
                    cfg.decoder_acts[i],
                )
                for _ in range(depths[i])
            ]
            up = UpsampleBlock(widths[i + 1], widths[i], cfg.upsample) if depths[i] > 0 and i < n - 1 else None
            self.stages.append(Stage(blocks, up=up, conv=cfg.decoder_blocks[i] == "res"))
        out_width = widths[0] if depths[0] > 0 else widths[1]
        self.norm_out = make_norm("rms", out_width)
        self.act_out = nn.ReLU()
        if depths[0] > 0:
            self.project_out: nn.Module = nn.Conv2d(out_width, cfg.in_channels, 3, padding=1)
        else:  # empty stage 0: the project-out conv also doubles the resolution
            self.project_out = UpsampleBlock(out_width, cfg.in_channels, cfg.upsample, shortcut=False)
        self.width = widths[-1]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        shortcut = z.repeat_interleave(self.width // z.shape[1], dim=1)  # (B, widths[-1], h, w)
        x = self.project_in(z) + shortcut  # (B, widths[-1], h, w)
        for stage in reversed(self.stages):
            x = stage(x)  # (B, widths[0 or 1], H or H/2, W or W/2) after stage 0
        return _to_layout(self.project_out(act_(self.act_out, self.norm_out(x))), False)  # (B, C, H, W)


class DCAE(nn.Module):
    """A DC-AE autoencoder: `encode` images to raw latents, `decode` raw latents to images.

    Latents are raw: the diffusion model sees `latents * scaling_factor`, and that product is taken by the
    caller (the `sana` umbrella), never here. The compute dtype is the parameters' dtype (`model.to(dtype)`);
    fp32 and bf16 are supported, fp16 decode warns (DC-AE was trained in bf16 and overflows in fp16).

    Attributes:
        config: the graph and checkpoint properties.
        spatial_compression: f = H / h.
        latent_channels: C_z.
        scaling_factor: diffusion latents = raw latents * scaling_factor (checkpoint property).
    """

    def __init__(self, config: DCAEConfig) -> None:
        super().__init__()
        self.config = config
        self.spatial_compression: int = config.spatial_compression
        self.latent_channels: int = config.latent_channels
        self.scaling_factor: float = config.scaling_factor
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images to raw latents.

        Args:
            images: (B, 3, H, W) float in [-1, 1]; H and W multiples of f (see `dcae.images.pad_to_multiple`).

        Returns:
            (B, C_z, H/f, W/f) raw latents in the model's dtype (no scaling applied).
        """
        f = self.spatial_compression
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"images must be (B, {self.config.in_channels}, H, W), got {tuple(images.shape)}")
        H, W = images.shape[-2:]
        if H % f or W % f:
            raise ValueError(
                f"image size {H}x{W} is not a multiple of the compression {f}; pad or crop first "
                f"(dcae.images.pad_to_multiple / crop_to_multiple)"
            )
        _warn_if_slow_bf16(images.device, self.dtype)
        return self.encoder(images.to(self.dtype))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents to images.

        Args:
            latents: (B, C_z, h, w) raw latents (divide diffusion latents by `scaling_factor` first).

        Returns:
            (B, 3, h·f, w·f) images, ≈[-1, 1] but unclamped, in the model's dtype.
        """
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must be (B, {self.latent_channels}, h, w) for this autoencoder, got {tuple(latents.shape)}"
            )
        if self.dtype == torch.float16:
            warnings.warn(
                "decoding DC-AE in float16 can overflow to black images; use bfloat16 or float32",
                stacklevel=2,
            )
        _warn_if_slow_bf16(latents.device, self.dtype)
        return self.decoder(latents.to(self.dtype))

    def decode_tiled(
        self, latents: torch.Tensor, *, tile: int | None = None, memory_budget: float | None = None
    ) -> torch.Tensor:
        """Decode in overlapping tiles sized to `memory_budget` bytes of activations; see `dcae.decode_tiled`."""
        from dcae.tiling import decode_tiled

        return decode_tiled(self, latents, tile=tile, memory_budget=memory_budget)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        *,
        config: DCAEConfig | str | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> DCAE:
        """Load from our folder, a diffusers `AutoencoderDC` folder, an efficientvit checkpoint or a hub id.

        See `dcae.load_dcae`, which this calls.
        """
        from dcae.io import load_dcae

        return load_dcae(source, config=config, dtype=dtype, device=device)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write our format: `config.json` + `model.safetensors` in the folder `path`."""
        from dcae.io import save_dcae

        return save_dcae(self, path)
