"""How much of a word the embedded model's tiny text encoder keeps: prompts-only vs caption-chain pretraining.

The embedded recipe's text encoder (4-layer, width-128 Gemma-2) is pretrained as a causal LM on the shapes world's
captions. Trained on the prompts alone ("a green diamond"), nothing after the shape word depends on it, so its
hidden states barely keep it, and the transformer conditioned on them cannot tell the shapes apart. Trained on
each prompt followed by the image's tags and long caption ("a green diamond. green diamond, 1 object, ..."), the
words are named again later, so the states must carry them (`RecipeSettings.lm_caption_chain`).

This script trains both encoders in the same run, with the recipe's own text-encoder stage (same data, steps and
seed; only `lm_caption_chain` differs), and measures, on "a {colour} {shape}" for all 30 pairs, the spread of the
features between words at the word's own token (the standard deviation over the 6 colours, or the 5 shapes, of
the mean feature, relative to the feature RMS there), for every hidden state the recipe can use (`skip_layers`).

    python benchmarks/embedded_text_features.py                 # ~3 min on 2 cores
    python benchmarks/embedded_text_features.py --encoders A B  # measure existing LM or pipeline folders instead

Prints the table and writes docs/benchmarks/embedded_text_features.json (the default run only).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "embedded_text_features.json"


def _load(folder: Path) -> tuple[torch.nn.Module, object]:
    """An LM folder (the recipe's `text_encoder/`) or a pipeline folder (`text_encoder/` + `tokenizer/`)."""
    from transformers import AutoModel, AutoTokenizer

    model_dir = folder / "text_encoder" if (folder / "text_encoder" / "config.json").is_file() else folder
    tokenizer_dir = folder / "tokenizer" if (folder / "tokenizer").is_dir() else model_dir
    return AutoModel.from_pretrained(model_dir, dtype=torch.float32), AutoTokenizer.from_pretrained(tokenizer_dir)


def spreads(folder: Path) -> list[dict[str, float]]:
    """Per `skip_layers` (0 = the last hidden state): the colour spread at the colour token and the shape spread at
    the shape token, each relative to the feature RMS at that token."""
    from sana_data.shapes import COLORS, SHAPES
    from sana_text import TextEncoder

    model, tokenizer = _load(folder)
    colours, shapes = list(COLORS), list(SHAPES)
    prompts = [f"a {c} {s}" for c in colours for s in shapes]
    # the last token of "a {colour}" and of "a {colour} {shape}" (the tokenizer adds BOS, as the encoder's)
    at_colour = [len(tokenizer(" ".join(p.split()[:2]))["input_ids"]) - 1 for p in prompts]
    at_shape = [len(tokenizer(p)["input_ids"]) - 1 for p in prompts]
    rows = []
    for skip in range(model.config.num_hidden_layers):
        encoder = TextEncoder(model, tokenizer, chi=None, max_length=32, skip_layers=skip)
        out = encoder.encode(prompts).embeddings.float()  # (30, L, D)
        row = {"skip_layers": skip}
        for name, positions, axis in (("colour", at_colour, 1), ("shape", at_shape, 0)):
            feats = out[torch.arange(len(prompts)), torch.tensor(positions)].view(len(colours), len(shapes), -1)
            means = feats.mean(axis)  # (words, D): the word's mean feature over the other slot's words
            row[name] = float(means.std(0, unbiased=False).pow(2).mean().sqrt() / feats.pow(2).mean().sqrt())
        rows.append(row)
    return rows


def _train_both(images: int, lm_steps: int, work: Path) -> dict[str, Path]:
    from sana.embedded import RecipeSettings, _stage_data, _stage_text_encoder

    base = RecipeSettings(images=images, lm_steps=lm_steps)
    _stage_data(work, base, print)
    folders = {}
    for chain in (0, 1):
        run = work / f"chain{chain}"
        run.mkdir()
        (run / "data").symlink_to(work / "data", target_is_directory=True)
        started = time.perf_counter()
        result = _stage_text_encoder(run, RecipeSettings(images=images, lm_steps=lm_steps, lm_caption_chain=chain),
                                     print)  # fmt: skip
        print(f"lm_caption_chain={chain}: {time.perf_counter() - started:.0f} s, held-out perplexity "
              f"{result['heldout_perplexity']:.2f}")  # fmt: skip
        folders[f"lm_caption_chain={chain}"] = run / "text_encoder"
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoders", type=Path, nargs="+", help="measure these folders instead of training two")
    parser.add_argument("--images", type=int, default=6000, help="training images (the recipe's default)")
    parser.add_argument("--lm-steps", type=int, default=600, help="LM pretraining steps (the recipe's default)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {str(f): f for f in args.encoders} if args.encoders else _train_both(args.images, args.lm_steps,
                                                                                          Path(tmp))  # fmt: skip
        results = {name: spreads(folder) for name, folder in folders.items()}
    names = list(results)
    print("\n| hidden state | `skip_layers` | " + " | ".join(f"{n}: colour | {n}: shape" for n in names) + " |")
    print("|---|---:|" + "---:|---:|" * len(names))
    depth = len(results[names[0]])
    for k in range(depth):
        state = "last, after the final norm" if k == 0 else f"after block {depth - k}"
        cells = " | ".join(f"{results[n][k]['colour']:.3f} | {results[n][k]['shape']:.3f}" for n in names)
        print(f"| {state} | {k} | {cells} |")
    if not args.encoders:
        ratio = [results[names[1]][k]["shape"] / results[names[0]][k]["shape"] for k in range(depth)]
        print("\nshape spread, chain / prompts only, by skip_layers:", ", ".join(f"{r:.1f}×" for r in ratio))
        summary = {"images": args.images, "lm_steps": args.lm_steps, "spreads": results, "shape_ratio": ratio}
        OUT.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
