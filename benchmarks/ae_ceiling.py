"""The autoencoder ceiling of recipe autoencoders: what the eval's prompts score after a round trip through each.

`sana eval shapes` renders each held-out prompt's own scene, sends it through the autoencoder and scores it like a
generated image (`sana.eval.evaluate_ground_truth(autoencode=...)`): what a transformer that drew every scene
exactly would score with that autoencoder. This script measures it for finished autoencoder folders (`--score`) and
for the recipe's autoencoder stage trained with changed `RecipeSettings` (`--train`, one folder per variant under
`--work`; the training images are `--data`'s unless the variant changes a setting of the data stage, such as
`data_object_scale`, which redraws them):

    python benchmarks/ae_ceiling.py --data runs/embedded16/data --work runs/ae_probe \\
        --score shipped-recipe=runs/embedded16/autoencoder/model \\
        --train lat1e3:ae_latent_weight=0.001 --train scale1:data_object_scale=1.0

Each row also has the PSNR and detector agreement on held-out images (`sana.eval.reconstruction_scores`). A variant
whose autoencoder already exists under `--work` is scored without retraining. Prints the table and writes
docs/benchmarks/ae_ceiling.{json,md} (`--out` for another stem).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "ae_ceiling"


def train_variant(name: str, assignments: list[str], data: Path, work: Path) -> tuple[Path, dict]:
    """The recipe's autoencoder stage with `assignments` (NAME=VALUE) in `work/name`; its model folder and report."""
    from sana import embedded

    settings = embedded.recipe_settings(embedded.RecipeSettings(), assignments)
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "data").exists():
        changed = [k for k, v in vars(settings).items() if v != getattr(embedded.RecipeSettings(), k)]
        if any(embedded.first_stage_of(k) == "data" for k in changed):  # e.g. data_object_scale, images, seed
            embedded._stage_data(folder, settings, print)
        else:
            (folder / "data").symlink_to(data.resolve())
    model = folder / "autoencoder" / "model"
    if model.is_dir():
        return model, {"trained": "earlier"}
    started = time.perf_counter()
    report = embedded._stage_autoencoder(folder, settings, print)
    return model, {**report, "wall_seconds": round(time.perf_counter() - started, 1)}


def score(model: Path, prompts: int, images: int) -> dict:
    from dcae import load_dcae
    from sana.eval import evaluate_ground_truth, heldout_images, reconstruction_scores

    ae = load_dcae(model, dtype=torch.float32).eval()

    def autoencode(x: torch.Tensor) -> torch.Tensor:
        return ae.decode(ae.encode(x))

    top = evaluate_ground_truth(prompts, autoencode=autoencode)
    recon = reconstruction_scores(autoencode, heldout_images(images))
    return {"ceiling": top.to_dict(records=False), "psnr": recon["psnr"], "agreement": recon["detector_agreement"]}


def markdown(report: dict) -> str:
    rows = []
    for r in report["rows"]:
        c = r["ceiling"]
        per = " / ".join(f"{v:.2f}" for v in c["scores"].values())
        rows.append(f"| {r['name']} | {r['source']} | {per} | {c['overall']:.3f} ± {c['overall_ci95']:.3f} | "
                    f"{r['psnr']:.1f} dB | {r['agreement']:.1%} |")  # fmt: skip
    head = ("| autoencoder | source | ceiling: single / two / counting / colors / position / color_attr | overall | "
            f"PSNR ({report['images']} held-out) | agreement |\n|---|---|---|---:|---:|---:|")  # fmt: skip
    env = report["environment"]
    intro = (f"Autoencoder ceiling on {report['prompts']} held-out eval prompts (`sana.eval.evaluate_ground_truth"
             "(autoencode=...)`; ground truth scores 1.000).")  # fmt: skip
    where = f"Command: `{report['command']}`. {env['cpu']}, {env['threads']} threads, torch {env['torch']}."
    return f"{intro}\n\n{head}\n" + "\n".join(rows) + f"\n\n{where}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--score", action="append", default=[], metavar="NAME=FOLDER", help="a finished autoencoder")
    parser.add_argument("--train", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                        help="the recipe's autoencoder stage with these RecipeSettings changes")  # fmt: skip
    parser.add_argument("--data", type=Path, help="a recipe run's data/ folder (the training images for --train)")
    parser.add_argument("--work", type=Path, default=Path("runs/ae_probe"), help="where --train variants train")
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--images", type=int, default=32, help="held-out images for PSNR and agreement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT, help="output stem (.json and .md are added)")
    args = parser.parse_args()
    if args.train and (args.data is None or not args.data.is_dir()):
        parser.error("--train needs --data: a recipe run's data/ folder (e.g. runs/embedded16/data)")
    torch.set_num_threads(args.threads)
    rows = []
    for item in args.score:
        name, sep, folder = item.partition("=")
        if not sep or not Path(folder).is_dir():
            parser.error(f"--score {item!r}: expected NAME=FOLDER with an existing autoencoder folder")
        rows.append({"name": name, "source": f"`{folder}`", **score(Path(folder), args.prompts, args.images)})
    for item in args.train:
        name, sep, changes = item.partition(":")
        if not sep or not changes:
            parser.error(f"--train {item!r}: expected NAME:KEY=VALUE[,KEY=VALUE]")
        model, trained = train_variant(name, changes.split(","), args.data, args.work)
        rows.append({"name": name, "source": f"`{changes}`", "training": trained,
                     **score(model, args.prompts, args.images)})  # fmt: skip
        print(f"{name}: ceiling {rows[-1]['ceiling']['overall']:.3f}", flush=True)
    command = [*(f"--score {s}" for s in args.score), *(f"--train {t}" for t in args.train)]
    command += [f"--data {args.data}"] if args.data else []
    cpu = f"{platform.processor() or platform.machine()} ({torch.backends.cpu.get_cpu_capability()})"
    report = {
        "prompts": args.prompts,
        "images": args.images,
        "rows": rows,
        "command": "python benchmarks/ae_ceiling.py " + " ".join(command),
        "environment": {"cpu": cpu, "threads": args.threads, "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
