"""`SanaPipeline`: text -> image with any autoencoder, text encoder, denoiser and sampler that fit the protocols.

    sana = SanaPipeline("configs/sana_config/1024ms/Sana_1600M_img1024.yaml")
    sana.from_pretrained("hf://Efficient-Large-Model/Sana_1600M_1024px/checkpoints/Sana_1600M_1024px.pth")
    image = sana(prompt="a cyberpunk cat", height=1024, width=1024, guidance_scale=5.0, pag_guidance_scale=2.0,
                 num_inference_steps=18, generator=torch.Generator().manual_seed(42))   # (1, 3, 1024, 1024) in [-1, 1]

    pipe = SanaPipeline.from_pretrained("Efficient-Large-Model/Sana_1600M_1024px_diffusers")  # or a local folder

Shapes: B images, C_z latent channels, H, W pixels, h, w latent size, f compression, L text tokens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from sana import _compose
from sana.images import resize_and_crop, to_pil, to_uint8
from sana.protocols import (
    Autoencoder,
    Denoiser,
    Sampler,
    StepCallback,
    SupportsFree,
    SupportsTiledDecode,
    TextEncoder,
)
from sana.sampling import (
    DEFAULT_STEPS,
    Conditioning,
    bin_size,
    check_size,
    draw_noise,
    guided_field,
    make_sampler,
    per_image_seeds,
)
from sana_data import TABLES, get_table
from sana_text import parse_prompt

log = logging.getLogger("sana")

OutputType = Literal["pt", "pil", "np", "latent"]
UncondMask = Literal["conditional", "own"]
OUTPUT_TYPES = ("pt", "pil", "np", "latent")


class _HybridMethod:
    """`SanaPipeline.from_pretrained(folder)` builds a pipeline; `pipe.from_pretrained(ckpt)` loads DiT weights."""

    def __init__(self, on_class: Callable[..., Any], on_instance: Callable[..., Any]) -> None:
        self.on_class, self.on_instance = on_class, on_instance
        self.__doc__ = on_class.__doc__

    def __get__(self, obj: Any, cls: type) -> Callable[..., Any]:
        if obj is None:
            return self.on_class.__get__(cls, cls)
        return self.on_instance.__get__(obj, cls)


class SanaPipeline:
    """Sana text-to-image generation (spec §8.1), built from a config or from explicit parts.

    Args:
        config: a YAML path (official Sana configs load unchanged), a `SanaConfig`, or None for the defaults.
        overrides: dotted overrides applied to the YAML (`["--model.image_size=512"]` or a dict).
        denoiser: the transformer to use (any object that satisfies `sana.protocols.Denoiser`); it may also come
            later from `from_pretrained`.
        autoencoder: used instead of the config's `vae` (a `sana.protocols.Autoencoder`).
        text_encoder: used instead of the config's `text_encoder` (a `sana.protocols.TextEncoder`).
        sampler: used instead of the config's `scheduler.vis_sampler` (a `sana.protocols.Sampler`).
        device: where the models run.
        dtype: compute dtype of the denoiser and autoencoder. None: the config's `mixed_precision` on accelerators,
            float32 on the CPU (fp16 is unusable there). `torch.bfloat16` on the CPU is the bf16 mode.
        decode_memory_budget: bytes of decoder activations above which an autoencoder that can decode in tiles
            does so (None: the autoencoder's default).
    """

    def __init__(
        self,
        config: Any = None,
        *,
        overrides: Any = (),
        denoiser: Denoiser | None = None,
        autoencoder: Autoencoder | None = None,
        text_encoder: TextEncoder | None = None,
        sampler: Sampler | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        decode_memory_budget: float | None = None,
    ) -> None:
        from sana.config import SanaConfig, load_config, weight_dtype

        self.config = config if isinstance(config, SanaConfig) else load_config(config, overrides)
        self.device = torch.device(device)
        self.dtype = dtype or (torch.float32 if self.device.type == "cpu" else weight_dtype(self.config))
        self.decode_memory_budget = decode_memory_budget
        self.sources: dict[str, str] = {}  # where each loaded part came from (recorded in image metadata)
        self.autoencoder = autoencoder if autoencoder is not None else self._load_autoencoder()
        self.text_encoder = text_encoder if text_encoder is not None else self._load_text_encoder()
        self.denoiser = denoiser
        self.sampler = sampler
        self.timings: dict[str, float] = {}
        self._negatives: dict[str, tuple[Tensor, Tensor]] = {}
        self._check_parts()

    # --- construction -------------------------------------------------------------------------------------------

    def _load_autoencoder(self) -> Autoencoder:
        dtype = _compose.autoencoder_dtype(self.dtype, self.device)
        autoencoder, path = _compose.load_autoencoder(self.config, dtype=dtype, device=self.device)
        self.sources["vae"] = str(path)
        return autoencoder

    def _load_text_encoder(self) -> TextEncoder:
        encoder, path = _compose.load_config_text_encoder(self.config, dtype=self.dtype, device=self.device)
        self.sources["text_encoder"] = str(path)
        return encoder

    def _load_denoiser(self, location: str | Path) -> SanaPipeline:
        """Load the transformer from an official `.pth`, a diffusers transformer folder or ours (local or hub)."""
        from linear_dit import load_linear_dit
        from sana.config import dit_config

        path = _compose.resolve_field(str(location), "model_path")
        graph = dit_config(self.config)
        # The widths and depth are read off the checkpoint's shapes (an official .pth has no config); what shapes
        # cannot tell comes from the YAML: positional embedding, PAG layers, training precision.
        known = ("pos_embed", "pe_interpolation", "pe_base_size", "pag_layers", "trained_dtype")
        extra = {name: getattr(graph, name) for name in known}
        if self.config.model.cross_attention_heads is not None:
            extra["cross_attention_heads"] = self.config.model.cross_attention_heads
        self.denoiser = load_linear_dit(path, dtype=self.dtype, device=self.device, **extra)
        self.sources["transformer"] = str(path)
        found = self.denoiser.config
        if (found.depth, found.hidden_size) != (graph.depth, graph.hidden_size):
            log.warning(
                "checkpoint %s has %d blocks of width %d but model.model=%s describes %d x %d; using the checkpoint",
                path, found.depth, found.hidden_size, self.config.model.model, graph.depth, graph.hidden_size,
            )  # fmt: skip
        self._check_parts()
        return self

    @classmethod
    def _from_folder(
        cls, location: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None, **kw: Any
    ) -> SanaPipeline:
        """Build a whole pipeline from a diffusers-format folder or hub repo (model_index.json + transformer/ vae/
        text_encoder/ tokenizer/ scheduler/), or from our converted pipeline folder (same sub-folders)."""
        from sana._folders import pipeline_from_folder

        return pipeline_from_folder(cls, location, device=device, dtype=dtype, **kw)

    from_pretrained = _HybridMethod(_from_folder, _load_denoiser)

    def _check_parts(self) -> None:
        ae, model = self.autoencoder, self.denoiser
        expected = getattr(getattr(model, "config", None), "in_channels", None)
        if expected is not None and expected != ae.latent_channels:
            raise ValueError(
                f"the denoiser takes {expected} latent channels but the autoencoder makes {ae.latent_channels}; "
                "load a matching autoencoder (config field vae.vae_pretrained)"
            )

    # --- generation ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        height: int = 1024,
        width: int = 1024,
        negative_prompt: str = "",
        num_inference_steps: int | None = None,
        guidance_scale: float = 5.0,
        pag_guidance_scale: float = 2.5,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        *,
        seed: int | Sequence[int] | None = None,
        latents: Tensor | None = None,
        sampler: str | Sampler | None = None,
        use_resolution_binning: bool = True,
        output_type: OutputType = "pt",
        callback: StepCallback | None = None,
        progress: bool = True,
        interval_guidance: tuple[float, float] = (0.0, 1.0),
        uncond_mask: UncondMask = "conditional",
        free_text_encoder: bool = False,
    ) -> Any:
        """Generate images; defaults are native Sana's (spec §8.1).

        Args:
            prompt: one prompt or a list. `--ar H:W` / `--aspect_ratio H:W` in a prompt pick the closest bucket of
                that ratio, `--hw H:W` an exact size; the flags are cut from the prompt.
            height: the height asked for, in pixels. With binning (default) generation runs at the closest bucket
                of the `_TEST` table and the image is resized and center-cropped back; without, height and width
                must be multiples of the autoencoder's compression.
            width: the width asked for, in pixels (as `height`).
            negative_prompt: encoded without the instruction at full length; "" is the null embedding.
            num_inference_steps: solver steps (None: 20 for Flow-DPM-Solver, 28 for Flow-Euler).
            guidance_scale: CFG scale (1 runs the conditional branch only).
            pag_guidance_scale: PAG scale; PAG runs when it is > 1, in the config's `pag_applied_layers`.
            num_images_per_prompt: images per prompt, consecutive in the output.
            generator: one generator (consumed image by image) or one per image.
            seed: instead of a generator: image i uses seed + i (or a list with one seed per image), so an image is
                the same whatever the batch it is generated in. Default (neither): seed 42, as native Sana.
            latents: initial noise (B, C_z, h, w) to use instead of drawing it.
            sampler: "flow_dpm-solver", "flow_euler" or a Sampler object (None: the config's `vis_sampler`).
            use_resolution_binning: bin to the `_TEST` bucket table (spec §8.4).
            output_type: "pt" (tensor in [-1, 1]), "pil", "np" (uint8 (B, H, W, 3)) or "latent".
            callback: called after every step with (step, t, x, x0 prediction).
            progress: show a tqdm bar over the steps.
            interval_guidance: guidance only while t is inside (native `interval_guidance`).
            uncond_mask: "conditional" (native: the null features are read through the prompt's mask) or "own"
                (diffusers: the negative prompt's own mask).
            free_text_encoder: drop the text encoder after encoding (frees its memory; later prompts need a new
                pipeline or a text encoder that caches).

        Returns:
            As `output_type`; for "pt"/"np"/"latent" a list instead of one array when `--ar`/`--hw` flags made the
            images differ in size.
        """
        if self.denoiser is None:
            raise RuntimeError("no transformer weights loaded: call pipe.from_pretrained(<checkpoint>) first")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        prompts, sizes = self._parse_prompts(prompt, height, width)
        n = _positive_int("num_images_per_prompt", num_images_per_prompt)
        sampler_obj, steps = self._sampler(sampler, num_inference_steps)
        seeds = None if generator is not None else per_image_seeds(seed, len(prompts) * n)
        gens = [generator] * (len(prompts) * n) if isinstance(generator, torch.Generator) else generator
        start = time.perf_counter()
        text = self._encode(prompts, negative_prompt, n, uncond_mask)
        self.timings = {"text": time.perf_counter() - start, "denoise": 0.0, "decode": 0.0}
        if free_text_encoder:
            self.free_text_encoder()
        results: list[Tensor | None] = [None] * (len(prompts) * n)
        for size, rows in _group_rows(sizes, n).items():
            images = self._generate(
                size,
                rows,
                text,
                steps,
                sampler_obj,
                noise=_pick(latents, rows, len(results)),
                seeds=_pick(seeds, rows),
                gens=_pick(gens, rows),
                scales=(guidance_scale, pag_guidance_scale, interval_guidance),
                binning=use_resolution_binning,
                latent_only=output_type == "latent",
                callback=callback,
                progress=progress,
            )
            for row, image in zip(rows, images):
                results[row] = image
        return _format([r for r in results if r is not None], output_type)

    def _generate(
        self, size, rows, text, steps, sampler, *, noise, seeds, gens, scales, binning, latent_only, callback, progress
    ) -> Tensor:
        """One group of images that share a size: noise, guided sampling, decode, resize back."""
        (height, width), f = size, self.autoencoder.spatial_compression
        H, W = bin_size(height, width, self.bucket_table) if binning else (height, width)
        check_size(H, W, f)
        idx = torch.tensor(rows)
        if noise is None:
            noise = draw_noise(
                (self.autoencoder.latent_channels, H // f, W // f), seeds=seeds, generator=gens, count=len(rows)
            )
        group = Conditioning(
            *(t[idx].to(self.device) for t in (text.cond, text.cond_mask, text.uncond, text.uncond_mask))
        )
        guidance_scale, pag_scale, interval = scales
        field = guided_field(
            self.denoiser,
            group,
            guidance_scale=guidance_scale,
            pag_scale=pag_scale,
            interval=interval,
            pag_layers=self._pag_layers(),
        )
        start = time.perf_counter()
        x0 = sampler.sample(field, noise.to(self.device), steps, callback=_with_progress(callback, steps, progress))
        self.timings["denoise"] += time.perf_counter() - start
        if latent_only:
            return x0
        start = time.perf_counter()
        images = self.decode(x0)
        self.timings["decode"] += time.perf_counter() - start
        return resize_and_crop(images, height, width).clamp(-1, 1) if binning else images.clamp(-1, 1)

    def decode(self, latents: Tensor) -> Tensor:
        """Diffusion-scale latents (B, C_z, h, w) -> images (B, 3, h*f, w*f), in tiles when the budget asks for it."""
        raw = _compose.from_diffusion_latents(self.autoencoder, latents)
        if isinstance(self.autoencoder, SupportsTiledDecode):
            images = self.autoencoder.decode_tiled(raw, memory_budget=self.decode_memory_budget)
        else:
            images = self.autoencoder.decode(raw)
        return images.float()  # fp32 for resize/crop and output conversion

    # --- pieces -------------------------------------------------------------------------------------------------

    @property
    def bucket_table(self) -> dict[str, tuple[int, int]]:
        """The inference bucket table: `ASPECT_RATIO_{image_size}_TEST` (4K: the 4096 training table), without the
        buckets the autoencoder cannot encode (sides not a multiple of its compression: 24 of the 33 256-px buckets
        at f32)."""
        size = self.config.model.image_size
        name = f"{size}_TEST"
        table = get_table(name if name in TABLES else str(size))
        f = self.autoencoder.spatial_compression
        usable = {key: (h, w) for key, (h, w) in table.items() if h % f == 0 and w % f == 0}
        return usable or dict(table)

    def _pag_layers(self) -> tuple[int, ...]:
        return tuple(self.config.model.pag_applied_layers)

    def _sampler(self, sampler: str | Sampler | None, steps: int | None) -> tuple[Sampler, int]:
        name = sampler if isinstance(sampler, str) else self.config.scheduler.vis_sampler
        if sampler is None and self.sampler is not None:
            chosen: Sampler = self.sampler
        elif sampler is None or isinstance(sampler, str):
            chosen = make_sampler(name, self.config.scheduler.flow_shift)
        else:
            chosen = sampler
        default = DEFAULT_STEPS.get(name, DEFAULT_STEPS["flow_dpm-solver"])
        return chosen, _positive_int("num_inference_steps", default if steps is None else steps)

    def _parse_prompts(self, prompt: Any, height: int, width: int) -> tuple[list[str], list[tuple[int, int]]]:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("prompt must be a non-empty string or a non-empty list of strings")
        parsed = [parse_prompt(p) for p in prompts]
        sizes = []
        for p in parsed:
            if p.hw is not None:
                sizes.append(p.hw)
            elif p.aspect_ratio is not None:
                sizes.append(bin_size(round(p.aspect_ratio * 1000), 1000, self.bucket_table))
            else:
                sizes.append((height, width))
        return [p.prompt for p in parsed], sizes

    def _encode(self, prompts: list[str], negative: str, n: int, uncond_mask: UncondMask) -> Conditioning:
        if uncond_mask not in ("conditional", "own"):
            raise ValueError(f"uncond_mask must be 'conditional' or 'own', got {uncond_mask!r}")
        if self.text_encoder is None:
            raise RuntimeError("the text encoder was freed (free_text_encoder=True); build a new pipeline")
        cond, cond_mask = self.text_encoder.encode(prompts)  # (P, L, D_txt), (P, L)
        cond, cond_mask = cond.repeat_interleave(n, 0), cond_mask.repeat_interleave(n, 0)  # (B, L, D_txt), (B, L)
        if negative not in self._negatives:
            self._negatives[negative] = self.text_encoder.encode_negative([negative])
        neg, neg_mask = self._negatives[negative]  # (1, L, D_txt), (1, L)
        B = cond.shape[0]
        uncond = neg.to(cond.device).expand(B, -1, -1)  # (B, L, D_txt)
        mask = cond_mask if uncond_mask == "conditional" else neg_mask.to(cond.device).expand(B, -1)  # (B, L)
        return Conditioning(cond, cond_mask, uncond, mask)

    def free_text_encoder(self) -> None:
        """Release the text encoder (most of the memory at inference); negative prompts already seen stay cached."""
        if isinstance(self.text_encoder, SupportsFree):  # sana_text.TextEncoder releases its LLM explicitly
            self.text_encoder.free()
        self.text_encoder = None  # type: ignore[assignment]
        log.info("text encoder freed")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _group_rows(sizes: list[tuple[int, int]], n: int) -> dict[tuple[int, int], list[int]]:
    """Image rows (prompt-major, n images per prompt) grouped by requested size, first-seen order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(size, []).extend(range(i * n, (i + 1) * n))
    return groups


def _pick(values: Any, rows: list[int], total: int | None = None) -> Any:
    if values is None:
        return None
    if total is not None and values.shape[0] != total:
        raise ValueError(f"latents must have one row per image ({total}), got shape {tuple(values.shape)}")
    return values[torch.tensor(rows)] if isinstance(values, Tensor) else [values[i] for i in rows]


def _with_progress(callback: StepCallback | None, steps: int, progress: bool) -> StepCallback | None:
    if not progress:
        return callback
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc="sampling", unit="step", leave=False)

    def step(i: int, t: Tensor, x: Tensor, x0: Tensor) -> None:
        bar.update(1)
        if i + 1 >= steps:
            bar.close()
        if callback is not None:
            callback(i, t, x, x0)

    return step


def _format(images: list[Tensor], output_type: OutputType) -> Any:
    same = len({tuple(x.shape) for x in images}) == 1
    if output_type in ("pt", "latent"):
        return torch.stack(images) if same else images
    if output_type == "np":
        arrays = [to_uint8(x[None])[0] for x in images]
        return np.stack(arrays) if same else arrays
    if output_type == "pil":
        return [to_pil(x[None])[0] for x in images]
    raise ValueError(f"output_type must be 'pt', 'pil', 'np' or 'latent', got {output_type!r}")
