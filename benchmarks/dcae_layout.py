"""Does running the DC-AE's ResBlock stages channels-last pay on this CPU? Ours with and without it, same run.

    python benchmarks/dcae_layout.py                                                      # this CPU's kernels
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/dcae_layout.py     # as on an AVX2-only CPU

`dcae` runs the high-resolution ResBlock stages in channels-last memory at CPU inference (`dcae.model._to_layout`).
This times one 512² encode and decode of dc-ae-f32c32-sana (random weights, fp32, 2 threads, best of `--repeats`,
the two layouts alternated) with that choice and with every stage kept NCHW, to check the choice on a given ISA.
The two environment variables cap oneDNN's and ATen's kernels at AVX2, which approximates an AVX2-only machine
on a newer one. Appends a row per run to docs/benchmarks/dcae_layout.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import dcae.model
from dcae import PRESETS
from dcae.testing import random_model

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "dcae_layout.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = random_model(PRESETS["dc-ae-f32c32-sana-1.1"])
    images = torch.rand(1, 3, 512, 512) * 2 - 1
    latents = torch.randn(1, 32, 16, 16)
    channels_last = dcae.model._to_layout
    layouts = {"channels_last": channels_last, "nchw": lambda x, _: channels_last(x, False)}
    best: dict[str, dict[str, float]] = {name: {"encode_s": float("inf"), "decode_s": float("inf")} for name in layouts}
    calls = {"encode_s": lambda: model.encode(images), "decode_s": lambda: model.decode(latents)}
    with torch.inference_mode():
        model.decode(latents[..., :2, :2])  # warm-up
        for _ in range(args.repeats):
            for name, layout in layouts.items():
                dcae.model._to_layout = layout
                for key, call in calls.items():
                    start = time.perf_counter()
                    call()
                    best[name][key] = min(best[name][key], time.perf_counter() - start)
    dcae.model._to_layout = channels_last
    row = {
        "isa": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "(not set)"),
        "threads": args.threads,
        "repeats": args.repeats,
        **{f"{name}_{key}": round(value, 3) for name, times in best.items() for key, value in times.items()},
    }
    rows = json.loads(OUT.read_text()) if OUT.is_file() else []
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps([*rows, row], indent=2) + "\n")
    print("| ATen ISA | oneDNN cap | | NCHW | channels-last ResBlock stages | ratio |")
    print("|---|---|---|---:|---:|---:|")
    for r in [*rows, row]:
        for op in ("encode", "decode"):
            nchw, cl = r[f"nchw_{op}_s"], r[f"channels_last_{op}_s"]
            print(f"| {r['isa']} | {r['onednn_max_cpu_isa']} | {op} | {nchw:.2f} s | {cl:.2f} s | {cl / nchw:.2f}× |")


if __name__ == "__main__":
    main()
