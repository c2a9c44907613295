"""`sana-data`: prepare datasets from the command line.

    sana-data shapes OUT -n 1000 --seed 0 [--format shards]   # the synthetic shapes world
    sana-data meta DIR                                         # write meta_data.json for an image + txt folder
    sana-data to-shards DIR... --out SHARDS                    # folder(s) -> WebDataset shards + wids-meta.json
    sana-data index SHARDS                                     # (re)write wids-meta.json for existing shards
    sana-data check PATH... [--table 512]                      # decode everything, report what would be skipped
    sana-data caption PATH... --model VLM_DIR [--prompt ...]   # VLM caption sidecars (resumable)
    sana-data clipscore PATH... --model CLIP_DIR               # clip-score sidecars (resumable)

Feature caching needs an autoencoder and a text encoder, which this package does not import: use
`sana encode-latents` from the umbrella package, or `sana_data.build_feature_cache` with your own encoders.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .buckets import get_table
from .dataset import source_buckets
from .folder import write_folder, write_meta_data
from .records import ImageTextSource, NoUsableSampleError
from .shapes import MAX_OBJECT_SCALE, ShapesSource, check_object_scale
from .shards import write_shards, write_wids_index
from .sources import open_source


def _sizes(text: str) -> list[tuple[int, int]]:
    """ "256x256,192x320" -> [(256, 256), (192, 320)] as (H, W)."""
    try:
        return [(int(h), int(w)) for h, w in (item.lower().split("x") for item in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must look like 256x256,192x320 (HxW), got {text!r}") from None


def _object_scale(text: str) -> float:
    try:
        value = float(text)
        check_object_scale(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--object-scale must be a number in (0, {MAX_OBJECT_SCALE}], got {text!r}"
        ) from None
    return value


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", type=Path, help="image+txt folders, or shard folders / .tar / wids index")
    p.add_argument("--caption-suffix", action="append", default=[], help="caption sidecar suffix (repeatable)")
    p.add_argument("--clipscore-suffix", action="append", default=[], help="clip-score sidecar suffix (repeatable)")


def _source(args: argparse.Namespace) -> ImageTextSource:
    return open_source(args.paths, caption_suffixes=args.caption_suffix, clipscore_suffixes=args.clipscore_suffix)


def _cmd_shapes(args: argparse.Namespace) -> int:
    source = ShapesSource(
        args.n, seed=args.seed, start=args.start, sizes=args.sizes, split=args.split, object_scale=args.object_scale
    )
    if args.format == "shards":
        write_shards(source, args.out, samples_per_shard=args.samples_per_shard, name="shapes")
    else:
        write_folder(source, args.out)
    print(f"wrote {args.n} shapes-world samples (seed {args.seed}, split {args.split}) to {args.out}")
    return 0


def _cmd_meta(args: argparse.Namespace) -> int:
    print(f"wrote {write_meta_data(args.dir)}")
    return 0


def _cmd_to_shards(args: argparse.Namespace) -> int:
    source = _source(args)
    shards = write_shards(source, args.out, samples_per_shard=args.samples_per_shard, name=args.name)
    print(f"wrote {len(shards)} shards and {args.out / 'wids-meta.json'}; {source.report.summary()}")
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    print(f"wrote {write_wids_index(args.dir)}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    source = _source(args)
    usable = 0
    for i in range(len(source)):
        try:
            source.load(i)
            usable += 1
        except (OSError, ValueError, SyntaxError) as exc:
            source.report.skip("corrupt image", source.info(i).key, repr(exc))
    table = get_table(args.table)
    histogram = Counter(source_buckets(source, table))
    print(f"{usable} usable samples; {source.report.summary()}")
    print("buckets (ratio H/W: count): " + ", ".join(f"{k}: {histogram[k]}" for k in table if histogram[k]))
    return 0 if usable else 1


def _cmd_caption(args: argparse.Namespace) -> int:
    from .vlm import Captioner, write_captions

    captioner = Captioner(args.model, prompt=args.prompt, max_new_tokens=args.max_new_tokens, device=args.device)
    n = write_captions(_source(args), captioner, suffix=args.suffix, caption_type=args.type, batch_size=args.batch_size)
    print(f"captioned {n} samples into *{args.suffix}.json")
    return 0


def _cmd_clipscore(args: argparse.Namespace) -> int:
    from .vlm import ClipScorer, write_clip_scores

    n = write_clip_scores(_source(args), ClipScorer(args.model, device=args.device), suffix=args.suffix,
                          batch_size=args.batch_size)  # fmt: skip
    print(f"scored {n} samples into *{args.suffix}.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sana-data", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("shapes", help="write N samples of the synthetic shapes world")
    p.add_argument("out", type=Path)
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="first scene index (to extend a dataset)")
    p.add_argument("--sizes", type=_sizes, default=[(256, 256), (192, 320), (320, 192)], help="HxW list")
    p.add_argument("--split", choices=["train", "heldout", "any"], default="train")
    p.add_argument("--object-scale", type=_object_scale, default=1.0,
                   help="factor on every object's size (1: the evaluator's world; up to 2.5)")  # fmt: skip
    p.add_argument("--format", choices=["folder", "shards"], default="folder")
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.set_defaults(fn=_cmd_shapes)

    p = sub.add_parser("meta", help="write meta_data.json for an image + txt folder")
    p.add_argument("dir", type=Path)
    p.set_defaults(fn=_cmd_meta)

    p = sub.add_parser("to-shards", help="convert datasets to WebDataset shards + wids-meta.json")
    _add_source_args(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--name", default="shard")
    p.set_defaults(fn=_cmd_to_shards)

    p = sub.add_parser("index", help="write wids-meta.json for the .tar shards of a folder")
    p.add_argument("dir", type=Path)
    p.set_defaults(fn=_cmd_index)

    p = sub.add_parser("check", help="decode every sample and report what would be skipped")
    _add_source_args(p)
    p.add_argument("--table", default="512", help="bucket table for the histogram")
    p.set_defaults(fn=_cmd_check)

    for name, helptext in (("caption", "write VLM caption sidecars"), ("clipscore", "write clip-score sidecars")):
        p = sub.add_parser(name, help=helptext)
        _add_source_args(p)
        p.add_argument("--model", type=Path, required=True, help="local Hugging Face model folder")
        p.add_argument("--batch-size", type=int, default=4)
        p.add_argument("--device", default="cpu")
        if name == "caption":
            p.add_argument("--suffix", default="_vlm", help="sidecar suffix: <name><suffix>.json")
            p.add_argument("--type", default=None, help="caption type (default: the suffix without '_')")
            p.add_argument("--prompt", default=None, help="instruction for chat VLMs")
            p.add_argument("--max-new-tokens", type=int, default=77)
            p.set_defaults(fn=_cmd_caption)
        else:
            p.add_argument("--suffix", default="_clip_score", help="sidecar suffix: <name><suffix>.json")
            p.set_defaults(fn=_cmd_clipscore)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (NoUsableSampleError, FileNotFoundError, ImportError) as exc:
        print(f"sana-data {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
