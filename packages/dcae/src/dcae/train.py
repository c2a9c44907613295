"""Train a DC-AE from scratch or fine-tune one: the recipe the official repositories do not ship.

`train_autoencoder` follows the DC-AE paper's phases in a form that fits a CPU:

1. reconstruction training of the whole autoencoder on random crops: L1 + L2 + SSIM + Sobel-edge L1
   (`dcae.losses`: no downloaded perceptual network);
2. (optional) from `adversarial_from_step` on, the encoder is frozen and the decoder alone is refined with the
   same losses plus a hinge PatchGAN term at a fixed small weight, the discriminator trained alongside.

Runs are resumable exactly: every random draw (which images, where to crop) is a pure function of
(seed, step), and a checkpoint holds the model, the discriminator, both optimizers and the step, so stopping
after k steps and resuming reproduces the uninterrupted run's losses bit for bit (same machine and threads).
Checkpoints are folders written under a temporary name and renamed into place (a crash leaves the previous
ones intact); the last `keep_last` are kept. The finished model is written in our format (`save_dcae`) with its
`scaling_factor` fitted to the trained latents, next to `train_log.csv` and `report.json`.

Layout of `out_dir`: `checkpoints/step_0000500/`, `model/`, `train_log.csv`, `report.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file, save_file

from dcae.config import DCAEConfig
from dcae.images import load_image, psnr
from dcae.io import save_dcae
from dcae.losses import (
    LossWeights,
    PatchDiscriminator,
    hinge_discriminator_loss,
    hinge_generator_loss,
    reconstruction_losses,
    ssim_map_mean,
)
from dcae.model import DCAE

__all__ = (
    "CONFIGS",
    "EMBEDDED_F32",
    "SHAPES_F32",
    "LossWeights",
    "TrainReport",
    "latest_checkpoint",
    "train_autoencoder",
)

# The shapes-world autoencoder: Sana's f32 graph (conv down, interpolate up, RMSNorm, ResBlocks in the three
# shallow stages and multi-scale linear-attention EViT blocks in the three deep ones), one block per stage and
# far fewer channels. 1.02 M parameters: 4.1 MB in fp32, 2.0 MB in bf16; the decoder alone is 0.51 M.
SHAPES_F32 = DCAEConfig(
    widths=(16, 32, 64, 64, 64, 64),
    encoder_depths=(1, 1, 1, 1, 1, 1),
    decoder_depths=(1, 1, 1, 1, 1, 1),
    encoder_blocks=("res", "res", "res", "evit", "evit", "evit"),
    decoder_blocks=("res", "res", "res", "evit", "evit", "evit"),
    encoder_scales=((), (), (), (5,), (5,), (5,)),
    decoder_scales=((), (), (), (5,), (5,), (5,)),
    decoder_norms=("rms",) * 6,
    decoder_acts=("silu",) * 6,
    downsample="conv",
    upsample="interpolate",
    latent_channels=32,
    scaling_factor=1.0,  # replaced by the fitted value when training finishes
    trained_dtype="float32",
    name="dc-ae-f32c32-shapes",
)

# The embedded default model's autoencoder (sana.embedded): SHAPES_F32 without the full-resolution ResBlock stage
# (encoder and decoder depth 0 there, as DC-AE's in-1.0 family), which is where most of SHAPES_F32's time goes.
# 1.00 M parameters; on 400 shapes images with 128² crops it reached 16.0 dB held-out PSNR in the same 370 s of
# 1-thread training in which SHAPES_F32 reached 15.4 dB (350 vs 250 steps), and it encodes 2.6× faster.
EMBEDDED_F32 = dataclasses.replace(
    SHAPES_F32, encoder_depths=(0, 1, 1, 1, 1, 1), decoder_depths=(0, 1, 1, 1, 1, 1), name="dc-ae-f32c32-shapes-lite"
)

# Graphs made for training here, by CLI name
CONFIGS: dict[str, DCAEConfig] = {"shapes-f32": SHAPES_F32, "shapes-f32-lite": EMBEDDED_F32}

AutocastDType = Literal["fp32", "bf16"]
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16}  # fp32: no autocast; bf16: CPU autocast, fp32 master weights
ADAM_BETAS = (0.9, 0.999)
DISC_BETAS = (0.5, 0.9)  # the usual GAN discriminator betas (VQGAN, taming-transformers)
FINAL_LR_FRACTION = 0.1  # the cosine schedule ends at lr * 0.1
SCALE_FIT_IMAGES = 64  # images encoded to fit scaling_factor = 1 / RMS(latents)
MAX_HOLDOUT = 16
# train_log.csv columns after `step` (then lr, seconds); `ssim` logs the loss 1 - SSIM, adv_* are nan before phase 2
LOG_TERMS = ("loss", "l1", "l2", "ssim", "edge", "adv_g", "adv_d", "latent")  # latent: mean(z²)
ProgressFn = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainReport:
    """What a `train_autoencoder` call did. Eval fields are None when the call stopped early (`max_steps`)."""

    out_dir: Path
    step: int  # steps done so far (over all resumed calls)
    steps: int  # the run's target
    completed: bool
    losses: dict[str, float]  # the last step's loss terms
    seconds: float  # wall time over all calls
    log_path: Path
    model_dir: Path | None = None
    eval_split: str | None = None  # "held-out", or "train" when there were too few images to hold any out
    eval_images: int = 0
    eval_psnr: float | None = None  # dB, mean over eval images, reconstructions clamped to [-1, 1]
    eval_ssim: float | None = None
    scaling_factor: float | None = None  # 1 / RMS of the trained latents, written into the saved config

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class _Run:
    """The mutable state of one training call."""

    model: DCAE
    optimizer: torch.optim.Optimizer
    disc: PatchDiscriminator | None
    disc_optimizer: torch.optim.Optimizer | None
    source: ImageSource
    settings: dict  # every argument that shapes the trajectory; must match on resume
    step: int = 0
    seconds: float = 0.0
    rows: list[dict[str, float]] = dataclasses.field(default_factory=list)


def train_autoencoder(
    model: DCAE,
    images: Sequence[torch.Tensor] | torch.utils.data.Dataset | str | Path,
    out_dir: str | Path,
    *,
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    crop: int | None = None,
    crop_candidates: int = 1,
    losses: LossWeights = LossWeights(),  # noqa: B008 (frozen dataclass: immutable default)
    adversarial_from_step: int | None = None,
    disc_width: int = 32,
    latent_noise: float = 0.0,
    warmup_steps: int = 0,
    max_grad_norm: float | None = 1.0,
    dtype: AutocastDType = "fp32",
    seed: int = 0,
    holdout: int | None = None,
    resume: bool = False,
    max_steps: int | None = None,
    save_every: int = 500,
    keep_last: int = 3,
    log_every: int = 10,
    progress: ProgressFn | None = None,
) -> TrainReport:
    """Train `model` in place and write checkpoints, the final model, `train_log.csv` and `report.json`.

    Args:
        model: a float32 `DCAE` (fresh, or loaded to fine-tune); mixed precision is `dtype`, not the weights.
        images: (3, H, W) tensors in [-1, 1] (a sequence or an indexable `Dataset`), or a folder of image files.
        out_dir: run folder; `resume=True` continues the latest checkpoint there, `resume=False` refuses a folder
            that already holds checkpoints.
        steps: total optimizer steps of the run (the cosine schedule ends here).
        crop: train on random `crop`×`crop` crops (a multiple of f); None uses whole images (one size, multiples
            of f). Evaluation uses centre crops of the same size.
        crop_candidates: draw this many random crops per image and train on the one with the most edge energy
            (summed absolute differences of neighbouring pixels): on data with small objects on flat backgrounds
            most random crops hold no object. 1 (default): plain random crops.
        losses: loss weights (`LossWeights`: l1, l2, ssim, edge, adversarial).
        adversarial_from_step: from this step on, freeze the encoder and add the hinge PatchGAN term to the
            decoder's loss (weight `losses.adversarial`); None: no adversarial phase.
        latent_noise: make the decoder robust to latents that are slightly off (a diffusion model's samples): each
            sample's latents get Gaussian noise of std `u * latent_noise * RMS(its latents)`, u ~ U(0, 1) per
            sample, before they are decoded (the latent penalty sees them clean). 0 (default): no noise.
        warmup_steps: linear LR warm-up, then cosine decay to `lr * 0.1` at `steps`.
        dtype: "fp32" (default; fastest on AVX2-only CPUs, where bf16 is emulated) or "bf16" (CPU autocast).
        holdout: images held out from training for the final PSNR/SSIM (the last ones; default: a tenth, 1 to
            16). With a single image nothing is held out and the report says `eval_split="train"`.
        max_steps: stop this call after this step (checkpointed), e.g. to split a run into sessions.
        progress: called after every step as `progress(step, steps, losses)`.
    """
    out_dir = Path(out_dir)
    _check_arguments(model, steps, batch_size, lr, crop, crop_candidates, adversarial_from_step, warmup_steps, dtype,
                     seed, max_steps, latent_noise)  # fmt: skip
    _check_intervals(save_every=save_every, keep_last=keep_last, log_every=log_every)
    source = ImageSource.create(images, crop=crop, f=model.spatial_compression, holdout=holdout, seed=seed,
                                candidates=crop_candidates)  # fmt: skip
    run = _new_run(model, source, steps, batch_size, lr, crop, losses, adversarial_from_step, disc_width,
                   latent_noise, warmup_steps, max_grad_norm, dtype, seed)  # fmt: skip
    _start_or_resume(run, out_dir, resume)
    stop = steps if max_steps is None else min(steps, max_steps)
    _loop(run, out_dir, stop, save_every=save_every, keep_last=keep_last, log_every=log_every, progress=progress)
    return _finish(run, out_dir, steps)


def _loop(
    run: _Run, out_dir: Path, stop: int, *, save_every: int, keep_last: int, log_every: int, progress: ProgressFn | None
) -> None:
    """Steps up to `stop`, logging every `log_every`, checkpointing every `save_every` and at `stop`."""
    last_saved = run.step
    while run.step < stop:
        started = time.perf_counter()
        row = _train_step(run)
        run.seconds += time.perf_counter() - started
        run.step += 1
        row = {"step": run.step, **row, "seconds": round(run.seconds, 3)}
        if run.step % log_every == 0 or run.step == stop:
            run.rows.append(row)
        if progress is not None:
            progress(run.step, run.settings["steps"], {k: v for k, v in row.items() if k != "step"})
        if run.step % save_every == 0 or run.step == stop:
            _checkpoint(run, out_dir, keep_last)
            last_saved = run.step
    if last_saved != run.step or not _checkpoints(out_dir):  # e.g. resumed at `stop`: still leave a checkpoint
        _checkpoint(run, out_dir, keep_last)


def _check_arguments(
    model: DCAE,
    steps: int,
    batch_size: int,
    lr: float,
    crop: int | None,
    crop_candidates: int,
    adversarial_from_step: int | None,
    warmup_steps: int,
    dtype: str,
    seed: int,
    max_steps: int | None,
    latent_noise: float,
) -> None:
    if not isinstance(model, DCAE):
        raise TypeError(f"model must be a dcae.DCAE, got {type(model).__name__}")
    if model.dtype != torch.float32:
        raise ValueError(f"model weights must be float32 (train in bf16 with dtype='bf16'), got {model.dtype}")
    for name, value in [("steps", steps), ("batch_size", batch_size)]:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    for name, value in [("warmup_steps", warmup_steps), ("seed", seed)]:
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    f = model.spatial_compression
    if crop is not None and (not isinstance(crop, int) or crop < f or crop % f):
        raise ValueError(f"crop must be a positive multiple of the model's compression f={f}, got {crop!r}")
    if not isinstance(crop_candidates, int) or isinstance(crop_candidates, bool) or crop_candidates < 1:
        raise ValueError(f"crop_candidates must be an integer >= 1, got {crop_candidates!r}")
    if crop_candidates > 1 and crop is None:
        raise ValueError("crop_candidates > 1 needs crop= (it chooses among random crops)")
    if adversarial_from_step is not None and (not isinstance(adversarial_from_step, int) or adversarial_from_step < 0):
        raise ValueError(f"adversarial_from_step must be None or an integer >= 0, got {adversarial_from_step!r}")
    if isinstance(latent_noise, bool) or not (
        isinstance(latent_noise, int | float) and math.isfinite(latent_noise) and 0 <= latent_noise <= 1
    ):
        raise ValueError(f"latent_noise must be a number in [0, 1] (a fraction of the latents' RMS), "
                         f"got {latent_noise!r}")  # fmt: skip
    if dtype not in AUTOCAST:
        raise ValueError(f"dtype must be one of {sorted(AUTOCAST)}, got {dtype!r}")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be None or an integer >= 1, got {max_steps!r}")


def _check_intervals(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _new_run(
    model: DCAE,
    source: ImageSource,
    steps: int,
    batch_size: int,
    lr: float,
    crop: int | None,
    losses: LossWeights,
    adversarial_from_step: int | None,
    disc_width: int,
    latent_noise: float,
    warmup_steps: int,
    max_grad_norm: float | None,
    dtype: str,
    seed: int,
) -> _Run:
    if not isinstance(losses, LossWeights):
        raise TypeError(f"losses must be a dcae.train.LossWeights, got {type(losses).__name__}")
    settings = {
        "config": model.config.to_dict(), "batch_size": batch_size, "lr": lr, "crop": crop,
        "crop_candidates": source.candidates,
        "losses": losses.to_dict(), "adversarial_from_step": adversarial_from_step, "disc_width": disc_width,
        "latent_noise": float(latent_noise),
        "warmup_steps": warmup_steps, "max_grad_norm": max_grad_norm, "dtype": dtype, "seed": seed,
        "train_images": len(source.train), "holdout": len(source.heldout), "steps": steps,
    }  # fmt: skip
    settings = json.loads(json.dumps(settings))  # the form state.json holds (lists, not tuples), to compare on resume
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=ADAM_BETAS, weight_decay=0.0)
    disc = disc_optimizer = None
    if adversarial_from_step is not None:
        with torch.random.fork_rng(devices=[]):  # the discriminator's initial weights follow the run's seed
            torch.manual_seed(seed)
            disc = PatchDiscriminator(model.config.in_channels, width=disc_width)
        disc_optimizer = torch.optim.AdamW(disc.parameters(), lr=lr, betas=DISC_BETAS, weight_decay=0.0)
    return _Run(model, optimizer, disc, disc_optimizer, source, settings)


def _start_or_resume(run: _Run, out_dir: Path, resume: bool) -> None:
    latest = latest_checkpoint(out_dir)
    if latest is None:
        if (out_dir / LOG_FILE).exists() and not resume:
            raise ValueError(f"out_dir {out_dir} has a train_log.csv; pass resume=True or a new out_dir")
        return
    if not resume:
        raise ValueError(f"out_dir {out_dir} already holds checkpoints ({latest.name}); pass resume=True to continue "
                         "the latest, or choose a new out_dir")  # fmt: skip
    state = load_checkpoint(latest, run.model, run.optimizer, run.disc, run.disc_optimizer)
    saved = {"latent_noise": 0.0} | {k: v for k, v in state["settings"].items() if k != "steps"}  # (older runs)
    now = {k: v for k, v in run.settings.items() if k != "steps"}
    changed = sorted(k for k in now if saved.get(k) != now[k])
    if changed:
        raise ValueError(f"cannot resume {latest}: settings changed since it was written: {changed} "
                         "(use the same ones, or a new out_dir)")  # fmt: skip
    run.step, run.seconds = state["step"], state["seconds"]
    run.rows = [row for row in read_log(out_dir) if row["step"] <= run.step]


def _lr_at(step: int, settings: dict) -> float:
    """Linear warm-up over `warmup_steps`, then cosine from `lr` to `lr * FINAL_LR_FRACTION` at `steps`."""
    lr, warmup, steps = settings["lr"], settings["warmup_steps"], settings["steps"]
    if step < warmup:
        return lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * t)))


def _train_step(run: _Run) -> dict[str, float]:
    """One optimizer step (plus one discriminator step in the adversarial phase); returns the logged terms."""
    settings, model = run.settings, run.model
    adv_from = settings["adversarial_from_step"]
    adversarial = run.disc is not None and adv_from is not None and run.step >= adv_from
    lr = _lr_at(run.step, settings)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    batch = run.source.batch(run.step, settings["batch_size"])  # (B, 3, H, W)
    model.train()
    autocast = AUTOCAST[settings["dtype"]]
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        if adversarial:  # phase 2: the encoder is frozen, so only the decoder sees the adversarial gradient
            with torch.no_grad():
                latents = model.encoder(batch)
        else:
            latents = model.encoder(batch)
        recon = model.decoder(_noisy(latents, settings["latent_noise"], settings["seed"], run.step))
        fake_logits = None
        if adversarial:
            run.disc.requires_grad_(False)  # the generator loss must not leave gradients on the discriminator
            fake_logits = run.disc(recon)
            run.disc.requires_grad_(True)
    # outside autocast: the SSIM / Sobel convolutions of the loss stay fp32 (small differences matter)
    weights = LossWeights(**settings["losses"])
    terms = reconstruction_losses(recon, batch, weights)
    terms["latent"] = latents.float().pow(2).mean()
    loss = terms["loss"] + weights.latent * terms["latent"] if weights.latent else terms["loss"]
    if fake_logits is not None:
        terms["adv_g"] = hinge_generator_loss(fake_logits)
        loss = loss + settings["losses"]["adversarial"] * terms["adv_g"]
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if settings["max_grad_norm"]:
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings["max_grad_norm"])
    run.optimizer.step()
    if adversarial:
        terms["adv_d"] = _discriminator_step(run, batch, recon.detach(), lr, autocast)
    row = {"loss": loss.item(), **{k: v.item() for k, v in terms.items() if k != "loss"}}
    return {**{k: row.get(k, float("nan")) for k in LOG_TERMS}, "lr": lr}


def _noisy(latents: torch.Tensor, strength: float, seed: int, step: int) -> torch.Tensor:
    """`latents` (B, C, h, w) plus Gaussian noise of std u * strength * RMS per sample (u ~ U(0, 1), drawn from
    (seed, step) so a resumed run adds the same noise); the noise scale carries no gradient."""
    if not strength:
        return latents
    g = _generator(seed, "latent_noise", step)
    b = latents.shape[0]
    u = torch.rand(b, generator=g).view(b, 1, 1, 1)
    noise = torch.randn(latents.shape, generator=g).to(latents.dtype)
    rms = latents.detach().float().pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
    return latents + (u * strength * rms).to(latents.dtype) * noise


def _discriminator_step(
    run: _Run, real: torch.Tensor, fake: torch.Tensor, lr: float, autocast: torch.dtype | None
) -> torch.Tensor:
    for group in run.disc_optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        loss = hinge_discriminator_loss(run.disc(real), run.disc(fake))
    run.disc_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.disc_optimizer.step()
    return loss.detach()


def _checkpoint(run: _Run, out_dir: Path, keep_last: int) -> None:
    write_log(out_dir, run.rows)
    state = {"step": run.step, "seconds": run.seconds, "settings": run.settings}
    save_checkpoint(out_dir, run.step, state, run.model, run.optimizer, run.disc, run.disc_optimizer, keep_last)


@torch.no_grad()
def _evaluate(model: DCAE, images: list[torch.Tensor], batch_size: int) -> tuple[float, float]:
    model.eval()
    scores_p, scores_s = [], []
    for i in range(0, len(images), batch_size):
        x = torch.stack(images[i : i + batch_size])  # (B, 3, H, W)
        recon = model.decode(model.encode(x)).float().clamp(-1, 1)  # fp32 metrics whatever the model dtype
        scores_p.append(psnr(recon, x))
        scores_s.append(ssim_map_mean(recon, x))  # = dcae.images.ssim, and also defined below 11 px
    return torch.cat(scores_p).mean().item(), torch.cat(scores_s).mean().item()


@torch.no_grad()
def _fit_scaling_factor(model: DCAE, images: list[torch.Tensor], batch_size: int) -> float:
    """1 / RMS of the latents (how Sana's 0.41407 was chosen): diffusion then sees unit-variance latents."""
    model.eval()
    squares = [model.encode(torch.stack(images[i : i + batch_size])).float().pow(2).flatten()
               for i in range(0, len(images), batch_size)]  # fmt: skip
    rms = torch.cat(squares).mean().sqrt().item()
    return 1.0 / max(rms, 1e-6)


def _finish(run: _Run, out_dir: Path, steps: int) -> TrainReport:
    last = run.rows[-1] if run.rows else {}
    base = {
        "out_dir": out_dir, "step": run.step, "steps": steps, "completed": run.step >= steps,
        "losses": {k: v for k, v in last.items() if k in LOG_TERMS and not math.isnan(v)},
        "seconds": round(run.seconds, 3), "log_path": out_dir / "train_log.csv",
    }  # fmt: skip
    if run.step < steps:
        return TrainReport(**base)
    model, batch_size = run.model, run.settings["batch_size"]
    fit_images = [run.source.eval_image(i, heldout=False) for i in range(min(SCALE_FIT_IMAGES, len(run.source.train)))]
    factor = _fit_scaling_factor(model, fit_images, batch_size)
    model.config = dataclasses.replace(model.config, scaling_factor=factor)
    model.scaling_factor = factor
    heldout = bool(run.source.heldout)
    count = len(run.source.heldout) if heldout else min(MAX_HOLDOUT, len(run.source.train))
    eval_images = [run.source.eval_image(i, heldout=heldout) for i in range(count)]
    p, s = _evaluate(model, eval_images, batch_size)
    model_dir = save_model_atomically(model, out_dir / "model")
    report = TrainReport(**base, model_dir=model_dir, eval_split="held-out" if heldout else "train",
                         eval_images=count, eval_psnr=p, eval_ssim=s, scaling_factor=factor)  # fmt: skip
    atomic_write_text(out_dir / "report.json", json.dumps(report.to_dict(), indent=2) + "\n")
    return report


# ---- data: every draw is a pure function of (seed, step) ----------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
KEPT_EPOCHS = 2  # cached shuffles (the current epoch and the next one a batch may run into)


def _generator(seed: int, stream: str, index: int) -> torch.Generator:
    """An independent generator per (seed, stream, index): resuming at any step redraws the same numbers."""
    digest = hashlib.sha256(f"{seed}:{stream}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def _check_size(height: int, width: int, where: str, crop: int | None, f: int) -> None:
    if crop is not None and (height < crop or width < crop):
        raise ValueError(f"{where}: image {width}x{height} is smaller than crop={crop}")
    if crop is None and (height % f or width % f):
        raise ValueError(f"{where}: size {width}x{height} is not a multiple of the compression f={f}; "
                         f"pass crop= (a multiple of {f}) to train on random crops")  # fmt: skip


def edge_energy(image: torch.Tensor) -> float:
    """Summed absolute differences of vertically and horizontally neighbouring pixels of (C, H, W): how much of a
    crop is edges (0 for a flat one). `crop_candidates` keeps the crop where this is largest."""
    return ((image[:, 1:] - image[:, :-1]).abs().sum() + (image[:, :, 1:] - image[:, :, :-1]).abs().sum()).item()


class ImageSource:
    """Indexable (3, H, W) images split into training and held-out indices (the last `holdout` ones)."""

    def __init__(
        self, get: Callable[[int], torch.Tensor], n: int, crop: int | None, f: int, holdout: int, seed: int,
        candidates: int = 1,
    ) -> None:  # fmt: skip
        self._get, self.crop, self.f, self.seed, self.candidates = get, crop, f, seed, candidates
        self.train, self.heldout = list(range(n - holdout)), list(range(n - holdout, n))
        self._perms: dict[int, torch.Tensor] = {}

    @classmethod
    def create(
        cls, images: object, *, crop: int | None, f: int, holdout: int | None, seed: int, candidates: int = 1
    ) -> ImageSource:
        """Validate `images` (a folder, a tensor sequence or an indexable dataset) up front where sizes are known."""
        if isinstance(images, str | Path):
            get, sizes = _folder(Path(images))
        elif hasattr(images, "__len__") and hasattr(images, "__getitem__"):
            get = images.__getitem__
            sizes = None
            if isinstance(images, list | tuple | torch.Tensor):
                sizes = [tuple(_checked(x, f"images[{i}]").shape[-2:]) for i, x in enumerate(images)]
        else:
            raise TypeError(f"images must be a folder, a sequence of (3, H, W) tensors or a Dataset, got "
                            f"{type(images).__name__}")  # fmt: skip
        n = len(images) if sizes is None else len(sizes)
        if n == 0:
            raise ValueError("images: no images given")
        for i, (h, w) in enumerate(sizes or []):
            _check_size(h, w, f"images[{i}]", crop, f)
        if crop is None and sizes and len(set(sizes)) > 1:
            raise ValueError(f"images have different sizes {sorted(set(sizes))[:4]}; pass crop= to train on crops")
        if holdout is None:
            holdout = min(MAX_HOLDOUT, max(1, n // 10)) if n >= 2 else 0
        if not isinstance(holdout, int) or not 0 <= holdout < n:
            raise ValueError(f"holdout must be an integer in [0, {n - 1}] for {n} images, got {holdout!r}")
        return cls(get, n, crop, f, holdout, seed, candidates)

    def _item(self, index: int) -> torch.Tensor:
        x = _checked(self._get(index), f"images[{index}]")
        _check_size(x.shape[-2], x.shape[-1], f"images[{index}]", self.crop, self.f)
        return x.float()  # fp32 master copy whatever the source dtype; autocast handles bf16

    def _perm(self, epoch: int) -> torch.Tensor:
        perm = self._perms.get(epoch)
        if perm is None:  # a pure function of (seed, epoch): a dropped epoch is simply drawn again
            perm = self._perms[epoch] = torch.randperm(len(self.train), generator=_generator(self.seed, "epoch", epoch))
            for old in sorted(self._perms)[:-KEPT_EPOCHS]:
                del self._perms[old]
        return perm

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        """Batch `step`: epoch-shuffled images (every image once per epoch), random crops; (B, 3, crop, crop)."""
        n, g = len(self.train), _generator(self.seed, "crop", step)
        images = []
        for k in range(step * batch_size, (step + 1) * batch_size):
            x = self._item(self.train[int(self._perm(k // n)[k % n])])
            if self.crop is not None:
                x = self._crop(x, g)
            images.append(x)
        try:
            return torch.stack(images)
        except RuntimeError as exc:
            raise ValueError(f"images of different sizes in one batch ({exc}); pass crop= to train on crops") from exc

    def _crop(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """A random `crop`² crop of x (3, H, W); of `candidates` draws, the one with the most edge energy."""
        best, best_energy = None, -1.0
        for _ in range(self.candidates):
            top = int(torch.randint(0, x.shape[-2] - self.crop + 1, (), generator=g))
            left = int(torch.randint(0, x.shape[-1] - self.crop + 1, (), generator=g))
            c = x[:, top : top + self.crop, left : left + self.crop]  # (3, crop, crop)
            if self.candidates == 1:
                return c
            energy = edge_energy(c)
            if energy > best_energy:
                best, best_energy = c, energy
        return best

    def eval_image(self, i: int, *, heldout: bool) -> torch.Tensor:
        """Held-out (or training) image `i`, centre-cropped to `crop`: (3, H, W)."""
        x = self._item((self.heldout if heldout else self.train)[i])
        if self.crop is None:
            return x
        top, left = (x.shape[-2] - self.crop) // 2, (x.shape[-1] - self.crop) // 2
        return x[:, top : top + self.crop, left : left + self.crop]


def _checked(x: object, where: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{where} must be a float tensor (3, H, W) in [-1, 1], got {type(x).__name__}")
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"{where} must have shape (3, H, W), got {tuple(x.shape)}")
    return x


def _folder(folder: Path) -> tuple[Callable[[int], torch.Tensor], list[tuple[int, int]]]:
    if not folder.is_dir():
        raise ValueError(f"images: no folder at {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f"images: no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    sizes = []
    for p in paths:
        try:
            with Image.open(p) as img:  # reads the header only
                sizes.append((img.height, img.width))
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"images: cannot read {p} as an image: {exc}") from exc
    return (lambda i: load_image(paths[i])[0]), sizes


# ---- checkpoints and outputs: written under a temporary name, then renamed into place ----------------------------

CHECKPOINTS = "checkpoints"
LOG_FILE = "train_log.csv"
_STEP_DIR = re.compile(r"^step_(\d{7,})$")


def _checkpoints(out_dir: Path) -> list[Path]:
    root = out_dir / CHECKPOINTS
    found = [(int(m[1]), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))] if root.is_dir() else []
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder under `out_dir/checkpoints`, or None."""
    found = _checkpoints(Path(out_dir))
    return found[-1] if found else None


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(
    out_dir: Path,
    step: int,
    state: dict,
    model: DCAE,
    optimizer: torch.optim.Optimizer,
    disc: torch.nn.Module | None,
    disc_optimizer: torch.optim.Optimizer | None,
    keep_last: int,
) -> Path:
    """Write `checkpoints/step_{step:07d}/` atomically and delete all but the newest `keep_last`."""
    root = out_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tmp, final = root / f".tmp_step_{step:07d}", root / f"step_{step:07d}"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a crash during an earlier save of this step
    tmp.mkdir()
    save_file(_tensors(model), tmp / "model.safetensors")
    if disc is not None:
        save_file(_tensors(disc), tmp / "discriminator.safetensors")
    optimizers = {"model": optimizer.state_dict(), "discriminator": disc_optimizer and disc_optimizer.state_dict()}
    torch.save(optimizers, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in _checkpoints(out_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    path: Path,
    model: DCAE,
    optimizer: torch.optim.Optimizer,
    disc: torch.nn.Module | None,
    disc_optimizer: torch.optim.Optimizer | None,
) -> dict:
    """Restore the modules and optimizers in place; returns the saved `state.json`."""
    state = json.loads((path / "state.json").read_text())
    model.load_state_dict(load_file(path / "model.safetensors"))
    optimizers = torch.load(path / "optimizer.pt", weights_only=True)  # plain tensors and numbers only
    optimizer.load_state_dict(optimizers["model"])
    if disc is not None and disc_optimizer is not None:
        disc.load_state_dict(load_file(path / "discriminator.safetensors"))
        disc_optimizer.load_state_dict(optimizers["discriminator"])
    return state


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_log(out_dir: Path, rows: list[dict[str, float]]) -> None:
    columns = ["step", *LOG_TERMS, "lr", "seconds"]
    lines = [",".join(columns)] + [",".join(f"{row[c]:.7g}" if c != "step" else str(row[c]) for c in columns)
                                   for row in rows]  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / LOG_FILE, "\n".join(lines) + "\n")


def read_log(out_dir: Path) -> list[dict[str, float]]:
    path = out_dir / LOG_FILE
    if not path.is_file():
        return []
    header, *lines = path.read_text().splitlines()
    columns = header.split(",")
    rows = [dict(zip(columns, (float(v) for v in line.split(",")))) for line in lines if line]
    return [{**row, "step": int(row["step"])} for row in rows]


def save_model_atomically(model: DCAE, path: Path) -> Path:
    """`save_dcae` into a temporary folder, then swap it in for `path`."""
    tmp, old = path.with_name(f".tmp_{path.name}"), path.with_name(f".old_{path.name}")
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    save_dcae(model, tmp)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path
