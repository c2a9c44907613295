"""The `sana` command: `generate`, `convert` and `config`. Each subcommand parses, loads, and calls library code.

    sana generate "a cyberpunk cat" --model_path Efficient-Large-Model/Sana_1600M_1024px_diffusers -o out/
    sana generate --config configs/sana_config/1024ms/Sana_1600M_img1024.yaml \\
        --model_path hf://Efficient-Large-Model/Sana_1600M_1024px/checkpoints/Sana_1600M_1024px.pth \\
        --txt_file prompts.txt --bs 4 -o out/ --model.pag_applied_layers="[8]"
    sana convert model.pth out_diffusers/ --to diffusers
    sana config configs/sana_config/512ms/Sana_600M_img512.yaml --train.train_batch_size=32

Dotted config overrides (`--section.key=value`, as in the official scripts) may be mixed with the flags.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sana import __version__
from sana._compose import write_text_atomic
from sana.config import ConfigError, dump_config, load_config, parse_overrides

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SAMPLER_ALIASES = {"flow_dpm-solver": "flow_dpm-solver", "dpm": "flow_dpm-solver", "flow_euler": "flow_euler"}
TEXT_GAIN_IMAGES = 32  # held-out images behind `sana eval shapes`' text gain


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sana", description="The Sana toolkit command line.")
    parser.add_argument("--version", action="version", version=f"sana {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="text -> PNG images (with their settings in PNG text chunks)")
    gen.add_argument("prompt", nargs="*", help="prompt(s); `--ar H:W` / `--hw H:W` inside a prompt set its size")
    gen.add_argument("--config", help="a Sana YAML (official ones load unchanged)")
    gen.add_argument("--model_path", help="transformer .pth / folder, diffusers pipeline folder, hf:// or repo id")
    src = gen.add_mutually_exclusive_group()
    src.add_argument("--txt_file", help="one prompt per line")
    src.add_argument("--json_file", help='MJHQ-style {key: {"prompt": ...}}; files are named by key')
    gen.add_argument("-o", "--output", default="outputs", help="output folder (default: outputs)")
    gen.add_argument("--height", type=int, help="pixels (default: the config's image_size)")
    gen.add_argument("--width", type=int, help="pixels (default: the config's image_size)")
    gen.add_argument("--steps", "--step", type=int, default=-1, help="solver steps; -1: 20 (DPM) / 28 (Euler)")
    gen.add_argument("--cfg_scale", type=float, default=4.5, help="classifier-free guidance scale (default 4.5)")
    gen.add_argument("--pag_scale", type=float, default=1.0, help="PAG scale; > 1 turns PAG on (default 1.0)")
    gen.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default 0)")
    gen.add_argument("--negative_prompt", default="", help="negative prompt (encoded without the instruction)")
    gen.add_argument("--sampler", "--sampling_algo", choices=sorted(SAMPLER_ALIASES), help="default: config")
    gen.add_argument("--bs", type=int, default=1, help="images per model call (images do not depend on it)")
    gen.add_argument("--images_per_prompt", type=int, default=1, help="images per prompt")
    gen.add_argument("--sample_nums", type=int, help="use only the first N prompts")
    gen.add_argument("--interval_guidance", type=float, nargs=2, default=(0.0, 1.0), metavar=("LO", "HI"))
    gen.add_argument("--no_binning", action="store_true", help="generate at exactly --height x --width")
    gen.add_argument("--dtype", choices=sorted(DTYPES), help="compute dtype (default: fp32 on CPU, config on GPU)")
    gen.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    gen.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    gen.set_defaults(run=_generate)

    conv = sub.add_parser("convert", help="convert checkpoints: official .pth <-> diffusers <-> ours")
    conv.add_argument("src", help="a .pth, a transformer folder, a pipeline folder, hf:// or a repo id")
    conv.add_argument("dst", help="where to write (a .pth file for --to sana, else a folder)")
    conv.add_argument("--to", required=True, choices=("sana", "diffusers", "linear_dit"))
    conv.add_argument("--config", help="the YAML that describes an official .pth (its model section is the graph)")
    conv.add_argument("--dtype", choices=sorted(DTYPES), help="cast the weights")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing dst")
    conv.set_defaults(run=_convert)

    tr = sub.add_parser("train", help="flow-matching training (needs sana[train]); dotted overrides allowed")
    tr.add_argument("config", help="a Sana YAML, e.g. configs/sana_config/512ms/Sana_600M_img512.yaml")
    tr.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    tr.set_defaults(run=_train)

    enc = sub.add_parser("encode-latents", help="precompute a training feature cache (latents + text features)")
    enc.add_argument("config", help="the training YAML (its data, vae and text_encoder sections are used)")
    enc.add_argument("-o", "--output", required=True, help="cache folder (resumable: existing samples are kept)")
    enc.add_argument("--bs", type=int, default=8, help="images per encoder call")
    enc.set_defaults(run=_encode_latents)

    emb = sub.add_parser("train-embedded", help="train the embedded default model from scratch (resumable)")
    emb.add_argument("--work-dir", default="runs/embedded", help="run folder (default: runs/embedded)")
    emb.add_argument("--out", help="model folder to write (default: WORK_DIR/model)")
    emb.add_argument("--quick", action="store_true", help="a few steps per stage: checks the recipe runs")
    emb.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    emb.add_argument("--redo-from", metavar="STAGE", help="keep the finished stages before STAGE, redo it and the "
                     "later ones (e.g. transformer: new DiT settings, same autoencoder)")  # fmt: skip
    emb.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="settings",
                     help="a RecipeSettings field other than its default, e.g. --set ae_latent_channels=16 "
                     "(repeatable; recorded in recipe.json and the model card)")  # fmt: skip
    emb.set_defaults(run=_train_embedded)
    ev = sub.add_parser("eval", help="evaluate a model; `sana eval shapes`: GenEval-style on the shapes world")
    ev.add_argument("benchmark", choices=("shapes",))
    ev.add_argument("--config", help="a Sana YAML (with --model_path to a transformer checkpoint)")
    ev.add_argument("--model_path", help="a pipeline folder / repo, or a transformer checkpoint with --config")
    ev.add_argument("-n", "--num_prompts", type=int, default=300, help="held-out prompts (50+ per category)")
    ev.add_argument("--steps", type=int, default=20, help="solver steps")
    ev.add_argument("--cfg_scale", type=float, default=4.5, help="classifier-free guidance scale")
    ev.add_argument("--pag_scale", type=float, default=1.0, help="PAG scale; > 1 turns PAG on (default 1.0: off)")
    ev.add_argument("--size", type=int, default=256, help="image side in pixels")
    ev.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    ev.add_argument("--bs", type=int, default=8, help="images per model call")
    ev.add_argument("--ae_images", type=int, default=32,
                    help="held-out images for the autoencoder's PSNR/SSIM (0: skip it and the ceiling)")  # fmt: skip
    ev.add_argument("-o", "--output", default="eval_shapes", help="folder for report.json/report.md/grid.png")
    ev.add_argument("--dtype", choices=sorted(DTYPES))
    ev.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ev.set_defaults(run=_eval)

    cfg = sub.add_parser("config", help="print a resolved config (YAML + dotted overrides)")
    cfg.add_argument("config", nargs="?", help="a Sana YAML (default: the built-in defaults)")
    cfg.set_defaults(run=_print_config)
    from sana.app import add_parser as add_app_parser  # imports no Gradio: only running `sana app` needs the extra

    add_app_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sana` command; returns the exit status."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = parse_overrides(args_in)
    parser = _parser()
    args = parser.parse_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.run(args, overrides) or 0
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, KeyError, TypeError, RuntimeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"sana {args.command}: error: {message}", file=sys.stderr)
        return 2


def _print_config(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    print(dump_config(load_config(args.config, overrides)), end="")
    return 0


def _train(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    config = load_config(args.config, overrides)
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    try:
        from sana.train.loop import train
    except ImportError as err:
        raise RuntimeError(f"training needs the train extra: pip install './packages/sana[train]' ({err})") from None
    run = train(config)
    print(f"trained to step {run.state.step}; checkpoints in {Path(config.work_dir) / 'checkpoints'}")
    return 0


def _encode_latents(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from sana.features import encode_latents

    cache = encode_latents(load_config(args.config, overrides), args.output, batch_size=args.bs)
    print(f"feature cache: {cache.root} ({len(cache.sample_keys())} samples)")
    return 0


def _eval(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from sana.eval import (
        eval_prompts,
        evaluate,
        evaluate_ground_truth,
        heldout_images,
        reconstruction_scores,
        sample_grid,
        text_gain,
    )
    from sana.images import save_png

    if args.ae_images < 0:  # checked before minutes of generation, not after
        raise ValueError(f"--ae_images must be >= 0 (0 skips the autoencoder's check), got {args.ae_images}")
    pipe = load_pipeline(load_config(args.config, overrides), _model_path(args), overrides, device=args.device,
                         dtype=DTYPES.get(args.dtype))  # fmt: skip
    size, shown = args.size, []

    def generate(texts: list[str], seed: int) -> list[Any]:
        return pipe(texts, height=size, width=size, num_inference_steps=args.steps, guidance_scale=args.cfg_scale,
                    pag_guidance_scale=args.pag_scale, seed=seed, output_type="pil", progress=False)  # fmt: skip

    report = evaluate(generate, eval_prompts(args.num_prompts, seed=args.seed), batch_size=args.bs,
                      on_image=lambda prompt, image: shown.append(image) if len(shown) < 64 else None)  # fmt: skip
    ae = pipe.autoencoder
    autoencode = lambda x: ae.decode(ae.encode(x.to(pipe.device)))  # noqa: E731
    recon = reconstruction_scores(autoencode, heldout_images(args.ae_images)) if args.ae_images else None
    # the same prompts' own scenes through the autoencoder: what drawing each scene exactly would score with it
    ceiling = evaluate_ground_truth(args.num_prompts, seed=args.seed, autoencode=autoencode) if recon else None
    reliance = text_gain(pipe.denoiser, ae, pipe.text_encoder, n=TEXT_GAIN_IMAGES, seed=args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    result = {**report.to_dict(records=True), "autoencoder": recon,
              "autoencoder_ceiling": ceiling.to_dict(records=False) if ceiling else None, "transformer": reliance,
              "settings": vars(args) | {"run": None}}  # fmt: skip
    write_text_atomic(out / "report.json", json.dumps(result, indent=2, default=str) + "\n")
    ae_line = (f"Autoencoder PSNR {recon['psnr']:.2f} dB, SSIM {recon['ssim']:.4f} on {args.ae_images} held-out "
               f"images; the detector finds the original's objects in {recon['detector_agreement']:.1%} of the "
               "reconstructions. Autoencoder ceiling: these prompts' own scenes through it, scored the same way "
               "(what a transformer that drew each prompt's held-out scene exactly would score; larger or cleaner "
               "objects than the world's can score above it):\n\n" + ceiling.to_markdown()
               if recon and ceiling else "Autoencoder not checked (--ae_images 0)")  # fmt: skip
    gain_line = (f"Text gain {reliance['text_gain']:.3f} on {TEXT_GAIN_IMAGES} held-out images: the transformer's "
                 "loss with the null caption over its loss with their own (1.0: it ignores the prompt)")  # fmt: skip
    write_text_atomic(out / "report.md", report.to_markdown() + f"\n\n{ae_line}\n\n{gain_line}\n")
    save_png(sample_grid(shown, columns=8), out / "grid.png")
    print(report.to_markdown())
    print(ae_line)
    print(gain_line)
    print(f"report: {out / 'report.json'}")
    return 0


def _convert(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from sana.config import dit_config
    from sana.convert import convert

    graph = dit_config(load_config(args.config, overrides)) if args.config else None
    dst = convert(args.src, args.dst, args.to, config=graph, dtype=DTYPES.get(args.dtype), overwrite=args.overwrite)
    print(f"wrote {dst}")
    return 0


def _generate(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from sana.batch import PromptItem, read_json_prompts, read_txt_prompts, run_batch

    config = load_config(args.config, overrides)
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    if args.txt_file or args.json_file:
        if args.prompt:
            raise ValueError("give prompts either as arguments or with --txt_file/--json_file, not both")
        items = read_txt_prompts(args.txt_file) if args.txt_file else read_json_prompts(args.json_file)
    elif args.prompt:
        items = [PromptItem(f"{i:05d}", p) for i, p in enumerate(args.prompt)]
    else:
        raise ValueError("no prompt: pass one as an argument, or --txt_file / --json_file")
    items = items[: args.sample_nums] if args.sample_nums else items
    pipe = load_pipeline(config, _model_path(args), overrides, device=args.device, dtype=DTYPES.get(args.dtype))
    size = pipe.config.model.image_size
    settings = {
        "height": args.height or size, "width": args.width or size,
        "num_inference_steps": None if args.steps == -1 else args.steps, "guidance_scale": args.cfg_scale,
        "pag_guidance_scale": args.pag_scale, "negative_prompt": args.negative_prompt,
        "sampler": SAMPLER_ALIASES[args.sampler] if args.sampler else None,
        "use_resolution_binning": not args.no_binning, "interval_guidance": tuple(args.interval_guidance),
    }  # fmt: skip
    manifest = run_batch(
        pipe, items, args.output, settings=settings, images_per_prompt=args.images_per_prompt,
        batch_size=args.bs, seed=args.seed, on_image=lambda job, path: print(path),
    )  # fmt: skip
    print(f"manifest: {manifest}")
    return 0


def _model_path(args: argparse.Namespace) -> str | None:
    """`--model_path`, else the embedded default model when no `--config` names the parts either."""
    if args.model_path or args.config:
        return args.model_path
    from sana.embedded import default_model_path

    return str(default_model_path())


def _train_embedded(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    if overrides:
        raise ValueError(f"train-embedded takes no config overrides, got {sorted(overrides)}")
    try:
        from sana.embedded import QUICK, RecipeSettings, recipe_settings, slow_cpu_note, train_embedded
    except ImportError as err:
        raise RuntimeError(f"training needs the train extra: pip install './packages/sana[train]' ({err})") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = recipe_settings(QUICK if args.quick else RecipeSettings(), args.settings)
    if not args.quick and (note := slow_cpu_note(args.work_dir, settings)):
        print(note, flush=True)
    record = train_embedded(args.work_dir, settings, export_to=args.out, redo_from=args.redo_from)
    model = Path(args.out) if args.out else Path(args.work_dir) / "model"
    train = sum(v for k, v in record["seconds"].items() if k != "eval")
    print(f"model: {model} (training stages {train / 60:.1f} min; record: {Path(args.work_dir) / 'recipe.json'})")
    return 0


def load_pipeline(config: Any, model_path: str | None, overrides: dict[str, Any], *, device: str, dtype: Any) -> Any:
    """A whole pipeline folder/repo, or the config's parts plus a transformer checkpoint."""
    from sana.hub import checkpoint_format, resolve
    from sana.pipeline import SanaPipeline

    if model_path is None:
        raise ValueError(
            "no model: pass --model_path (a transformer checkpoint with --config, or a pipeline folder; without "
            "--config the embedded default model is used)"
        )
    location = resolve(model_path)
    if location.is_dir() and checkpoint_format(location) in ("diffusers_pipeline", "sana_pipeline"):
        return SanaPipeline.from_pretrained(location, device=device, dtype=dtype, overrides=overrides)
    return SanaPipeline(config, device=device, dtype=dtype).from_pretrained(location)


if __name__ == "__main__":
    raise SystemExit(main())
