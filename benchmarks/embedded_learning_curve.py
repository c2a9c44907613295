"""How the embedded model's scores grow with transformer steps: export checkpoints of one recipe run, score each.

A recipe run keeps only its last two transformer checkpoints (`train.keep_last_checkpoints`), so copy the ones you
want out while it trains; checkpoints are written under a temporary name and renamed when complete, so a copy of a
`step_*` folder is a whole checkpoint:

    mkdir -p ckpts && (while sleep 20; do cp -rn runs/embedded13/transformer/checkpoints/step_* ckpts/; done) &

Each checkpoint's EMA weights go into a pipeline folder with the run's refined decoder (`decoder/model`: its encoder
is the one the cached latents came from; the run must have finished its decoder stage), exactly as the recipe's
`export` stage does (`sana.embedded.export_pipeline`), and `sana eval shapes` scores it on the same held-out prompts
and seeds as the model card (`--ae_images 0`):

    python benchmarks/embedded_learning_curve.py runs/embedded13 ckpts/step_0001000 ckpts/step_0002000 \\
        runs/embedded13/transformer/checkpoints/step_0005000

Prints the table and writes docs/benchmarks/embedded_learning_curve.{json,md} (`--out` for another stem).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import tempfile
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "embedded_learning_curve"
CATEGORIES = ("single_object", "two_objects", "counting", "colors", "position", "color_attr")


def run_config(work: Path):
    """The transformer stage's config of the recipe run in `work`, from its recorded settings."""
    from sana.embedded import RECIPE_FILE, RecipeSettings, recipe_config

    return recipe_config(work, RecipeSettings(**json.loads((work / RECIPE_FILE).read_text())["settings"]))


def score_checkpoint(work: Path, cfg, checkpoint: Path, prompts: int, steps: int, seed: int, scratch: Path) -> dict:
    from sana.cli import main as sana_main
    from sana.embedded import export_pipeline

    model, out = scratch / f"model_{checkpoint.name}", scratch / f"eval_{checkpoint.name}"
    export_pipeline(cfg, checkpoint, model, flow_shift=cfg.scheduler.flow_shift, vae=work / "decoder" / "model")
    argv = ["eval", "shapes", "--model_path", str(model), "-n", str(prompts), "--steps", str(steps),
            "--seed", str(seed), "--ae_images", "0", "-o", str(out), "--device", "cpu"]  # fmt: skip
    if sana_main(argv) != 0:
        raise RuntimeError(f"sana {' '.join(argv)} failed")
    report = json.loads((out / "report.json").read_text())
    match = re.fullmatch(r"step_(\d+)", checkpoint.name)
    return {
        "checkpoint": str(checkpoint),
        "step": int(match[1]) if match else None,
        "overall": report["overall"],
        "overall_ci95": report.get("overall_ci95"),
        "scores": report["scores"],
    }


def table(rows: list[dict]) -> str:
    lines = ["| transformer step | overall | " + " | ".join(CATEGORIES) + " |"]
    lines.append("|---:|---:|" + "---:|" * len(CATEGORIES))
    for r in rows:
        ci = f" ± {r['overall_ci95']:.3f}" if r["overall_ci95"] is not None else ""
        cells = " | ".join(f"{r['scores'][c]:.2f}" for c in CATEGORIES)
        name = r["step"] if r["step"] is not None else r["checkpoint"]
        lines.append(f"| {name} | {r['overall']:.3f}{ci} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work_dir", type=Path, help="the recipe run (sana train-embedded --work-dir)")
    ap.add_argument("checkpoints", type=Path, nargs="+", help="transformer checkpoint folders (step_*)")
    ap.add_argument("-n", "--prompts", type=int, default=300, help="held-out prompts (the model card's 300)")
    ap.add_argument("--steps", type=int, default=20, help="solver steps (the model card's 20)")
    ap.add_argument("--seed", type=int, default=0, help="prompt draw and image seeds (the model card's 0)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT, help="stem of the .json and .md written")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for path in [args.work_dir / "decoder" / "model", *args.checkpoints]:
        if not path.is_dir():
            ap.error(f"{path} is not a folder (the run's decoder stage must be done; checkpoints are step_* folders)")
    cfg, rows = run_config(args.work_dir), []
    with tempfile.TemporaryDirectory() as scratch:
        for checkpoint in args.checkpoints:
            rows.append(score_checkpoint(args.work_dir, cfg, checkpoint, args.prompts, args.steps, args.seed,
                                         Path(scratch)))  # fmt: skip
            print(f"{checkpoint.name}: overall {rows[-1]['overall']:.3f}", flush=True)
    rows.sort(key=lambda r: (r["step"] is None, r["step"] or 0))
    text = table(rows)
    print(text)
    record = {
        "work_dir": str(args.work_dir), "prompts": args.prompts, "steps": args.steps, "seed": args.seed,
        "threads": args.threads, "machine": {"cpu": platform.processor() or platform.machine(),
                                             "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                             "torch": torch.__version__},
        "rows": rows,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(
        f"`python benchmarks/embedded_learning_curve.py {args.work_dir} ...` ({args.prompts} held-out prompts, "
        f"{args.steps} steps, seed {args.seed}, {record['machine']['cpu_capability']} CPU)\n\n{text}\n"
    )


if __name__ == "__main__":
    main()
