"""The embedded default model end to end on CPU: `sana generate`'s pipeline against diffusers' `SanaPipeline`.

The issue's goal: one 256² image, 20 Flow-DPM-Solver steps, CFG 4.5, in at most 1 s on this CPU, with the time
split. Both sides load the same weights: the shipped folder (`sana.embedded.default_model_path()`) as is for ours,
and converted with `sana convert --to diffusers` for diffusers (CHI off and 32 text tokens on both, as the model
was trained). Each side is warmed up once, then the best and the median of `--repeats` calls are kept; ours reports
its text / denoise / decode split through `pipe.timings`, diffusers' is timed by wrapping `encode_prompt` and
`vae.decode`. Both start from the same initial latents, so the images are compared too (they differ slightly by
design: diffusers' DPM scheduler feeds the transformer integer timesteps). The model encodes captions with
`text_encoder.skip_layers` (an earlier hidden state than the last), which diffusers' pipeline has no setting for:
its text encoder's forward is wrapped to return that same hidden state, so both sides compute the same thing.

Writes docs/benchmarks/embedded.{json,md} and prints the table.

    python benchmarks/embedded.py               # or: nox -s benchmarks -- benchmarks/embedded.py
    python benchmarks/embedded.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
PROMPT = "a red circle to the left of a blue square"
SIZE, STEPS, CFG = 256, 20, 4.5


def _ours(folder: Path):
    from sana import SanaPipeline

    pipe = SanaPipeline.from_pretrained(folder)

    def call(latents: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        # PAG off (pag_guidance_scale=1): diffusers' SanaPipeline has none, and the model's folder names a PAG layer
        images = pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=CFG, seed=0,
                      pag_guidance_scale=1.0, latents=latents, use_resolution_binning=False, uncond_mask="own",
                      progress=False)  # fmt: skip
        return images * 0.5 + 0.5, dict(pipe.timings)  # [-1, 1] -> diffusers' [0, 1]

    return call, pipe


def _diffusers(folder: Path, max_length: int, skip_layers: int):
    from diffusers import SanaPipeline

    pipe = SanaPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    if skip_layers:  # encode_prompt reads output [0]: make it the hidden state `skip_layers` blocks before the last
        forward = pipe.text_encoder.forward

        def skipping(*args, **kwargs):
            return (forward(*args, **kwargs, output_hidden_states=True).hidden_states[-1 - skip_layers],)

        pipe.text_encoder.forward = skipping
    marks: dict[str, float] = {}
    encode, decode = pipe.encode_prompt, pipe.vae.decode

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            marks[f"{name}_start"] = time.perf_counter()
            out = fn(*args, **kwargs)
            marks[f"{name}_end"] = time.perf_counter()
            return out

        return wrapper

    pipe.encode_prompt, pipe.vae.decode = timed("text", encode), timed("decode", decode)

    def call(latents: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        images = pipe(prompt=PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=CFG,
                      latents=latents.clone(), output_type="pt", use_resolution_binning=False, clean_caption=False,
                      complex_human_instruction=None, max_sequence_length=max_length).images  # fmt: skip
        return images, {
            "text": marks["text_end"] - marks["text_start"],
            "denoise": marks["decode_start"] - marks["text_end"],
            "decode": marks["decode_end"] - marks["decode_start"],
        }

    return call, pipe


def _time(call, latents: torch.Tensor, repeats: int) -> tuple[dict, torch.Tensor]:
    with torch.no_grad():
        call(latents)  # warm-up, excluded
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            images, split = call(latents)
            runs.append({"total": time.perf_counter() - start, **split})
    best = min(runs, key=lambda r: r["total"])
    row = {f"{k}_s": round(v, 3) for k, v in best.items()}
    row["median_total_s"] = round(statistics.median(r["total"] for r in runs), 3)
    return row, images.float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import diffusers

    from sana.convert import convert
    from sana.embedded import default_model_path

    folder = default_model_path()
    transformer = json.loads((folder / "transformer" / "config.json").read_text())["config"]
    max_length, channels = transformer["text_length"], transformer["in_channels"]
    settings = json.loads((folder / "sana_pipeline.json").read_text()).get("settings") or {}
    skip_layers = int(settings.get("text_encoder.skip_layers", 0))
    latents = torch.randn(1, channels, SIZE // 32, SIZE // 32, generator=torch.Generator().manual_seed(0))
    rows = {}
    call, _ = _ours(folder)
    rows["ours-fp32"], ours = _time(call, latents, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings():  # the skip_layers warning: handled by _diffusers
            warnings.simplefilter("ignore", UserWarning)
            converted = convert(folder, Path(tmp) / "diffusers", "diffusers")
        call, _ = _diffusers(converted, max_length, skip_layers)
        rows["diffusers-fp32"], theirs = _time(call, latents, args.repeats)
    ratio = rows["ours-fp32"]["total_s"] / rows["diffusers-fp32"]["total_s"]
    report = {
        "what": f"embedded default model, {SIZE}² image, {STEPS} Flow-DPM-Solver steps, CFG {CFG}, batch 1, fp32",
        "goal_s": 1.0,
        "runs": rows,
        "ratio_ours_vs_diffusers": round(ratio, 3),
        "max_abs_pixel_diff": float(f"{(ours - theirs).abs().max().item():.3g}"),
        "environment": {
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "command": "python benchmarks/embedded.py" + (f" --threads {args.threads}" if args.threads else ""),
    }
    lines = [
        f"{report['what']}; {args.threads} threads, best of {args.repeats} after a warm-up.",
        "",
        "| variant | total (s) | median total (s) | text (s) | denoise (s) | decode (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['total_s']:.3f} | {r['median_total_s']:.3f} | {r['text_s']:.3f} | "
                     f"{r['denoise_s']:.3f} | {r['decode_s']:.3f} |")  # fmt: skip
    lines += ["", f"Ours / diffusers: **{ratio:.2f}×**; goal ≤ 1 s: "
              f"{'met' if rows['ours-fp32']['total_s'] <= 1.0 else 'not met'}; max |pixel difference| "
              f"{report['max_abs_pixel_diff']} (on [0, 1])."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "embedded.json").write_text(json.dumps(report, indent=2) + "\n")
    (OUT / "embedded.md").write_text(text)


if __name__ == "__main__":
    main()
