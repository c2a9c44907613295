"""Does a shapes-world model follow its prompt at all? Two checks finer than the GenEval-style scores.

1. From a `sana eval shapes` report: of the images where the detector finds any object, in how many does it find
   one of the colours the prompt names? Compared against the same count with the prompts shuffled among those
   images (200 shuffles): what matching colours by chance gives. The same for the named shapes.
2. "a {colour} {shape}" for every colour and shape of the world, 2 seeds each (20 steps, CFG 4.5 or
   --cfg_scale, PAG off): images with any object, images with exactly one object, and of those, the ones whose
   object has the named colour, the named shape, both. Only single-object images count: an image cluttered with
   many small objects (a barely trained model draws 30) would otherwise "find" every colour.

    python benchmarks/embedded_prompt_following.py                      # the shipped model, check 2 only
    python benchmarks/embedded_prompt_following.py runs/embedded3/model runs/embedded3/eval/report.json

Prints the tables and writes docs/benchmarks/embedded_prompt_following.json (the shipped model at CFG 4.5 only).
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "embedded_prompt_following.json"


def report_colours(report: Path, shuffles: int = 200) -> dict[str, float]:
    """Check 1: named colours (and shapes) found among the images with any object, against shuffled prompts."""
    from sana_data.shapes import COLORS, SHAPES

    records = json.loads(report.read_text())["records"]
    words = [set(r["text"].split()) for r in records]
    found_colours = [{d["color"] for d in r["detections"]} for r in records]
    found_shapes = [{d["shape"] for d in r["detections"]} for r in records]
    drawn = [i for i, f in enumerate(found_colours) if f]
    result: dict[str, float] = {"images": len(records), "with_object": len(drawn)}
    for key, named, found in [
        ("colour", [{c for c in COLORS if c in w} for w in words], found_colours),
        ("shape", [{s for s in SHAPES if s in w or f"{s}s" in w} for w in words], found_shapes),
    ]:
        rng = random.Random(0)
        chance = 0
        for _ in range(shuffles):
            perm = rng.sample(drawn, len(drawn))
            chance += sum(bool(named[j] & found[i]) for i, j in zip(drawn, perm))
        result[f"named_{key}"] = sum(bool(named[i] & found[i]) for i in drawn)
        result["chance" if key == "colour" else "shape_chance"] = chance / shuffles
    return result


def single_objects(model: Path, seeds: int = 2, device: str = "cpu", cfg_scale: float = 4.5) -> dict[str, int]:
    from sana.eval import detect
    from sana.pipeline import SanaPipeline
    from sana_data.shapes import COLORS, SHAPES

    pipe = SanaPipeline.from_pretrained(model, device=device, dtype=torch.float32)
    stats: Counter = Counter()
    for colour in COLORS:
        for shape in SHAPES:
            prompts = [f"a {colour} {shape}"] * seeds
            images = pipe(prompts, height=256, width=256, num_inference_steps=20, guidance_scale=cfg_scale,
                          pag_guidance_scale=1.0, seed=0, output_type="pil", progress=False)  # fmt: skip
            for image in images:
                found = detect(image)
                stats["images"] += 1
                stats["with_object"] += bool(found)
                if len(found) != 1:
                    continue
                stats["one_object"] += 1
                stats["colour"] += found[0].color == colour
                stats["shape"] += found[0].shape == shape
                stats["both"] += found[0].color == colour and found[0].shape == shape
    return {k: stats[k] for k in ("images", "with_object", "one_object", "colour", "shape", "both")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, nargs="?", help="a pipeline folder (default: the shipped model)")
    parser.add_argument("report", type=Path, nargs="?", help="its `sana eval shapes` report.json")
    parser.add_argument("--cfg_scale", type=float, default=4.5, help="CFG scale of check 2 (default 4.5)")
    args = parser.parse_args()
    from sana.embedded import DEFAULT_MODEL_DIR

    torch.set_num_threads(2)
    model = args.model or DEFAULT_MODEL_DIR
    result: dict = {"model": str(model), "cfg_scale": args.cfg_scale}
    if args.report:
        r = result["report"] = report_colours(args.report)
        print("| images | with an object | a named colour found | same, prompts shuffled | a named shape found | same, "
              "prompts shuffled |\n|---:|---:|---:|---:|---:|---:|")  # fmt: skip
        print(f"| {r['images']} | {r['with_object']} | {r['named_colour']} | {r['chance']:.0f} | {r['named_shape']} "
              f"| {r['shape_chance']:.0f} |\n")  # fmt: skip
    s = result["single_objects"] = single_objects(model, cfg_scale=args.cfg_scale)
    print("| images | with an object | with one object | its colour named | its shape named | both |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {s['images']} | {s['with_object']} | {s['one_object']} | {s['colour']} | {s['shape']} | {s['both']} |")
    if model.resolve() == DEFAULT_MODEL_DIR.resolve() and args.cfg_scale == 4.5:
        result["model"] = str(DEFAULT_MODEL_DIR.resolve().relative_to(OUT.parents[2]))  # repo-relative, any checkout
        OUT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
