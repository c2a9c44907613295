"""The `dcae` command: encode images to a latents file, decode it back, or measure round-trip quality.

dcae encode a.png b.jpg -o latents.safetensors --model DIR
dcae decode latents.safetensors -o out/ --model DIR
dcae roundtrip a.png --model DIR --report --side-by-side out/
dcae train images/ -o runs/ae --config shapes-f32 --steps 2000 --batch-size 8 --crop 128 [--resume]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dcae.config import DCAEConfig
from dcae.images import crop_to_multiple, load_image, pad_to_multiple, psnr, save_image, ssim
from dcae.io import load_dcae
from dcae.model import DCAE
from dcae.presets import PRESETS
from dcae.tiling import decode_tiled, encode_tiled

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
T = TypeVar("T")


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def _progress(items: Sequence[T], label: str, enabled: bool) -> Iterator[T]:
    """Yield items while drawing a one-line progress bar on stderr."""
    n = len(items)
    for i, item in enumerate(items):
        if enabled:
            filled = 24 * i // max(n, 1)
            sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (24 - filled)}] {i}/{n} {str(item)[-40:]:<40}")
            sys.stderr.flush()
        yield item
    if enabled:
        sys.stderr.write(f"\r{label} [{'#' * 24}] {n}/{n}{' ' * 41}\n")


def _load_model(args: argparse.Namespace) -> DCAE:
    try:
        return load_dcae(args.model, config=args.preset, dtype=DTYPES[args.dtype], device=args.device)
    except (FileNotFoundError, KeyError, ValueError, ImportError) as exc:
        raise CLIError(f"cannot load the autoencoder from {args.model}: {exc}") from exc


def _read_image(path: Path, f: int, fit: str | None) -> tuple[torch.Tensor, tuple[int, int]]:
    """(1, 3, H', W') ready for the encoder, and the original (H, W)."""
    try:
        image = load_image(path)
    except (ValueError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    size = (image.shape[-2], image.shape[-1])
    if size[0] % f or size[1] % f:
        if fit is None:
            raise CLIError(
                f"{path}: size {size[1]}x{size[0]} is not a multiple of the compression {f}; "
                f"pass --pad (reflect-pad, cropped back after decoding) or --crop (centre-crop)"
            )
        image = pad_to_multiple(image, f) if fit == "pad" else crop_to_multiple(image, f)
        size = size if fit == "pad" else (image.shape[-2], image.shape[-1])
    return image, size


def _tile(args: argparse.Namespace) -> dict:
    budget = None if args.memory_budget is None else args.memory_budget * 2**30
    if args.tile == "none":
        return {"tile": 1 << 30}  # one tile covers everything: plain encode/decode
    if args.tile == "auto":
        return {"tile": None, "memory_budget": budget}
    try:
        return {"tile": int(args.tile), "overlap": args.overlap}
    except ValueError as exc:
        raise CLIError(f"--tile must be 'auto', 'none' or a pixel count, got {args.tile!r}") from exc


def _encode(ae: DCAE, image: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    return encode_tiled(ae, image.to(args.device), **_tile(args))


def _decode(ae: DCAE, latents: torch.Tensor, size: tuple[int, int], args: argparse.Namespace) -> torch.Tensor:
    try:
        image = decode_tiled(ae, latents.to(args.device), **_tile(args))
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    return image[..., : size[0], : size[1]].float().cpu()  # crop any --pad padding back off


def _unique_names(paths: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for p in paths:
        name, k = p.stem, 1
        while name in names:
            name, k = f"{p.stem}_{k}", k + 1
        names.append(name)
    return names


def cmd_encode(args: argparse.Namespace) -> None:
    ae = _load_model(args)
    paths = [Path(p) for p in args.images]
    tensors: dict[str, torch.Tensor] = {}
    sizes: dict[str, list[int]] = {}
    for path, name in zip(_progress(paths, "encode", args.progress), _unique_names(paths)):
        image, size = _read_image(path, ae.spatial_compression, args.fit)
        tensors[name] = _encode(ae, image, args).cpu().contiguous()  # (1, C_z, h, w)
        sizes[name] = list(size)
    meta = {
        "latent_channels": str(ae.latent_channels),
        "spatial_compression": str(ae.spatial_compression),
        "model": ae.config.name,
        "sizes": json.dumps(sizes),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, args.output, metadata=meta)
    print(f"wrote {len(tensors)} latents to {args.output}")


def cmd_decode(args: argparse.Namespace) -> None:
    ae = _load_model(args)
    try:
        with safe_open(str(args.latents), framework="pt") as f:
            meta = f.metadata() or {}
            latents = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except Exception as exc:
        raise CLIError(f"cannot read latents from {args.latents}: {exc}") from exc
    sizes = json.loads(meta.get("sizes", "{}"))
    args.output.mkdir(parents=True, exist_ok=True)
    for name in _progress(sorted(latents), "decode", args.progress):
        z = latents[name]
        if z.ndim == 3:
            z = z[None]
        if z.ndim != 4 or z.shape[1] != ae.latent_channels:
            raise CLIError(
                f"latents {name!r} have shape {tuple(z.shape)}, but this autoencoder takes "
                f"{ae.latent_channels} channels ({ae.config.name}); decode with the model that encoded them"
            )
        f = ae.spatial_compression
        size = tuple(sizes.get(name, (z.shape[-2] * f, z.shape[-1] * f)))
        images = _decode(ae, z, size, args)
        for b in range(images.shape[0]):
            suffix = f"_{b}" if images.shape[0] > 1 else ""
            save_image(images[b], args.output / f"{name}{suffix}.png")
    print(f"wrote {len(latents)} images to {args.output}")


def cmd_roundtrip(args: argparse.Namespace) -> None:
    ae = _load_model(args)
    paths = [Path(p) for p in args.images]
    rows = []
    if args.side_by_side:
        args.side_by_side.mkdir(parents=True, exist_ok=True)
    for path, name in zip(_progress(paths, "roundtrip", args.progress), _unique_names(paths)):
        image, size = _read_image(path, ae.spatial_compression, args.fit)
        recon = _decode(ae, _encode(ae, image, args), size, args).clamp(-1, 1)
        original = image[..., : size[0], : size[1]]
        rows.append((path.name, psnr(recon, original).item(), ssim(recon, original).item()))
        if args.side_by_side:
            save_image(torch.cat([original, recon], dim=-1), args.side_by_side / f"{name}_roundtrip.png")
    if args.report:
        width = max(len(r[0]) for r in rows)
        print(f"{'image':<{width}}  {'PSNR dB':>8}  {'SSIM':>6}")
        for name, p, s in rows:
            print(f"{name:<{width}}  {p:8.2f}  {s:6.4f}")
        mean_psnr, mean_ssim = (sum(r[i] for r in rows) / len(rows) for i in (1, 2))
        print(f"{'mean':<{width}}  {mean_psnr:8.2f}  {mean_ssim:6.4f}")


def _train_config(spec: str | None, init: str | None) -> DCAEConfig | None:
    """`--config`: a name in `dcae.train.CONFIGS` or `PRESETS`, or a JSON file (DCAEConfig fields or config.json)."""
    from dcae.train import CONFIGS

    if spec is None:
        return None if init else CONFIGS["shapes-f32"]
    if init:
        raise CLIError("pass --config or --init, not both (--init brings its own config)")
    named = {**CONFIGS, **PRESETS}
    if spec in named:
        return named[spec]
    path = Path(spec)
    if not path.is_file():
        raise CLIError(f"--config {spec!r} is neither a config name ({sorted(named)}) nor a JSON file")
    try:
        data = json.loads(path.read_text())
        return DCAEConfig.from_dict(data.get("config", data))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CLIError(f"--config {path}: not a DCAEConfig JSON: {exc}") from exc


def _train_progress(enabled: bool) -> tuple[Callable[[int, int, dict[str, float]], None] | None, Callable[[], None]]:
    """A tqdm-backed `progress(step, steps, losses)` callback (None when disabled) and a function that closes it."""
    if not enabled:
        return None, lambda: None
    try:
        from tqdm import tqdm
    except ImportError as exc:
        raise CLIError("the progress bar needs tqdm: pip install 'dcae[train]', or pass --no-progress") from exc
    bars: list = []

    def update(step: int, steps: int, losses: dict[str, float]) -> None:
        if not bars:
            bars.append(tqdm(total=steps, initial=step - 1, desc="train", unit="step", dynamic_ncols=True))
        bars[0].set_postfix(loss=f"{losses['loss']:.4f}", l1=f"{losses['l1']:.4f}", refresh=False)
        bars[0].update(1)

    return update, lambda: bars and bars[0].close()


def _load_model_for_training(source: str) -> DCAE:
    try:
        return load_dcae(source, dtype=torch.float32)
    except (FileNotFoundError, KeyError, ValueError, ImportError) as exc:
        raise CLIError(f"--init: cannot load the autoencoder from {source}: {exc}") from exc


def cmd_train(args: argparse.Namespace) -> None:
    from dcae.train import LossWeights, train_autoencoder

    config = _train_config(args.config, args.init)
    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    progress, close = _train_progress(args.progress)
    try:
        # main() runs commands under inference_mode; the weights must be made and trained with autograd on
        with torch.inference_mode(False), torch.enable_grad():
            torch.manual_seed(args.seed)  # the initial weights follow --seed
            model = DCAE(config) if config is not None else _load_model_for_training(args.init)
            weights = LossWeights() if args.adv_weight is None else LossWeights(adversarial=args.adv_weight)
            report = train_autoencoder(
                model, args.images, args.output, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                crop=args.crop, crop_candidates=args.crop_candidates, losses=weights,
                adversarial_from_step=args.adversarial_from, latent_noise=args.latent_noise,
                warmup_steps=args.warmup, dtype=args.dtype, seed=args.seed, holdout=args.holdout,
                resume=args.resume, max_steps=args.max_steps, save_every=args.save_every,
                log_every=args.log_every, progress=progress,
            )  # fmt: skip
    except (ValueError, TypeError, KeyError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    finally:
        close()
    if not report.completed:
        print(f"stopped at step {report.step}/{report.steps}; continue with --resume ({report.out_dir})")
        return
    print(f"trained {report.steps} steps in {report.seconds:.0f} s; {report.eval_split} PSNR "
          f"{report.eval_psnr:.2f} dB, SSIM {report.eval_ssim:.4f} on {report.eval_images} images; "
          f"model in {report.model_dir}")  # fmt: skip


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="our folder, a diffusers AutoencoderDC folder, an efficientvit "
                   "checkpoint file, or a hub id (needs dcae[hub])")  # fmt: skip
    p.add_argument("--preset", help="graph for an efficientvit checkpoint that is not a preset's (a preset name)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="fp32 or bf16; fp16 decode warns")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tile", default="auto", help="'auto' (from --memory-budget), 'none', or a tile size in pixels")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap in pixels (default tile/4)")
    p.add_argument("--memory-budget", type=float, default=None, help="GiB of activations per tile for --tile auto")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(progress=sys.stderr.isatty())


def _fit(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--pad", dest="fit", action="store_const", const="pad", help="reflect-pad to a multiple of f")
    group.add_argument("--crop", dest="fit", action="store_const", const="crop", help="centre-crop to a multiple of f")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcae", description="DC-AE deep-compression autoencoder")
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="images -> one latents .safetensors file (raw, unscaled latents)")
    enc.add_argument("images", nargs="+")
    enc.add_argument("-o", "--output", type=Path, required=True)
    _common(enc)
    _fit(enc)
    enc.set_defaults(func=cmd_encode)
    dec = sub.add_parser("decode", help="a latents .safetensors file -> PNG images in a folder")
    dec.add_argument("latents", type=Path)
    dec.add_argument("-o", "--output", type=Path, required=True)
    _common(dec)
    dec.set_defaults(func=cmd_decode)
    rt = sub.add_parser("roundtrip", help="encode + decode, with PSNR/SSIM per image")
    rt.add_argument("images", nargs="+")
    rt.add_argument("--report", action="store_true", help="print PSNR/SSIM per image and the mean")
    rt.add_argument("--side-by-side", type=Path, help="folder for original|reconstruction PNGs")
    _common(rt)
    _fit(rt)
    rt.set_defaults(func=cmd_roundtrip)
    _train_parser(sub)
    return parser


def _train_parser(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="train an autoencoder on a folder of images (resumable; see docs/dcae.md)")
    tr.add_argument("images", type=Path, help="folder of image files (.png, .jpg, ...)")
    tr.add_argument("-o", "--output", type=Path, required=True, help="run folder: checkpoints/, model/, logs")
    tr.add_argument("--config", help="'shapes-f32' (default), a preset name, or a DCAEConfig / config.json file")
    tr.add_argument("--init", help="start from this checkpoint (any format --model takes) instead of random weights")
    tr.add_argument("--steps", type=int, required=True, help="total optimizer steps of the run")
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay to lr/10)")
    tr.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    tr.add_argument("--crop", type=int, default=None, help="random square crops of this size (a multiple of f)")
    tr.add_argument("--crop-candidates", type=int, default=1, help="train on the most-edged of N random crops")
    tr.add_argument("--adversarial-from", type=int, default=None, help="step that starts the decoder-only GAN phase")
    tr.add_argument("--adv-weight", type=float, default=None, help="weight of the hinge GAN term (default 0.05)")
    tr.add_argument("--latent-noise", type=float, default=0.0, help="decode latents + noise of std up to this "
                    "fraction of their RMS (a decoder robust to a diffusion model's latents; default 0)")  # fmt: skip
    tr.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 autocast (slow without AVX-512)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    tr.add_argument("--holdout", type=int, default=None, help="images held out for the final PSNR/SSIM")
    tr.add_argument("--resume", action="store_true", help="continue the latest checkpoint in --output")
    tr.add_argument("--max-steps", type=int, default=None, help="stop this call after this step (resume later)")
    tr.add_argument("--save-every", type=int, default=500)
    tr.add_argument("--log-every", type=int, default=10)
    tr.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    tr.set_defaults(func=cmd_train, progress=sys.stderr.isatty())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with torch.inference_mode():
            args.func(args)
    except CLIError as exc:
        print(f"dcae: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
