"""The pieces of one generation: bucket binning, per-image noise, the guided branch model and the sampler choice.

Shapes: B images, C_z latent channels, h, w latent size, L text tokens, D_txt text width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from flow_dpm import FlowDPMSolver, FlowEuler, cfg, cfg_pag
from linear_dit import PAG
from sana.protocols import Denoiser, Sampler, SupportsPAG, VelocityField
from sana_data import closest_ratio

DEFAULT_SEED = 42  # native SanaPipeline's default generator seed
# `vis_sampler` values (official names) -> our samplers and their default step counts (spec §4.5, §8.5).
SAMPLERS: dict[str, type[FlowDPMSolver] | type[FlowEuler]] = {"flow_dpm-solver": FlowDPMSolver, "flow_euler": FlowEuler}
DEFAULT_STEPS: dict[str, int] = {"flow_dpm-solver": 20, "flow_euler": 28}


def make_sampler(name: str, flow_shift: float) -> Sampler:
    """The sampler called `name` ("flow_dpm-solver", Sana's default, or "flow_euler") with Sana's settings."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {sorted(SAMPLERS)}")
    return SAMPLERS[name](flow_shift=flow_shift)


def bin_size(height: int, width: int, table: Mapping[str, tuple[int, int]]) -> tuple[int, int]:
    """The bucket (H, W) of `table` whose ratio H / W is closest to height / width (spec §8.4)."""
    return table[closest_ratio(height, width, table)]


def check_size(height: int, width: int, multiple: int) -> None:
    """Without binning the size must be a positive multiple of the autoencoder's compression."""
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
        if value % multiple:
            raise ValueError(
                f"{name}={value} is not a multiple of the autoencoder compression {multiple}; use a multiple of "
                f"{multiple} (e.g. {max(multiple, value // multiple * multiple)}) or turn resolution binning on"
            )


def per_image_seeds(seed: int | Sequence[int] | None, count: int) -> list[int]:
    """Seeds of `count` images: an int `s` gives s, s+1, ...; a sequence is used as is (one per image)."""
    if seed is None:
        seed = DEFAULT_SEED
    if isinstance(seed, int):
        return [seed + i for i in range(count)]
    seeds = [int(s) for s in seed]
    if len(seeds) != count:
        raise ValueError(f"got {len(seeds)} seeds for {count} images; pass one int or one seed per image")
    return seeds


def draw_noise(
    shape: tuple[int, int, int],
    *,
    seeds: Sequence[int] | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    count: int,
) -> Tensor:
    """(count, C_z, h, w) standard normal noise, fp32 on the CPU, drawn image by image.

    Each image has its own draw, so image i is the same whatever the batch it is generated in: from
    `generator[i]` (a list), from one `generator` consumed in image order, or from `Generator().manual_seed(seeds[i])`.
    Drawn on the CPU in fp32 so a seed gives the same image on every device and dtype.
    """
    if isinstance(generator, torch.Generator):
        gens = [generator] * count
    elif generator is not None:
        gens = list(generator)
        if len(gens) != count:
            raise ValueError(f"got {len(gens)} generators for {count} images; pass one generator or one per image")
    else:
        gens = [torch.Generator().manual_seed(s) for s in per_image_seeds(seeds, count)]
    return torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in gens])


@dataclass(frozen=True)
class Conditioning:
    """Encoded text for one batch: conditional and unconditional branches, each (B, L, D_txt) and (B, L)."""

    cond: Tensor
    cond_mask: Tensor
    uncond: Tensor
    uncond_mask: Tensor


def branch_model(denoiser: Denoiser, text: Conditioning, pag_layers: tuple[int, ...] | None = None):
    """A `flow_dpm` branch model over Sana's branches: 0 = uncond, 1 = cond, 2 = cond with perturbed attention.

    The requested branches run in one batched call (spec §4.4): [uncond, cond] for CFG, [uncond, cond, perturbed]
    for CFG+PAG; the perturbed rows get identity self-attention in `pag_layers` (None: the denoiser's defaults).
    """
    embeds = (text.uncond, text.cond, text.cond)
    masks = (text.uncond_mask, text.cond_mask, text.cond_mask)

    def model(x: Tensor, t: Tensor, branches: tuple[int, ...]) -> Tensor:
        B = x.shape[0] // len(branches)
        y = torch.cat([embeds[i] for i in branches])  # (n*B, L, D_txt)
        mask = torch.cat([masks[i] for i in branches])  # (n*B, L)
        if 2 not in branches:
            v = denoiser(x, t, y, mask)
        else:
            k = branches.index(2)
            v = denoiser(x, t, y, mask, pag=PAG(rows=slice(k * B, (k + 1) * B), layers=pag_layers))  # type: ignore[call-arg]
        return v.float()  # fp32: the solver's state and the guidance combination stay in fp32

    return model


def guided_field(
    denoiser: Denoiser,
    text: Conditioning,
    *,
    guidance_scale: float,
    pag_scale: float,
    interval: tuple[float, float] = (0.0, 1.0),
    pag_layers: tuple[int, ...] | None = None,
) -> VelocityField:
    """CFG, or CFG+PAG when `pag_scale > 1` (Sana applies PAG only then, spec §4.5), as one velocity field."""
    model = branch_model(denoiser, text, pag_layers)
    if pag_scale > 1.0:
        if not isinstance(denoiser, SupportsPAG):
            raise TypeError(
                f"pag_scale={pag_scale} needs a denoiser with perturbed-attention support (SupportsPAG); "
                f"{type(denoiser).__name__} has none; use pag_scale=1"
            )
        return cfg_pag(model, guidance_scale, pag_scale, interval=interval)
    return cfg(model, guidance_scale, interval=interval)
