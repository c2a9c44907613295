"""The four small protocols through which `sana` composes its parts (house style §4.6).

They are structural: `dcae.DCAE`, `linear_dit.LinearDiT`, `sana_text.TextEncoder` and the `flow_dpm` samplers
satisfy them without importing `sana`, and any user object with the same members can replace one of them.

Shapes: B batch, H, W pixels, C_z latent channels, h, w latent size, f spatial compression, L text tokens,
D_txt text width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

VelocityField = Callable[[Tensor, Tensor], Tensor]  # (x (B, C_z, h, w), t (B,)) -> velocity (B, C_z, h, w)
StepCallback = Callable[[int, Tensor, Tensor, Tensor], Any]  # (step, t (B,), x, x0 prediction) -> ignored


@runtime_checkable
class Autoencoder(Protocol):
    """Pixels <-> raw latents. Pixels are (B, 3, H, W) floats in [-1, 1]; latents are unscaled."""

    spatial_compression: int  # f = H / h, e.g. 32
    latent_channels: int  # C_z, e.g. 32
    scaling_factor: float  # diffusion latents = raw latents * scaling_factor

    def encode(self, images: Tensor) -> Tensor: ...  # (B, 3, H, W) -> (B, C_z, H/f, W/f), raw

    def decode(self, latents: Tensor) -> Tensor: ...  # (B, C_z, h, w), raw -> (B, 3, h*f, w*f)


@runtime_checkable
class SupportsTiledDecode(Protocol):
    """Optional capability: decode in overlapping tiles within a memory budget (bytes of activations per tile)."""

    def decode_tiled(self, latents: Tensor, *, memory_budget: float | None = None) -> Tensor: ...


@runtime_checkable
class TextEncoder(Protocol):
    """Prompts -> conditioning. `encode` prepends the model's instruction (CHI) where it uses one;
    `encode_negative` never does (negative prompts and the null embedding, spec §5.4)."""

    embed_dim: int  # D_txt
    max_length: int  # L, e.g. 300

    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]: ...  # (B, L, D_txt), mask (B, L) 0/1

    def encode_negative(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]: ...  # (B, L, D_txt), (B, L)


@runtime_checkable
class SupportsFree(Protocol):
    """Optional capability: release the model's memory for good (after the prompts are encoded)."""

    def free(self) -> None: ...


@runtime_checkable
class Denoiser(Protocol):
    """The transformer as the pipeline sees it: x (B, C_z, h, w), t (B,) in [0, 1] -> velocity (B, C_z, h, w)."""

    def __call__(self, x: Tensor, t: Tensor, text: Tensor, text_mask: Tensor | None) -> Tensor: ...


@runtime_checkable
class SupportsPAG(Protocol):
    """Optional capability: perturbed-attention guidance. The call takes `pag=linear_dit.PAG(rows, layers)`
    and uses identity self-attention for those batch rows in those blocks; `pag_layers` are the defaults."""

    pag_layers: tuple[int, ...]

    def __call__(self, x: Tensor, t: Tensor, text: Tensor, text_mask: Tensor | None, *, pag: Any) -> Tensor: ...


@runtime_checkable
class Sampler(Protocol):
    """Integrates a velocity field from noise at t = 1 to data at t = 0 (the `flow_dpm` samplers)."""

    def sample(
        self, velocity: VelocityField, noise: Tensor, num_steps: int, *, callback: StepCallback | None = None
    ) -> Tensor: ...
