"""LinearDiT: the SanaMS backbone (Sana spec §3.2), velocity prediction for flow matching."""

from __future__ import annotations

import warnings
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from linear_dit.attention import MASKED_BIAS, RMSNorm
from linear_dit.blocks import FinalLayer, SanaBlock
from linear_dit.config import LinearDiTConfig
from linear_dit.embeddings import CaptionEmbedder, PatchEmbed, TimestepEmbedder, sincos_pos_embed

if TYPE_CHECKING:
    from linear_dit.io import Format

TIME_SCALE = 1000.0  # Sana's network takes 1000·t for flow time t in [0, 1]
_HALF = {torch.float16: "float16", torch.bfloat16: "bfloat16"}


class PrecisionWarning(UserWarning):
    """A checkpoint trained in one half precision is being run in the other (spec §3.13: this degrades it)."""


@dataclass(frozen=True)
class PAG:
    """Perturbed-attention guidance for one call (spec §4.4 step 3).

    In the blocks `layers` (None: the config's `pag_layers`), the batch rows `rows` use identity self-attention
    (output `proj(V)`); every other row and block is untouched. With CFG+PAG the batch is
    [uncond, cond, cond] and `rows=slice(2 * n, 3 * n)`.
    """

    rows: slice
    layers: tuple[int, ...] | None = None


class LinearDiT(nn.Module):
    """Sana's Linear DiT: `model(x, t, text, text_mask) -> velocity`.

    Shapes: x (B, C_z, h, w) latents with h, w multiples of p; t (B,) float flow time in [0, 1] (scaled to
    Sana's 1000·t inside); text (B, L, D_txt); text_mask (B, L) bool or 0/1 (True = real token), or None
    for all-real. Returns the velocity v ≈ eps - x0, (B, C_z, h, w), in the model's dtype.

    `grad_checkpointing` (False, True or a collection of block indices) recomputes those blocks'
    activations in the backward pass instead of storing them.
    """

    def __init__(self, config: LinearDiTConfig) -> None:
        super().__init__()
        c = self.config = config
        D = c.hidden_size
        self.grad_checkpointing: bool | Collection[int] = False
        self.x_embedder = PatchEmbed(c.in_channels, D, c.patch_size)
        self.t_embedder = TimestepEmbedder(D)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))  # adaLN-single, shared by all blocks
        self.y_embedder = CaptionEmbedder(c.caption_channels, D, c.text_length)
        self.attention_y_norm = RMSNorm(D, eps=1e-5, init=c.y_norm_scale)
        block_args = dict(eps=c.attention_eps, qk_norm=c.qk_norm, cross_norm=c.cross_norm, clamp_fp16=c.clamps_fp16)
        self.blocks = nn.ModuleList(
            SanaBlock(D, c.linear_head_dim, c.cross_attention_heads, c.mlp_hidden, **block_args) for _ in range(c.depth)
        )
        self.final_layer = FinalLayer(D, c.patch_size**2 * c.in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Sana spec §3.11: xavier Linears with zero bias, N(0, 0.02) embedder MLPs, no zero-init of gates."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))  # like a Linear on the flattened patch
        nn.init.zeros_(self.x_embedder.proj.bias)
        for linear in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.t_block[1]):
            nn.init.normal_(linear.weight, std=0.02)
        nn.init.normal_(self.y_embedder.y_proj.fc1.weight, std=0.02)
        nn.init.normal_(self.y_embedder.y_proj.fc2.weight, std=0.02)

    # --- Forward ---

    def forward(
        self, x: Tensor, t: Tensor, text: Tensor, text_mask: Tensor | None = None, *, pag: PAG | None = None
    ) -> Tensor:
        B, _, H, W = self._check_inputs(x, t, text, text_mask)
        p, dtype = self.config.patch_size, self.dtype
        self._warn_precision(dtype)
        h, w = H // p, W // p
        text, bias = self._text_bias(text.to(dtype), text_mask, B)
        # The residual stream stays fp32 whatever the weights' dtype: rounding it to bf16 after each of the
        # 3·depth residual adds costs ~1% relative error at 28 blocks; the branches still run in `dtype`.
        x = self.x_embedder(x.to(dtype)).float()  # (B, N, D)
        if self.config.pos_embed == "sincos":
            c = self.config
            x = x + sincos_pos_embed(c.hidden_size, h, w, c.pe_base_size, c.pe_interpolation).to(x.device)
        t = t.reshape(-1).expand(B).to(x.device)  # (B,)
        t_emb = self.t_embedder(t.float() * TIME_SCALE)  # (B, D) fp32, like the adaLN-single output below
        t0 = F.linear(F.silu(t_emb), self.t_block[1].weight.float(), self.t_block[1].bias.float())  # (B, 6D)
        y = self.attention_y_norm(self.y_embedder(text))  # (B, L, D)
        pag_rows, pag_layers = self._pag(pag, B, x.device)
        for i, block in enumerate(self.blocks):
            rows = pag_rows if i in pag_layers else None
            if self._checkpointed(i):
                x = checkpoint(block, x, y, t0, bias, (h, w), rows, use_reentrant=False)
            else:
                x = block(x, y, t0, bias, (h, w), rows)  # (B, N, D)
        x = self.final_layer(x, t_emb)  # (B, N, p²·C_z), in `dtype`
        x = x.view(B, h, w, p, p, -1).permute(0, 5, 1, 3, 2, 4)  # (B, C_z, h, p, w, p)
        return x.reshape(B, -1, H, W)  # (B, C_z, H, W)

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype

    @property
    def pag_layers(self) -> tuple[int, ...]:
        """The blocks PAG perturbs when a call's `PAG` names none (a checkpoint property, from the config)."""
        return self.config.pag_layers

    def _text_bias(self, text: Tensor, text_mask: Tensor | None, B: int) -> tuple[Tensor, Tensor | None]:
        """Additive cross-attention bias (B, 1, 1, L'), after dropping trailing columns padded in every row.

        Dropping is exact: a padded key gets bias -10000, so its softmax weight is exactly 0 whenever its row
        has a real token. A row with no real token attends over all L keys (the shared -10000 cancels in the
        softmax), as in the reference, so then nothing is dropped.
        """
        if text_mask is None:
            return text, None
        mask = text_mask.to(device=text.device, dtype=torch.bool)
        if mask.shape[0] != B:
            mask = mask.repeat(B // mask.shape[0], 1)  # one mask shared over the (CFG) batch
        if not torch.compiler.is_compiling() and bool(mask.any(dim=1).all()):
            keep = int(mask.any(dim=0).nonzero().max()) + 1
            text, mask = text[:, :keep], mask[:, :keep]
        bias = (~mask).to(text.dtype) * MASKED_BIAS  # (B, L')
        return text, bias[:, None, None, :]  # (B, 1, 1, L')

    def _pag(self, pag: PAG | None, B: int, device: torch.device) -> tuple[Tensor | None, Collection[int]]:
        if pag is None:
            return None, ()
        layers = self.config.pag_layers if pag.layers is None else pag.layers
        bad = [i for i in layers if not 0 <= i < len(self.blocks)]
        if bad:
            raise ValueError(f"PAG layers {bad} are outside the {len(self.blocks)} blocks")
        rows = torch.zeros(B, dtype=torch.bool, device=device)
        rows[pag.rows] = True
        return rows, set(layers)

    def _checkpointed(self, i: int) -> bool:
        if not torch.is_grad_enabled():
            return False
        gc = self.grad_checkpointing
        return gc if isinstance(gc, bool) else i in gc

    def _warn_precision(self, dtype: torch.dtype) -> None:
        trained, running = self.config.trained_dtype, _HALF.get(dtype)
        if trained in ("float16", "bfloat16") and running is not None and running != trained:
            warnings.warn(
                f"this checkpoint was trained in {trained} but runs in {running}; Sana checkpoints degrade in the "
                "other half precision (use float32 or the trained dtype)",
                PrecisionWarning,
                stacklevel=3,
            )

    def _check_inputs(self, x: Tensor, t: Tensor, text: Tensor, text_mask: Tensor | None) -> tuple[int, ...]:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"x must be (B, C_z={c.in_channels}, h, w), got shape {tuple(x.shape)}")
        B, _, H, W = x.shape
        if H % c.patch_size or W % c.patch_size:
            raise ValueError(
                f"latent size {H}x{W} (x shape {tuple(x.shape)}) is not a multiple of patch {c.patch_size}"
            )
        if t.numel() not in (1, B) or t.ndim > 1:
            raise ValueError(f"t must be (B,)=({B},) or a scalar, got shape {tuple(t.shape)}")
        if text.ndim != 3 or text.shape[0] != B or text.shape[2] != c.caption_channels:
            raise ValueError(
                f"text must be (B, L, D_txt)=({B}, L, {c.caption_channels}), got shape {tuple(text.shape)}"
            )
        if text_mask is not None:
            m = text_mask.shape
            if len(m) != 2 or m[1] != text.shape[1] or m[0] == 0 or B % m[0]:
                raise ValueError(
                    f"text_mask must be (B, L)=({B}, {text.shape[1]}) (or (1, L) shared), got shape {tuple(m)} "
                    f"for text {tuple(text.shape)}"
                )
        return B, c.in_channels, H, W

    # --- Loading and saving (see linear_dit.io) ---

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> LinearDiT:
        """Load our folder, a diffusers `SanaTransformer2DModel` folder or an official `.pth`; see `load_linear_dit`."""
        from linear_dit.io import load_linear_dit

        return load_linear_dit(path, **kwargs)

    def save_pretrained(self, path: str | Path, fmt: Format = "linear_dit") -> Path:
        """Write this model as `fmt` ("linear_dit", "diffusers" or "sana"); see `save_linear_dit`."""
        from linear_dit.io import save_linear_dit

        return save_linear_dit(self, path, fmt=fmt)
