"""How the embedded model's autoencoder recipe was chosen: small f32 DC-AE trainings on the shapes world, compared.

Each variant trains `dcae.train.EMBEDDED_F32` (or a wider / deeper graph) for the number of steps that costs about
25 minutes of fp32 training on this project's 2-core CPU (seconds per step measured with `--measure`), then reports
on 200 held-out full images (none cropped):

- `psnr`: PSNR of the whole image (the issue's ≥ 30 dB goal);
- `fg_psnr`: PSNR inside the objects' bounding boxes only (the background is most of every image);
- `colour`: the fraction of objects whose reconstructed centre patch is nearest, in RGB, to its true palette
  colour (what `sana eval shapes` needs from the autoencoder; the trained autoencoder of the first recipe run
  scored 0.26 here: it drew every shape as a dark blob);
- `agreement` (last evaluation only): how often `sana.eval.detect` finds the same objects (shape and colour) in the
  reconstruction as in the original, as `sana eval shapes` reports it: the ceiling this autoencoder puts on the
  transformer's scores, shapes included.

The loop is `dcae.train`'s step (AdamW, warm-up, cosine to lr/10, clipping 1.0, `dcae.losses` terms, the mean(z²)
latent penalty), with images drawn uniformly instead of epoch-shuffled, so variants can run on a GPU, all at once:

    sana train-embedded --work-dir runs/embedded --max-stage data     # or any recipe run's data/ folder
    python benchmarks/ae_recipe_sweep.py runs/embedded/data                    # every variant, one process each
    python benchmarks/ae_recipe_sweep.py runs/embedded/data --only base,l2_lr1e-3 --device cpu
    python benchmarks/ae_recipe_sweep.py runs/embedded/data --measure          # CPU seconds per step (2 threads)
    python benchmarks/ae_recipe_sweep.py runs/embedded/data --only edge_crops_l2_lr1e-3,shape_full_res --cap 170

Writes docs/benchmarks/ae_recipe_sweep.{json,md} (full runs only) and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _sweep import fan_out, pick
from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
HOLDOUT = 200

# name → settings; steps ≈ 1,500 s of 2-thread CPU training at the measured seconds per step of each graph
VARIANTS: dict[str, dict] = {
    "base": {"steps": 2500},  # the first recipe: L1 + SSIM + edge, lr 2e-3, random 128² crops
    "box_crops": {"box_crop": 0.8, "steps": 2500},  # 80% of crops centred on an object (needs the boxes)
    "box_crops_fg2": {"box_crop": 0.8, "fg": 2.0, "steps": 2500},  # + 2 × L1 inside the objects' boxes
    "box_crops_no_latent_penalty": {"box_crop": 0.8, "latent": 0.0, "steps": 2500},
    "box_crops_lr5e-3": {"box_crop": 0.8, "lr": 5e-3, "steps": 2500},
    "box_crops_wide": {"box_crop": 0.8, "widths": [32, 64, 128, 128, 128, 128], "steps": 1100},
    "box_crops_wide_deep_stages": {"box_crop": 0.8, "widths": [16, 32, 64, 128, 128, 128], "steps": 1950},
    "box_crops_full_res_stage": {"box_crop": 0.8, "depths": [1, 1, 1, 1, 1, 1], "steps": 1850},
    "box_crops_deeper": {"box_crop": 0.8, "depths": [0, 1, 1, 2, 2, 2], "steps": 2200},
    "box_crops_64px_b32": {"box_crop": 0.8, "crop": 64, "batch": 32, "steps": 2000},
    "box_crops_l2_lr1e-3": {"box_crop": 0.8, "l2": 1.0, "lr": 1e-3, "steps": 2500},
    "box_crops_l2_lr1e-3_fg2": {"box_crop": 0.8, "l2": 1.0, "lr": 1e-3, "fg": 2.0, "steps": 2500},
    "lr1e-3": {"lr": 1e-3, "steps": 2500},
    "l2_lr1e-3": {"l2": 1.0, "lr": 1e-3, "steps": 2500},
    "l2_lr1e-3_fg2median": {"l2": 1.0, "lr": 1e-3, "fg": 2.0, "fg_mask": "median", "steps": 2500},
    "edge_crops_l2_lr1e-3": {"candidates": 4, "l2": 1.0, "lr": 1e-3, "steps": 2500},  # the shipped recipe
    "edge_crops_l2_lr1e-3_fg2median": {
        "candidates": 4,
        "l2": 1.0,
        "lr": 1e-3,
        "fg": 2.0,
        "fg_mask": "median",
        "steps": 2500,
    },
    "edge_crops_fg2median": {"candidates": 4, "fg": 2.0, "fg_mask": "median", "steps": 2500},
    "edge_crops_64px_b32_l2_lr1e-3_fg2median": {
        "candidates": 4,
        "crop": 64,
        "batch": 32,
        "l2": 1.0,
        "lr": 1e-3,
        "fg": 2.0,
        "fg_mask": "median",
        "steps": 2000,
    },
}
# The shipped recipe (edge_crops_l2_lr1e-3) and what might keep the shapes' corners, which it loses (stars and most
# diamonds come back as circles): more channels or a block at high resolution, a weaker latent penalty, a stronger
# edge loss. Steps as the shipped recipe's, whatever each costs on the CPU (see `--measure`).
SHIPPED = {"candidates": 4, "l2": 1.0, "lr": 1e-3, "steps": 2500}
VARIANTS |= {
    "shape_full_res": {**SHIPPED, "depths": [1, 1, 1, 1, 1, 1]},
    "shape_wide_shallow": {**SHIPPED, "widths": [32, 64, 64, 64, 64, 64]},
    "shape_wide_deep": {**SHIPPED, "widths": [16, 32, 64, 128, 128, 128]},
    "shape_latent1e-3": {**SHIPPED, "latent": 1e-3},
    "shape_edge2": {**SHIPPED, "edge": 2.0},
}
# Narrower latents (`RecipeSettings.ae_latent_channels`): fewer dimensions for the transformer to model, if the
# autoencoder keeps the shapes in them
VARIANTS |= {
    "latent_c16": {**SHIPPED, "latent_channels": 16},
    "latent_c8": {**SHIPPED, "latent_channels": 8},
    "latent_c16_1e-3": {**SHIPPED, "latent_channels": 16, "latent": 1e-3},
}
# fg: extra L1 weight on "foreground" pixels: inside the objects' boxes, or (fg_mask "median", needing no boxes)
# pixels more than 0.1 away in any channel from the crop's median colour


class Shapes:
    """A recipe data folder: PNGs and the shapes world's per-image JSON (background and object boxes)."""

    def __init__(self, folder: Path) -> None:
        self.names = sorted(p.stem for p in folder.glob("*.png"))
        if len(self.names) <= HOLDOUT:
            raise SystemExit(f"{folder}: need more than {HOLDOUT} images, found {len(self.names)}")
        self.images, self.objects = [], []
        for name in self.names:
            a = np.asarray(Image.open(folder / f"{name}.png").convert("RGB"))
            self.images.append(torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 127.5 - 1)  # (3, H, W)
            meta = json.loads((folder / f"{name}.json").read_text())["shapes"]
            self.objects.append([(o["box"], o["rgb"], o["color"]) for o in meta["objects"]])
        self.palette = {color: rgb for objs in self.objects for _, rgb, color in objs}

    def box_mask(self, i: int) -> torch.Tensor:
        m = torch.zeros(1, *self.images[i].shape[-2:])
        for (x0, y0, x1, y1), _, _ in self.objects[i]:
            m[:, y0:y1, x0:x1] = 1
        return m  # (1, H, W)


def _batch(data: Shapes, rng: np.random.Generator, v: dict) -> tuple[torch.Tensor, torch.Tensor]:
    from dcae.train import edge_energy

    crop, size = v.get("crop", 128), v.get("batch", 8)
    xs, ms = [], []
    for _ in range(size):
        i = int(rng.integers(len(data.names) - HOLDOUT))
        x, objs = data.images[i], data.objects[i]
        h, w = x.shape[-2:]
        if objs and rng.random() < v.get("box_crop", 0.0):  # a crop that holds a random object's centre
            (x0, y0, x1, y1), _, _ = objs[int(rng.integers(len(objs)))]
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            top = int(rng.integers(max(0, cy - crop + 1), min(h - crop, cy) + 1))
            left = int(rng.integers(max(0, cx - crop + 1), min(w - crop, cx) + 1))
        else:  # `candidates` random crops, the one with the most edges (dcae.train's crop_candidates)
            draws = [(int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1)))
                     for _ in range(v.get("candidates", 1))]  # fmt: skip
            top, left = max(draws, key=lambda d: edge_energy(x[:, d[0] : d[0] + crop, d[1] : d[1] + crop]))
        xs.append(x[:, top : top + crop, left : left + crop])
        ms.append(data.box_mask(i)[:, top : top + crop, left : left + crop])
    return torch.stack(xs), torch.stack(ms)  # (B, 3, crop, crop), (B, 1, crop, crop)


@torch.no_grad()
def evaluate(model, data: Shapes, device: str, agreement: bool = False) -> dict[str, float]:
    from sana.eval import same_objects

    model.eval()
    psnrs, fg_psnrs, hits, total, agree = [], [], 0, 0, []
    for i in range(len(data.names) - HOLDOUT, len(data.names)):
        x = data.images[i][None].to(device)
        y = model.decode(model.encode(x)).float().clamp(-1, 1)
        psnrs.append(10 * math.log10(4 / max((y - x).pow(2).mean().item(), 1e-12)))
        m = data.box_mask(i).to(device)
        if m.sum() > 0:
            fg_mse = ((y - x).pow(2) * m).sum().item() / (3 * m.sum().item())
            fg_psnrs.append(10 * math.log10(4 / max(fg_mse, 1e-12)))
        img = ((y[0] + 1) * 127.5).cpu()
        for (x0, y0, x1, y1), _, color in data.objects[i]:
            cx, cy, r = (x0 + x1) // 2, (y0 + y1) // 2, max(1, (x1 - x0) // 8)
            mean = img[:, cy - r : cy + r + 1, cx - r : cx + r + 1].flatten(1).mean(1).numpy()
            hits += min(data.palette, key=lambda c: ((np.array(data.palette[c]) - mean) ** 2).sum()) == color
            total += 1
        if agreement:  # as sana.eval.reconstruction_scores: the same multiset of (shape, colour) detections
            pixels = lambda t: ((t[0] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()  # noqa: E731
            agree.append(same_objects(pixels(y), pixels(x)))
    model.train()
    out = {"psnr": float(np.mean(psnrs)), "fg_psnr": float(np.mean(fg_psnrs)), "colour": hits / total}
    return {**out, "agreement": sum(agree) / len(agree)} if agreement else out


def _model(v: dict):
    from dcae import DCAE
    from dcae.train import EMBEDDED_F32

    cfg = EMBEDDED_F32
    if "widths" in v:
        cfg = dataclasses.replace(cfg, widths=tuple(v["widths"]))
    if "depths" in v:
        cfg = dataclasses.replace(cfg, encoder_depths=tuple(v["depths"]), decoder_depths=tuple(v["depths"]))
    if "latent_channels" in v:
        cfg = dataclasses.replace(cfg, latent_channels=v["latent_channels"])
    return DCAE(cfg)


def train(
    name: str, data: Shapes, device: str, steps: int | None = None, timing: bool = False, cap: float | None = None
) -> dict:
    """Train one variant; with `cap`, training stops after that many seconds and is evaluated there."""
    from dcae.losses import LossWeights, reconstruction_losses

    v = VARIANTS[name]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = _model(v).to(device)
    steps, lr = steps or v["steps"], v.get("lr", 2e-3)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    weights = LossWeights(l1=1.0, l2=v.get("l2", 0.0), ssim=0.2, edge=v.get("edge", 0.5))
    latent_w, fg_w, warm = v.get("latent", 1e-2), v.get("fg", 0.0), min(50, steps // 10)
    log, started = [], time.perf_counter()
    for step in range(steps):
        t = (step - warm) / max(1, steps - warm)
        cur = lr * (step + 1) / warm if step < warm else lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))
        for group in opt.param_groups:
            group["lr"] = cur
        x, m = (t.to(device) for t in _batch(data, rng, v))
        z = model.encoder(x)
        y = model.decoder(z)
        loss = reconstruction_losses(y, x, weights)["loss"] + latent_w * z.float().pow(2).mean()
        if fg_w and v.get("fg_mask") == "median":
            median = x.flatten(2).median(dim=2).values[:, :, None, None]  # (B, 3, 1, 1)
            m = ((x - median).abs().amax(dim=1, keepdim=True) > 0.1).float()  # (B, 1, crop, crop)
        if fg_w:
            loss = loss + fg_w * ((y.float() - x).abs() * m).sum() / (3 * m.sum() + 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if timing and step == 2:
            started = time.perf_counter()  # the first steps warm up allocators and caches
        last = step + 1 == steps or bool(cap and time.perf_counter() - started > cap)
        if not timing and ((step + 1) % max(1, steps // 4) == 0 or last):
            log.append({"step": step + 1, "loss": loss.item(), **evaluate(model, data, device, agreement=last)})
            print(name, log[-1], flush=True)
        if last:
            break
    seconds = time.perf_counter() - started
    if timing:
        return {"name": name, "cpu_seconds_per_step": seconds / (steps - 3)}
    params = sum(p.numel() for p in model.parameters())
    return {"name": name, "settings": v, "params": params, "log": log, "seconds": seconds}


def _table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["name"] == "base"), None)
    lines = [
        "| variant | params | steps | PSNR dB | Δ vs base | box PSNR dB | colour | agreement |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        last = r["log"][-1]
        delta = f"{last['psnr'] - base['log'][-1]['psnr']:+.2f}" if base else "—"
        target = r["settings"]["steps"]
        steps = last["step"] if last["step"] == target else f"{last['step']} of {target}"
        agreement = f"{last['agreement']:.3f}" if "agreement" in last else "—"
        lines.append(f"| {r['name']} | {r['params'] / 1e6:.2f} M | {steps} | {last['psnr']:.2f} | {delta} | "
                     f"{last['fg_psnr']:.2f} | {last['colour']:.3f} | {agreement} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="a recipe data folder (PNGs + shapes-world JSON)")
    parser.add_argument("--only", help="comma-separated variant names (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--measure", action="store_true", help="CPU seconds per step of each variant (2 threads)")
    parser.add_argument("--cap", type=float, help="stop each variant's training after this many seconds")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = pick(args.only, VARIANTS)
    if args.worker:  # one variant in this process, result as JSON on the given path
        torch.set_num_threads(1)
        name, path = args.worker.split(":", 1)
        Path(path).write_text(json.dumps(train(name, Shapes(args.data), args.device, cap=args.cap)))
        return
    if args.measure:
        torch.set_num_threads(2)
        data = Shapes(args.data)
        for name in names:
            print(json.dumps(train(name, data, "cpu", steps=8, timing=True)), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:  # every variant at once, one process each (small models)
        command = [sys.executable, __file__, str(args.data), "--device", args.device]
        command += ["--cap", str(args.cap)] if args.cap else []
        rows, failed = fan_out(command, names, Path(tmp))
    if failed:
        raise SystemExit(f"variants failed: {', '.join(failed)} (see their output above)")
    table = _table(rows)
    print(table)
    if not args.only:
        device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
        report = {"device": device, "holdout_images": HOLDOUT, "variants": rows}
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "ae_recipe_sweep.json").write_text(json.dumps(report, indent=2) + "\n")
        (OUT / "ae_recipe_sweep.md").write_text(f"Device: {device}; {HOLDOUT} held-out images.\n\n{table}\n")


if __name__ == "__main__":
    main()
