"""How the embedded model's transformer recipe was chosen: `sana train` runs on one recipe run's parts, compared.

Every variant trains the recipe's Linear DiT (`configs/embedded/Sana_Shapes_img256.yaml` through
`sana.embedded.recipe_config`) on the same feature cache, autoencoder and text encoder, with some settings
overridden, then reports:

- `text_gain`: how much the model uses its prompt: the flow-matching loss with the null caption divided by the
  loss with the real caption, on 512 training samples at t = 0.5, 0.7 and 0.9 (fixed noise). 1.00 means the
  prompt is ignored. The first shipped transformer scored 1.01 here;
- `caption_norm`: the mean |weight| of the caption RMSNorm (`attention_y_norm`; Sana initialises it at 0.01):
  how loud the prompt is in every cross-attention;
- the `sana eval shapes` scores (GenEval-style, held-out prompts, 20 steps, CFG 4.5, PAG off) of its EMA weights,
  exported with the recipe's refined decoder (`decoder/model`) when the work folder has one, as the recipe does;
- the two finer prompt-following checks of `benchmarks/embedded_prompt_following.py`: in how many eval images with an
  object the detector finds a colour the prompt names (against chance: the prompts shuffled), and on
  "a {colour} {shape}" for all 30 pairs, 2 seeds: images with exactly one object / its colour named / its shape
  named / both.

The CPU cost of a variant is its steps times the recipe's measured 0.70 s per step at batch 32 (2 threads), scaled
by its batch size, so variants with more steps or larger batches are marked with their CPU minutes.

    sana train-embedded --work-dir runs/embedded       # any finished (or stopped after `features`) recipe run
    python benchmarks/dit_recipe_sweep.py runs/embedded                  # every variant at once, one process each
    python benchmarks/dit_recipe_sweep.py runs/embedded --only base --steps 20 --prompts 12 --device cpu
    python benchmarks/dit_recipe_sweep.py runs/embedded --only seed0,seed1 --cap 380 --workers 2 --reference MODEL

Prints the table and writes it with every variant's numbers to WORK/sweep/report.{md,json}; the runs behind the
recipe's current settings are in docs/benchmarks/dit_recipe_sweep.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from _sweep import fan_out, pick

# the recipe's transformer stage on this project's 2-core CPU at batch 32, with the batched linear-attention
# kernel (runs/embedded6: 3,500 steps in 40.8 min); before it, 0.92 s (runs/embedded3)
CPU_SECONDS_PER_STEP = 0.70
RECIPE_BATCH = 32
TEXT_GAIN_TIMES = (0.5, 0.7, 0.9)
TEXT_GAIN_SAMPLES = 512

# The first recipe's transformer settings, which the variants change: the recipe's defaults have since moved to
# the winner (caption norm 1.0, lr 3e-4, 3000 steps), so each variant states its values.
FIRST = {"text_encoder.y_norm_scale_factor": 0.01, "train.optimizer.lr": 1e-3}
NORM1 = {"text_encoder.y_norm_scale_factor": 1.0}

# name → {"steps": optimizer steps, dotted `sana train` overrides...}
VARIANTS: dict[str, dict] = {
    "base": {**FIRST, "steps": 1800},  # the first shipped recipe: caption norm at 0.01, lr 1e-3
    "ynorm0.1": {**FIRST, "steps": 1800, "text_encoder.y_norm_scale_factor": 0.1},
    "ynorm1": {**FIRST, **NORM1, "steps": 1800},
    "lr3e-4": {**FIRST, "steps": 1800, "train.optimizer.lr": 3e-4},
    "ynorm1_lr3e-4": {**FIRST, **NORM1, "steps": 1800, "train.optimizer.lr": 3e-4},
    "ynorm1_lr2e-3": {**FIRST, **NORM1, "steps": 1800, "train.optimizer.lr": 2e-3},
    "base_3000": {**FIRST, "steps": 3000},
    "ynorm1_3000": {**FIRST, **NORM1, "steps": 3000},
    "ynorm1_lr3e-4_3000": {**FIRST, **NORM1, "steps": 3000, "train.optimizer.lr": 3e-4},  # the recipe since
    "ynorm1_tmean0.5": {**FIRST, **NORM1, "steps": 1800, "scheduler.logit_mean": 0.5},
    # The work folder's recipe (its recipe.json settings, which these runs do not override) with seed replicates, and
    # what the ~20 spare minutes of the 90-minute budget could buy: more steps, or larger batches for the same steps.
    "seed0": {"steps": 3000},
    "seed1": {"steps": 3000, "train.seed": 1},
    "seed2": {"steps": 3000, "train.seed": 2},
    "steps4500": {"steps": 4500},
    "steps4500_seed1": {"steps": 4500, "train.seed": 1},
    "b128_lr6e-4": {"steps": 3000, "train.train_batch_size": 128, "train.optimizer.lr": 6e-4},
    "b256_lr6e-4": {"steps": 3000, "train.train_batch_size": 256, "train.optimizer.lr": 6e-4},
}


def text_gain(model, autoencoder, features: Path, device: str) -> float:
    """Null-caption loss / real-caption loss (mean over `TEXT_GAIN_TIMES`) on square-bucket cache samples."""
    from sana._compose import to_diffusion_latents
    from sana.eval import prompt_losses
    from sana_data import FeatureCache

    cache = FeatureCache(features)
    keys = [k for k in cache.sample_keys() if cache.entries[k]["bucket"] == "1.0"][:TEXT_GAIN_SAMPLES]
    x0 = to_diffusion_latents(autoencoder, torch.stack([cache.latent(k) for k in keys]).to(device))  # (N, C_z, h, w)
    pairs = [cache.text(k, "prompt") for k in keys]
    text = torch.stack([t for t, _ in pairs]).to(device)  # (N, L, D_txt)
    mask = torch.stack([m for _, m in pairs]).to(device)  # (N, L)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).to(device)
    losses = prompt_losses(model, x0, text, mask, model.y_embedder.y_embedding, noise, TEXT_GAIN_TIMES)
    return sum(empty / real for real, empty in losses.values()) / len(losses)


def run_variant(
    name: str, work: Path, device: str, steps: int | None, prompts: int, cap: float | None, workers: int = 0
) -> dict:
    """Train (for at most `cap` seconds), export and score one variant in `work/sweep/<name>` (a rerun starts it
    over)."""
    from sana.embedded import export_pipeline, recipe_config, work_settings
    from sana.train.checkpoint import list_checkpoints
    from sana.train.loop import train

    v = dict(VARIANTS[name])
    steps = steps or v["steps"]
    del v["steps"]
    folder = work / "sweep" / name
    shutil.rmtree(folder, ignore_errors=True)
    overrides = {"work_dir": str(folder / "transformer"), "train.max_steps": steps, "train.num_workers": workers, **v}
    if cap:
        overrides["train.training_hours"] = cap / 3600
    cfg = recipe_config(work, work_settings(work), overrides=overrides)
    started = time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad():
        done = train(cfg).state.step
    seconds = time.perf_counter() - started
    export = folder / "model"
    decoder = work / "decoder" / "model"  # the recipe's refined decoder, as its export stage uses
    vae = decoder if decoder.is_dir() else None
    export_pipeline(cfg, list_checkpoints(cfg.work_dir)[-1], export, flow_shift=cfg.scheduler.flow_shift, vae=vae)
    batch = v.get("train.train_batch_size", RECIPE_BATCH)
    cpu_minutes = steps * CPU_SECONDS_PER_STEP * batch / RECIPE_BATCH / 60
    return {"name": name, "settings": VARIANTS[name], "steps": done, "target_steps": steps,
            "train_seconds": round(seconds, 1), "cpu_minutes": round(cpu_minutes, 1),
            **score(export, work, device, prompts, folder)}  # fmt: skip


def score(model: Path, work: Path, device: str, prompts: int, folder: Path) -> dict:
    """Text gain, caption norm, `sana eval shapes` scores (report in `folder`) and the finer checks of a pipeline
    folder."""
    from embedded_prompt_following import report_colours, single_objects

    from sana.eval import eval_prompts, evaluate
    from sana.pipeline import SanaPipeline

    pipe = SanaPipeline.from_pretrained(model, device=device, dtype=torch.float32)
    gain = text_gain(pipe.denoiser, pipe.autoencoder, work / "features", device)
    norm = float(pipe.denoiser.attention_y_norm.weight.detach().abs().mean())

    def generate(texts: list[str], seed: int) -> list:
        return pipe(texts, num_inference_steps=20, guidance_scale=4.5, pag_guidance_scale=1.0, seed=seed,
                    output_type="pil", progress=False)  # fmt: skip

    report = evaluate(generate, eval_prompts(prompts, seed=0), batch_size=50)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval_report.json").write_text(report.to_json())
    return {"text_gain": round(gain, 4), "caption_norm": round(norm, 4),
            "scores": {**report.scores, "overall": report.overall},
            "named_colour": report_colours(folder / "eval_report.json"),
            "single_objects": single_objects(model, device=device)}  # fmt: skip


def score_reference(model: Path, work: Path, device: str, prompts: int) -> dict:
    """The same scores for a finished pipeline folder (e.g. the shipped model), as a row beside the variants."""
    row = score(model, work, device, prompts, work / "sweep" / "reference")
    return {"name": f"reference: {model.name}", "settings": {"model": str(model)}, "steps": None,
            "target_steps": None, "train_seconds": 0.0, "cpu_minutes": None, **row}  # fmt: skip


def prepare(work: Path, device: str) -> None:
    """Build the feature cache of `work` on `device` if it is missing (data/, autoencoder/, text_encoder/ needed)."""
    from sana.embedded import recipe_config, work_settings
    from sana.features import encode_latents

    if (work / "features" / "index.json").is_file():
        return
    missing = [p for p in ("data", "autoencoder/model", "text_encoder") if not (work / p).exists()]
    if missing:
        raise SystemExit(f"{work} lacks {', '.join(missing)}: run `sana train-embedded --work-dir {work}` first")
    encode_latents(recipe_config(work, work_settings(work)), work / "features", batch_size=256, device=device)


def _table(rows: list[dict]) -> str:
    cats = ("single_object", "two_objects", "counting", "colors", "position", "color_attr")
    finer = any("named_colour" in r for r in rows)
    extra = " named colour (chance) | one object / colour / shape / both |" if finer else ""
    lines = [
        "| variant | steps | CPU min | text gain | caption norm | " + " | ".join(cats) + " | overall |" + extra,
        "|---|---:|---:|---:|---:|" + "---:|" * len(cats) + "---:|" + ("---:|---|" if finer else ""),
    ]
    for r in rows:
        s = r["scores"]
        steps = r["steps"] if r["steps"] == r["target_steps"] else f"{r['steps']} of {r['target_steps']}"
        steps, cpu = ("—", "—") if r["steps"] is None else (steps, r["cpu_minutes"])
        line = (f"| {r['name']} | {steps} | {cpu} | {r['text_gain']:.3f} | "
                f"{r['caption_norm']:.4f} | " + " | ".join(f"{s[c]:.2f}" for c in cats) +
                f" | **{s['overall']:.3f}** |")  # fmt: skip
        if finer:
            c, o = r.get("named_colour"), r.get("single_objects")
            line += f" {c['named_colour']} ({c['chance']:.0f}) |" if c else " — |"
            line += f" {o['one_object']} / {o['colour']} / {o['shape']} / {o['both']} |" if o else " — |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("work", type=Path, help="a recipe work folder (data/, autoencoder/, text_encoder/)")
    parser.add_argument("--only", help="comma-separated variant names (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, help="override every variant's steps (a quick check)")
    parser.add_argument("--prompts", type=int, default=300, help="held-out eval prompts per variant")
    parser.add_argument("--cap", type=float, help="stop each variant's training after this many seconds")
    parser.add_argument("--workers", type=int, default=0, help="data-loader processes per variant (train.num_workers)")
    parser.add_argument("--reference", type=Path, help="also score this pipeline folder (e.g. the shipped model)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = pick(args.only, VARIANTS)
    work = args.work.resolve()
    if args.worker:  # one variant in this process, result as JSON on the given path
        torch.set_num_threads(1 if args.device == "cuda" else 2)
        name, path = args.worker.split(":", 1)
        if name == "reference":
            result = score_reference(args.reference.resolve(), work, args.device, args.prompts)
        else:
            result = run_variant(name, work, args.device, args.steps, args.prompts, args.cap, args.workers)
        Path(path).write_text(json.dumps(result))
        return
    prepare(work, args.device)
    results = work / "sweep"
    results.mkdir(exist_ok=True)
    command = [sys.executable, __file__, str(work), "--device", args.device, "--prompts", str(args.prompts)]
    command += ["--workers", str(args.workers)]
    if args.reference:
        names, command = ["reference", *names], [*command, "--reference", str(args.reference.resolve())]
    command += [*(["--steps", str(args.steps)] if args.steps else []), *(["--cap", str(args.cap)] if args.cap else [])]
    rows, failed = fan_out(command, names, results)
    table = _table(rows)
    print(table)
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    report = {"device": device, "work": str(work), "prompts": args.prompts, "cap_seconds": args.cap, "variants": rows}
    (results / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (results / "report.md").write_text(
        f"Device: {device}; {args.prompts} held-out prompts; cap {args.cap} s.\n\n{table}\n"
    )
    if failed:
        raise SystemExit(f"variants failed: {', '.join(failed)} (see their output above)")


if __name__ == "__main__":
    main()
