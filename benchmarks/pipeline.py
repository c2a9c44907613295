"""End-to-end text-to-image on CPU: `sana.SanaPipeline` (fp32, bf16) against diffusers' `SanaPipeline` (fp32).

One 512² image, batch 1, 20 Flow-DPM-Solver steps, CFG 4.5, PAG off, CHI on, random weights:
- the Sana-0.6B transformer (`linear_dit.PRESETS["sana-600m"]`), the DC-AE f32c32 autoencoder
  (`dcae.PRESETS["dc-ae-f32c32-sana-1.0"]`) and a small Gemma-2-shaped text encoder (width 2304 = the
  transformer's caption width, 2 layers, 8 heads / 4 kv heads of 256, MLP 9216, a few thousand tokens of vocab,
  `sana_text.testing.tiny_tokenizer`);
- written once as a diffusers-format pipeline folder in a temporary directory, so both sides load the same weights.

Each variant runs in its own subprocess (peak RSS is per variant), with `--threads` threads; a warm-up call at
256², 2 steps is excluded, then the best of `--repeats` timed calls is kept. Ours reports the text / denoise /
decode split through `pipe.timings`; diffusers' split is timed by wrapping `encode_prompt` and `vae.decode`
(denoise = from the end of the text encoding to the start of the decode). All variants start from the same
initial latents and ours uses `uncond_mask="own"` (diffusers' null-embedding mask), so the fp32 images are
compared: they differ slightly by design (diffusers feeds the transformer integer timesteps).

Writes docs/benchmarks/pipeline.{json,md} and prints the table (a `--quick` smoke run writes nothing).

    python benchmarks/pipeline.py                      # or: nox -s benchmarks -- benchmarks/pipeline.py
    python benchmarks/pipeline.py --bf16-steps 4       # bf16 denoise timed on 4 steps, extrapolated to --steps
    python benchmarks/pipeline.py --bf16-steps 2 --diffusers-steps 4   # the recorded run (a loaded machine)
    python benchmarks/pipeline.py --quick              # 256², 4 steps, bf16 on 2 steps; nothing written
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _rss import peak_rss_gib

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
PROMPT = "a cat sleeping on a warm sunny windowsill surrounded by pots of blooming red flowers"  # lowercase: diffusers
# lowercases prompts, native Sana (ours) keeps case
DIT_PRESET, AE_PRESET = "sana-600m", "dc-ae-f32c32-sana-1.0"
TEXT_LAYERS, TEXT_HEADS, TEXT_KV_HEADS, TEXT_HEAD_DIM, TEXT_MLP = 2, 8, 4, 256, 9216
TOKENIZER_VOCAB = 4096  # asked of the BPE trainer; the tiny corpus may yield fewer, len(tokenizer) is used
FLOW_SHIFT, CFG = 3.0, 4.5
WARMUP_SIZE, WARMUP_STEPS = 64, 2  # the smallest image (2x2 latents): sets kernels up, costs little
VARIANTS = ("ours-fp32", "diffusers-fp32", "ours-bf16")  # bf16 last: by far the slowest here
DTYPES = {"ours-fp32": torch.float32, "ours-bf16": torch.bfloat16}


# --- the shared pipeline folder ----------------------------------------------------------------------------------


def _text_encoder(vocab_size: int, seed: int):
    from transformers import Gemma2Config, Gemma2Model

    from linear_dit import PRESETS

    config = Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=PRESETS[DIT_PRESET].caption_channels,  # 2304, as gemma-2-2b
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=TEXT_HEADS,
        num_key_value_heads=TEXT_KV_HEADS,
        head_dim=TEXT_HEAD_DIM,
        intermediate_size=TEXT_MLP,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(seed)
    return Gemma2Model(config).eval()


def build_folder(folder: Path, seed: int = 0) -> dict:
    """Write the diffusers-format pipeline folder (same pattern as `build_tiny_diffusers_pipeline` in the tests)."""
    import gc

    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    from dcae import PRESETS as AE_PRESETS
    from dcae import save_dcae
    from dcae.testing import random_model
    from linear_dit import PRESETS, LinearDiT, save_linear_dit
    from linear_dit.testing import randomize_
    from sana_text.testing import tiny_tokenizer

    parts = folder.parent / f".{folder.name}-parts"
    with torch.device("meta"):  # no default init: randomize_ fills every parameter
        dit = LinearDiT(PRESETS[DIT_PRESET])
    dit = randomize_(dit.to_empty(device="cpu"), seed=seed).eval()
    dit_params = sum(p.numel() for p in dit.parameters())
    save_linear_dit(dit, parts / "transformer", fmt="diffusers")
    del dit
    gc.collect()
    transformer = SanaTransformer2DModel.from_pretrained(parts / "transformer")
    ae = random_model(AE_PRESETS[AE_PRESET], seed=seed)
    save_dcae(ae, parts / "vae", fmt="diffusers")
    ae_params = sum(p.numel() for p in ae.parameters())
    del ae
    vae = AutoencoderDC.from_pretrained(parts / "vae")
    tokenizer = tiny_tokenizer(vocab_size=TOKENIZER_VOCAB)
    text_encoder = _text_encoder(len(tokenizer), seed)
    scheduler = DPMSolverMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=FLOW_SHIFT
    )
    pipe = SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.save_pretrained(folder)
    return {
        "transformer_params": dit_params,
        "vae_params": ae_params,
        "text_encoder_params": sum(p.numel() for p in text_encoder.parameters()),
        "tokenizer_vocab": len(tokenizer),
    }


# --- one variant per process -------------------------------------------------------------------------------------


def _ours(folder: Path, dtype: torch.dtype):
    from sana import SanaPipeline

    pipe = SanaPipeline.from_pretrained(folder, dtype=dtype)

    def call(size: int, steps: int, latents: torch.Tensor | None, latent_only: bool = False) -> tuple:
        images = pipe(
            PROMPT, height=size, width=size, num_inference_steps=steps, guidance_scale=CFG, pag_guidance_scale=1.0,
            seed=0, latents=latents, use_resolution_binning=False, uncond_mask="own", progress=False,
            output_type="latent" if latent_only else "pt",
        )  # fmt: skip
        return images * 0.5 + 0.5, dict(pipe.timings)  # [-1, 1] -> diffusers' [0, 1]

    return call, pipe


def _diffusers(folder: Path):
    from diffusers import SanaPipeline

    from sana_text import COMPLEX_HUMAN_INSTRUCTION_LINES

    pipe = SanaPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    marks: dict[str, float] = {}
    encode, decode = pipe.encode_prompt, pipe.vae.decode

    def timed_encode(*args, **kwargs):
        marks["text_start"] = time.perf_counter()
        out = encode(*args, **kwargs)
        marks["text_end"] = time.perf_counter()
        return out

    def timed_decode(*args, **kwargs):
        marks["decode_start"] = time.perf_counter()
        out = decode(*args, **kwargs)
        marks["decode_end"] = time.perf_counter()
        return out

    pipe.encode_prompt, pipe.vae.decode = timed_encode, timed_decode

    def call(size: int, steps: int, latents: torch.Tensor | None, latent_only: bool = False) -> tuple:
        images = pipe(
            prompt=PROMPT, height=size, width=size, num_inference_steps=steps, guidance_scale=CFG,
            generator=torch.Generator().manual_seed(0), latents=None if latents is None else latents.clone(),
            output_type="pt", use_resolution_binning=False, clean_caption=False,
            complex_human_instruction=list(COMPLEX_HUMAN_INSTRUCTION_LINES),
        ).images  # fmt: skip
        split = {
            "text": marks["text_end"] - marks["text_start"],
            "denoise": marks["decode_start"] - marks["text_end"],
            "decode": marks["decode_end"] - marks["decode_start"],
        }
        return images, split

    return call, pipe


def _decode_extrapolated(pipe, row: dict, size: int, decode_size: int) -> dict:
    """Time `pipe.decode` on a `decode_size`² image and scale it by pixels to `size`² (the decoder's convolutions
    and linear attention cost the same per pixel); the total becomes text + denoise + that decode."""
    latents = torch.randn(1, pipe.autoencoder.latent_channels, decode_size // 32, decode_size // 32)
    start = time.perf_counter()
    pipe.decode(latents.to(pipe.dtype))  # the autoencoder's compute dtype, as the pipeline hands it latents
    measured = time.perf_counter() - start
    decode = measured * (size / decode_size) ** 2
    return {
        **row,
        "decode_extrapolated": True,
        "decode_measured_size": decode_size,
        "decode_measured_s": round(measured, 3),
        "decode_s": round(decode, 3),
        "total_s": round(row["total_s"] + decode, 3),
    }


def run_variant(variant: str, folder: Path, size: int, steps: int, repeats: int, decode_size: int = 0) -> dict:
    """Warm up once (small, excluded), then `repeats` timed calls; keeps the fastest. Saves the image.

    decode_size > 0: the calls stop at the latents and the decode is timed at that size (`_decode_extrapolated`).
    """
    start = time.perf_counter()
    call, pipe = _diffusers(folder) if variant == "diffusers-fp32" else _ours(folder, DTYPES[variant])
    load_s = time.perf_counter() - start
    latents, latent_only = torch.load(folder.parent / "latents.pt"), decode_size > 0
    with torch.no_grad():
        call(WARMUP_SIZE, WARMUP_STEPS, None, latent_only)
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            images, split = call(size, steps, latents, latent_only)
            runs.append({"total": time.perf_counter() - start, **split})
        best = min(runs, key=lambda r: r["total"])
        row = {
            "variant": variant,
            "steps_timed": steps,
            "load_s": round(load_s, 2),
            "runs_total_s": [round(r["total"], 2) for r in runs],
            **{f"{k}_s": round(v, 3) for k, v in best.items()},
        }
        if latent_only:
            row = _decode_extrapolated(pipe, row, size, decode_size)
        else:
            torch.save(images.float(), folder.parent / f"image-{variant}.pt")
    row["peak_rss_gib"] = round(peak_rss_gib(), 2)
    return row


# --- parent: environment, children, table -----------------------------------------------------------------------


def _environment(threads: int) -> dict:
    import diffusers
    import transformers

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {
        "cpu": fields.get("Model name", platform.processor()).strip(),
        "cpus": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": threads,
    }


def _child(args: argparse.Namespace, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(args.threads), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(extra)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _extrapolate(row: dict, steps: int) -> dict:
    """A row timed on fewer steps: the denoise time scales per step (one model call per multistep solver step)."""
    timed = row["steps_timed"]
    if timed == steps:
        return row
    per_step = row["denoise_s"] / timed
    denoise = per_step * steps
    return {
        **row,
        "extrapolated": True,
        "denoise_measured_s": row["denoise_s"],
        "denoise_s_per_step": round(per_step, 3),
        "denoise_s": round(denoise, 3),
        "total_at_timed_steps_s": row["total_s"],
        "total_s": round(row["total_s"] - row["denoise_s"] + denoise, 3),
    }


def _compare(folder: Path, rows: list[dict], steps: int) -> dict:
    saved = [r for r in rows if not r.get("decode_extrapolated")]
    images = {r["variant"]: torch.load(folder.parent / f"image-{r['variant']}.pt") for r in saved}
    full = {r["variant"] for r in saved if r["steps_timed"] == steps}  # only images made with all the steps compare
    ref = images.get("diffusers-fp32") if "diffusers-fp32" in full else None
    out = {}
    for name, image in images.items():
        if ref is not None and name != "diffusers-fp32" and name in full:
            out[name] = float(f"{(image - ref).abs().max().item():.3g}")
    return out


def _markdown(report: dict) -> str:
    ref = next((r for r in report["runs"] if r["variant"] == "diffusers-fp32"), None)
    lines = [
        "| variant | total (s) | text (s) | denoise (s) | decode (s) | peak RSS (GiB) | ratio vs diffusers fp32 "
        "| max abs pixel diff vs diffusers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["runs"]:
        ratio = f"{r['total_s'] / ref['total_s']:.2f}×" if ref else "-"
        mark = " *" if r.get("extrapolated") else ""
        decode_mark = " †" if r.get("decode_extrapolated") else ""
        total_mark = " *" if mark or decode_mark else ""
        diff = report["max_abs_pixel_diff_vs_diffusers"].get(r["variant"], "-")
        lines.append(
            f"| {r['variant']} | {r['total_s']:.1f}{total_mark} | {r['text_s']:.2f} | {r['denoise_s']:.1f}{mark} "
            f"| {r['decode_s']:.1f}{decode_mark} | {r['peak_rss_gib']:.2f} | {ratio}{total_mark} | {diff} |"
        )
    env, setup = report["environment"], report["setup"]
    lines += [
        "",
        f"{setup['size']}², batch 1, {setup['steps']} steps, CFG {CFG}, PAG off, CHI on; best of "
        f"{setup['repeats']} after a warm-up. {env['cpu']}, {env['cpus']} CPUs ({env['cpu_capability']}, "
        f"AVX512-BF16: {'yes' if env['avx512_bf16'] else 'no'}), {env['threads']} threads, torch {env['torch']}, "
        f"diffusers {env['diffusers']}. Load average before the runs: {report['loadavg_before']}.",
        "",
        "`python benchmarks/pipeline.py` (or `nox -s benchmarks -- benchmarks/pipeline.py`): Sana-0.6B transformer, "
        "DC-AE f32c32 and a 2-layer Gemma-2-shaped encoder, random weights, one diffusers-format folder loaded by "
        "both pipelines; each variant in its own process (peak RSS includes loading). Ours runs with "
        '`uncond_mask="own"` from diffusers\' initial latents; the last column is the max abs difference on [0, 1] '
        "pixels (nonzero by design: diffusers' DPM scheduler feeds the transformer integer timesteps). The 2 cores "
        "were shared with other jobs: times are noisy upper bounds, and a ratio holds only if the load stayed steady.",
    ]
    extrapolated = [r for r in report["runs"] if r.get("extrapolated")]
    for r in extrapolated:
        lines.append(
            f"\\* {r['variant']}: denoise timed on {r['steps_timed']} steps ({r['denoise_measured_s']:.1f} s, "
            f"{r['denoise_s_per_step']:.2f} s/step) and extrapolated to {setup['steps']}; the timed call took "
            f"{min(r['runs_total_s']):.1f} s{' (latents only)' if r.get('decode_extrapolated') else ''}."
        )
    loads = ", ".join(f"{r['variant']} {r['loadavg_after'][0]}" for r in report["runs"] if "loadavg_after" in r)
    lines.append(f"Command: `{report.get('command', '')}`. 1-minute load average after each variant: {loads}.")
    if report.get("notes"):
        lines.append(report["notes"])
    for r in report["runs"]:
        if r.get("decode_extrapolated"):
            lines.append(
                f"† {r['variant']}: decode timed on one {r['decode_measured_size']}² image "
                f"({r['decode_measured_s']:.1f} s, first call) and scaled by pixel count to {setup['size']}²."
            )
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 256², 4 steps, bf16 on 2; writes nothing")
    parser.add_argument("--size", type=int, help="image side in pixels, a multiple of 32 (default 512)")
    parser.add_argument("--steps", type=int, help="solver steps (default 20)")
    parser.add_argument("--bf16-steps", type=int, help="time bf16 on fewer steps and extrapolate the denoise")
    parser.add_argument("--diffusers-steps", type=int, help="same for diffusers (no image comparison then)")
    parser.add_argument(
        "--bf16-decode-size", type=int,
        help="bf16 decode timed at this size and scaled by pixels (0: decode the full image; hours on AVX2). "
        "Default: 0 on CPUs with native bf16 (AVX512-BF16/AMX), 64 elsewhere",
    )  # fmt: skip
    parser.add_argument("--skip-bf16", action="store_true")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per variant (the best is kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=("build", *VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--decode-size", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    quick = {"size": 256, "steps": 4, "bf16_steps": 2} if args.quick else {"size": 512, "steps": 20}
    for name, value in quick.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("size", "steps", "repeats", "threads", "bf16_steps", "diffusers_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.bf16_decode_size is None:
        args.bf16_decode_size = 0 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 64
    if args.size % 32 or args.bf16_decode_size % 32 or args.bf16_decode_size < 0:
        parser.error(f"--size and --bf16-decode-size must be multiples of 32, got {args.size}, {args.bf16_decode_size}")
    return args


def _run_all(args: argparse.Namespace, folder: Path) -> dict:
    report = {
        "environment": _environment(args.threads),
        "loadavg_before": [round(x, 1) for x in os.getloadavg()],
        "command": " ".join(["python", "benchmarks/pipeline.py", *sys.argv[1:]]),
        "setup": {"size": args.size, "steps": args.steps, "repeats": args.repeats, "prompt": PROMPT,
                  "warmup": f"{WARMUP_SIZE}², {WARMUP_STEPS} steps", "transformer": DIT_PRESET, "vae": AE_PRESET},
    }  # fmt: skip
    start = time.perf_counter()
    report["setup"].update(_child(args, "--child", "build", "--folder", str(folder)))
    report["build_s"] = round(time.perf_counter() - start, 1)
    latent = (1, 32, args.size // 32, args.size // 32)
    torch.save(torch.randn(latent, generator=torch.Generator().manual_seed(0)), folder.parent / "latents.pt")
    rows = []
    for variant in VARIANTS:
        if variant == "ours-bf16" and args.skip_bf16:
            continue
        fewer = {"ours-bf16": args.bf16_steps, "diffusers-fp32": args.diffusers_steps}.get(variant)
        steps = min(fewer or args.steps, args.steps)
        common = ["--folder", str(folder), "--size", str(args.size), "--repeats", str(args.repeats)]
        if variant == "ours-bf16":
            common += ["--decode-size", str(args.bf16_decode_size)]
        row = _child(args, "--child", variant, *common, "--steps", str(steps))
        row["loadavg_after"] = [round(x, 1) for x in os.getloadavg()]
        print(json.dumps(row), flush=True)
        rows.append(row)
    report["max_abs_pixel_diff_vs_diffusers"] = _compare(folder, rows, args.steps)
    report["runs"] = [_extrapolate(r, args.steps) for r in rows]
    report["wall_s"] = round(time.perf_counter() - start, 1)
    return report


def main() -> None:
    args = _parse()
    torch.set_num_threads(args.threads)
    if args.child == "build":
        print(json.dumps(build_folder(args.folder)), flush=True)
        return
    if args.child:
        row = run_variant(args.child, args.folder, args.size, args.steps, args.repeats, args.decode_size)
        print(json.dumps(row), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="sana-pipeline-bench-") as tmp:
        report = _run_all(args, Path(tmp) / "pipeline")
    table = _markdown(report)
    print(table)
    if args.quick:
        return  # smoke runs are not recorded
    OUT.mkdir(parents=True, exist_ok=True)
    _write_atomic(OUT / "pipeline.json", json.dumps(report, indent=2) + "\n")
    _write_atomic(OUT / "pipeline.md", table)


if __name__ == "__main__":
    main()
