"""DC-AE benchmarks on the CPU: ours vs diffusers' AutoencoderDC, and tiled-decode peak memory at 2K/4K.

    python benchmarks/dcae_benchmark.py                                          # ~15 min, 2 threads
    python benchmarks/dcae_benchmark.py --skip-speed --sizes 4096 --max-tiles 0    # one complete 4K decode

Speed: the dc-ae-f32c32-sana graph with random weights (speed does not depend on the values), encode and decode
of one 512² image, ours and diffusers in the same process, timed alternately, best of `--repeats`. bf16 is timed
only on CPUs with native bf16 (AVX512-BF16/AMX; elsewhere oneDNN's bf16 convolutions fall back to reference kernels,
~240× slower), with its relative L2 error against our fp32 output.

Memory: each size runs in a fresh child process that holds the whole autoencoder and decodes a (1, 32, S/32, S/32)
latent with `decode_tiled` and the automatic tile size; the peak is the child's own high-water RSS (`VmHWM`;
`ru_maxrss` would include the parent's, see `_rss.py`). `--weights memory` (default) builds random weights in
memory, all 1.25 GB resident: an upper bound. `--weights file` saves them once and has the child load them with
`load_dcae`, as `dcae decode` does; the safetensors file is memory-mapped, so the encoder's weights are never read.
`--max-tiles N` stops after N tiles: every tile has the same shape and the output accumulators are allocated before
the first tile, so the peak is nearly reached (a complete 4096² decode peaked 4% higher), and the full time is
projected from the per-tile time (default 2; 0 runs every tile). Results go to docs/benchmarks/dcae.{json,md}; what
a run does not re-measure (the speed table under `--skip-speed`, other sizes) is kept from the JSON, and the
markdown says which rows came from which command.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _rss import peak_rss_gib

from dcae import PRESETS, decode_tiled, load_dcae, save_dcae
from dcae.testing import random_model
from dcae.tiling import _starts, _tile_and_stride, auto_tile

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks"
PRESET = "dc-ae-f32c32-sana-1.1"
WEIGHTS = {"memory": "built in memory", "file": "loaded from a file"}


class _StopAfterError(Exception):
    pass


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def speed(size: int, repeats: int) -> dict:
    from diffusers import AutoencoderDC

    from dcae._convert import config_to_diffusers, to_format

    cfg = PRESETS[PRESET]
    ours = random_model(cfg)
    with torch.device("meta"):
        ref = AutoencoderDC(**config_to_diffusers(cfg)).eval()
    ref.load_state_dict(to_format(ours.state_dict(), cfg, "diffusers"), assign=True)
    images = torch.rand(1, 3, size, size) * 2 - 1
    latents = torch.randn(1, 32, size // 32, size // 32)
    result: dict = {"size": size, "repeats": repeats}
    with torch.inference_mode():
        ours.decode(latents[..., :2, :2])  # warm-up (oneDNN primitive caches)
        ref.decode(latents[..., :2, :2])
        runs = {
            ("diffusers_fp32", "encode_s"): lambda: ref.encode(images),
            ("ours_fp32", "encode_s"): lambda: ours.encode(images),
            ("diffusers_fp32", "decode_s"): lambda: ref.decode(latents),
            ("ours_fp32", "decode_s"): lambda: ours.decode(latents),
        }
        if native_bf16():
            ours_bf16 = copy.deepcopy(ours).to(torch.bfloat16)
            ours_bf16.decode(latents[..., :2, :2].bfloat16())
            runs[("ours_bf16", "encode_s")] = lambda: ours_bf16.encode(images.bfloat16())
            runs[("ours_bf16", "decode_s")] = lambda: ours_bf16.decode(latents.bfloat16())
            result["bf16_rel_err"] = {
                "encode": _rel_err(ours_bf16.encode(images.bfloat16()), ours.encode(images)),
                "decode": _rel_err(ours_bf16.decode(latents.bfloat16()), ours.decode(latents)),
            }
        else:
            result["ours_bf16"] = "skipped: no native bf16 on this CPU (bf16 convolutions use slow fallback kernels)"
        times: dict = {key: [] for key in runs}
        for _ in range(repeats):  # alternate, so slow phases of a shared machine hit every model
            for key, fn in runs.items():
                times[key].append(_best(fn, 1))
        for (model, what), ts in times.items():
            result.setdefault(model, {})[what] = min(ts)
    return result


def native_bf16() -> bool:
    """oneDNN has native bf16 kernels here (AVX512-BF16 or AMX); elsewhere bf16 convolutions are emulated."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(f"{((out.float() - ref).norm() / ref.norm()).item():.3g}")


def tiled_child(size: int, max_tiles: int | None, budget_gib: float | None, weights: str | None = None) -> dict:
    """Runs in a fresh process: build or load the model, decode one size², report peak RSS.

    weights None: random weights built in memory, all 1.25 GB of them resident (an upper bound). A folder: load it
    with `load_dcae`, as `dcae decode` does; the safetensors file is memory-mapped, so the encoder's weights are
    never read into memory.
    """
    cfg = PRESETS[PRESET]
    ae = random_model(cfg) if weights is None else load_dcae(weights)
    latents = torch.randn(1, 32, size // 32, size // 32)
    budget = None if budget_gib is None else budget_gib * 2**30
    tile = auto_tile(cfg, 1, torch.float32, "decode", budget)
    tile_px, stride = _tile_and_stride(tile, None, 32)
    n_tiles = len(_starts(size // 32, tile_px // 32, stride // 32)) ** 2
    done, decode = [], ae.decode

    def counted(z: torch.Tensor) -> torch.Tensor:
        if max_tiles is not None and len(done) >= max_tiles:
            raise _StopAfterError
        t0 = time.perf_counter()
        out = decode(z)
        done.append(time.perf_counter() - t0)
        return out

    ae.decode = counted  # type: ignore[method-assign]
    t0 = time.perf_counter()
    try:
        decode_tiled(ae, latents, memory_budget=budget)
        complete = True
    except _StopAfterError:
        complete = False
    elapsed = time.perf_counter() - t0
    per_tile = sum(done) / len(done)
    return {
        "size": size,
        "tile_px": tile_px,
        "overlap_px": tile_px - stride,
        "tiles_total": n_tiles,
        "tiles_run": len(done),
        "complete": complete,
        "seconds": elapsed if complete else None,
        "seconds_per_tile": per_tile,
        "projected_seconds": per_tile * n_tiles,
        "peak_rss_gib": peak_rss_gib(),
        "weights": "memory" if weights is None else "file",
    }


def markdown(results: dict) -> str:
    lines = ["# DC-AE benchmarks (CPU)", "", f"Command: `{results['command']}`", ""]
    lines += [f"Machine: {results['machine']}; torch {results['torch']}; {results['threads']} threads.", ""]
    if "speed" in results:
        s = results["speed"]
        d, o = s["diffusers_fp32"], s["ours_fp32"]
        lines += [f"## {PRESET}, one {s['size']}² image (best of {s['repeats']})", ""]
        lines += [
            "| | diffusers fp32 | ours fp32 | ratio | ours bf16 | bf16 / diffusers fp32 | bf16 rel. error vs fp32 |",
            "|---|---|---|---|---|---|---|",
        ]
        for k, label in [("encode_s", "encode"), ("decode_s", "decode")]:
            if isinstance(s["ours_bf16"], dict):
                b = s["ours_bf16"][k]
                bf16 = f"{b:.2f} s | {b / d[k]:.2f}× | {s.get('bf16_rel_err', {}).get(label, '—')}"
            else:
                bf16 = "skipped | — | —"
            lines.append(f"| {label} | {d[k]:.2f} s | {o[k]:.2f} s | {o[k] / d[k]:.2f}× | {bf16} |")
        if not isinstance(s["ours_bf16"], dict):
            lines += ["", f"bf16: {s['ours_bf16']}."]
        lines.append("")
    if results.get("tiled"):
        lines += ["## Tiled decode, fp32, automatic tile", ""]
        lines += [
            "| size | weights | tile / overlap | tiles | time | peak RSS | command |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in results["tiled"]:
            run = f"{t['tiles_run']} tiles run, {t['seconds_per_tile']:.0f} s each"
            when = f"{t['seconds']:.0f} s" if t["complete"] else f"{t['projected_seconds']:.0f} s projected ({run})"
            lines.append(
                f"| {t['size']}² | {WEIGHTS[t.get('weights', 'memory')]} | {t['tile_px']} / {t['overlap_px']} px | "
                f"{t['tiles_total']} | {when} | "
                f"{t['peak_rss_gib']:.2f} GiB | `{t.get('command', results['command'])}` |"
            )
        lines.append("")
    return "\n".join(lines)


def merge(old: dict, new: dict) -> dict:
    """`new` over `old`: the speed table if `new` measured one, and the tiled rows by size; each kept tiled row
    remembers the command that measured it."""
    merged = {**old, **{k: v for k, v in new.items() if k != "tiled"}}
    if "speed" not in new and "speed" in old:
        merged["speed"] = old["speed"]
        merged["command"] = old["command"]  # the speed table's command; tiled rows carry their own

    def key(t: dict) -> tuple[int, str]:
        return t["size"], t.get("weights", "memory")

    rows = {key(t): {"command": old["command"], **t} for t in old.get("tiled", [])}
    rows.update({key(t): {"command": new["command"], **t} for t in new["tiled"]})
    merged["tiled"] = [rows[k] for k in sorted(rows)]
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--speed-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="*", default=[2048, 4096])
    parser.add_argument(
        "--max-tiles", type=int, default=2, help="stop each tiled decode after N tiles (0: run them all)"
    )
    parser.add_argument("--memory-budget", type=float, default=None, help="GiB per tile (default: dcae's)")
    parser.add_argument(
        "--weights",
        choices=["memory", "file"],
        default="memory",
        help="tiled rows: random weights built in memory (all resident), or saved once and loaded from the file "
        "as `dcae decode` does (memory-mapped: the encoder's weights are never read)",
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--weights-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(tiled_child(args.child, args.max_tiles or None, args.memory_budget, args.weights_dir)))
        return
    results: dict = {
        "command": "python benchmarks/dcae_benchmark.py " + " ".join(sys.argv[1:]),
        "machine": f"{torch.backends.cpu.get_cpu_capability()} CPU",
        "torch": torch.__version__,
        "threads": args.threads,
    }
    if not args.skip_speed:
        results["speed"] = speed(args.speed_size, args.repeats)
        print(json.dumps(results["speed"]), flush=True)
    results["tiled"] = []
    with tempfile.TemporaryDirectory(prefix="dcae-bench-") as tmp:
        if args.weights == "file" and args.sizes:
            save_dcae(random_model(PRESETS[PRESET]), tmp)
        for size in args.sizes:
            cmd = [sys.executable, __file__, "--child", str(size), "--threads", str(args.threads)]
            cmd += ["--max-tiles", str(args.max_tiles)]
            cmd += ["--memory-budget", str(args.memory_budget)] if args.memory_budget else []
            cmd += ["--weights-dir", tmp] if args.weights == "file" else []
            child = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results["tiled"].append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(json.dumps(results["tiled"][-1]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    if (OUT / "dcae.json").is_file():
        results = merge(json.loads((OUT / "dcae.json").read_text()), results)
    (OUT / "dcae.json").write_text(json.dumps(results, indent=2) + "\n")
    (OUT / "dcae.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
